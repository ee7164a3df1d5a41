"""ATOM109, a missing commit: a route on ``get_async_db`` (``Depends(get_async_db)``,
``AsyncDB``) or on the legacy ``get_db`` that writes and never commits. Neither
dependency commits on its own, so the writes are rolled back when the route returns
(``get_async_db`` warns with ``UncommittedChangesWarning``, at run time).

Writes: ``db.add``, ``add_all``, ``delete``, ``merge``, the ``bulk_*`` methods,
``db.execute(insert(...)/update(...)/delete(...))`` (or ``text("UPDATE ...")``), and an
assignment to an attribute of an object loaded through ``db`` (``user = await
db.get(User, id)`` then ``user.name = ...``, a loop over a query's rows included).

A commit is ``db.commit()`` anywhere in the function, or ``with db.begin():``. A route
that passes ``db`` on (``await service.save(db, ...)``, ``return db``) is not reported:
the commit may be there; nor is one whose last statement is a ``raise``.
``AsyncTransaction``, ``get_async_db_transaction`` and
``transaction_dependency`` commit on their own; replicas are read-only.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ._facts import (
    FunctionNode,
    SessionParam,
    Source,
    callee,
    functions,
    own_nodes,
    position,
    session_params,
)
from ._model import Finding, finding

__all__ = ["check"]

CODE = "ATOM109"
_WRITES = frozenset(
    {
        "add",
        "add_all",
        "delete",
        "merge",
        "bulk_save_objects",
        "bulk_insert_mappings",
        "bulk_update_mappings",
    }
)
_DML = frozenset({"insert", "update", "delete"})


def check(source: Source) -> Iterator[Finding]:
    """ATOM109 in ``source``.

    Raises:
        Nothing.
    """
    for func in functions(source.tree):
        for param in session_params(func, source):
            if param.never_commits:
                found = _uncommitted_write(func, param)
                if found is not None:
                    yield finding(source.path, found[0], CODE, _message(param, found[1]))


def _message(param: SessionParam, write: str) -> str:
    if param.sync:
        commit = f"`{param.name}.commit()`"
        dependency = "get_db"
    else:
        commit = f"`await {param.name}.commit()`"
        dependency = "get_async_db"
    shown = f"`{param.shown}`"
    if not param.shown.startswith("Depends"):
        shown += f" ({dependency})"
    alternative = "" if param.sync else " (or take `db: AsyncTransaction`, which commits)"
    return (
        f"Missing commit: {write} in a route on {shown}, which never commits: the change "
        f"is rolled back when the route returns; add {commit}{alternative}"
    )


def _calls_on(name: str, node: ast.AST) -> str | None:
    """The method ``node`` calls on ``name``, if it is such a call."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == name
    ):
        return node.func.attr
    return None


def _uncommitted_write(func: FunctionNode, param: SessionParam) -> tuple[ast.AST, str] | None:
    """The first write of ``func`` through ``param``'s session if it never commits."""
    name = param.name
    if isinstance(func.body[-1], ast.Raise):
        return None  # (a route that always fails: rolling back is what it wants)
    everything = list(ast.walk(func))
    for node in everything:
        if _calls_on(name, node) == "commit":
            return None
        if isinstance(node, (ast.With, ast.AsyncWith)) and any(
            _calls_on(name, item.context_expr) == "begin" for item in node.items
        ):
            return None
        if _passes_on(name, node):
            return None
    nodes = sorted(own_nodes(func.body), key=position)
    statements = _assignments(nodes)
    loaded: set[str] = set()
    for node in nodes:
        method = _calls_on(name, node)
        if method in _WRITES:
            return node, f"`{name}.{method}()`"
        if _bulk_query_write(name, node):
            return node, f"`{_head(node)}`"
        if (
            method == "execute"
            and isinstance(node, ast.Call)
            and node.args
            and _is_dml(node.args[0], statements, 0)
        ):
            return node, f"`{name}.execute({_head(node.args[0])})`"
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id in loaded
                ):
                    return node, f"`{ast.unparse(target)} = ...` (an object loaded from `{name}`)"
            if node.value is not None and _reads(name, loaded, node.value):
                loaded.update(t.id for t in targets if isinstance(t, ast.Name))
        elif (
            isinstance(node, (ast.For, ast.AsyncFor))
            and isinstance(node.target, ast.Name)
            and _reads(name, loaded, node.iter)
        ):
            loaded.add(node.target.id)
    return None


def _bulk_query_write(name: str, node: ast.AST) -> bool:
    """Whether ``node`` is ``db.query(...)....update(...)`` or ``....delete()``."""
    if not (isinstance(node, ast.Call) and callee(node) in {"update", "delete"}):
        return False
    receiver = node.func.value if isinstance(node.func, ast.Attribute) else None
    while isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Attribute):
        if _calls_on(name, receiver) == "query":
            return True
        receiver = receiver.func.value
    return False


def _reads(name: str, loaded: set[str], expr: ast.expr) -> bool:
    """Whether ``expr`` gets objects through the session (or from objects it loaded)."""
    for node in ast.walk(expr):
        if _calls_on(name, node) is not None:
            return True
        if isinstance(node, ast.Name) and node.id in loaded:
            return True
    return False


def _passes_on(name: str, node: ast.AST) -> bool:
    """Whether ``node`` hands the session to other code (an argument, returned, stored)."""
    values: list[ast.expr] = []
    if isinstance(node, ast.Call):
        values = [*node.args, *(keyword.value for keyword in node.keywords)]
    elif isinstance(node, (ast.Return, ast.Yield, ast.Assign)) and node.value is not None:
        values = [node.value]
    return any(
        isinstance(unstarred, ast.Name) and unstarred.id == name
        for value in values
        for unstarred in [value.value if isinstance(value, ast.Starred) else value]
    )


def _assignments(nodes: list[ast.AST]) -> dict[str, ast.expr]:
    found: dict[str, ast.expr] = {}
    for node in nodes:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                found[target.id] = node.value
    return found


def _is_dml(expr: ast.expr, statements: dict[str, ast.expr], depth: int) -> bool:
    """Whether ``expr`` is an INSERT, UPDATE or DELETE statement."""
    if depth > 5:
        return False
    if isinstance(expr, ast.Name) and expr.id in statements:
        return _is_dml(statements[expr.id], statements, depth + 1)
    root = expr
    while isinstance(root, ast.Call) and callee(root) not in {*_DML, "text"}:
        if not isinstance(root.func, ast.Attribute):
            return False
        root = root.func.value
    if not isinstance(root, ast.Call):
        return False
    if callee(root) in _DML:
        return True
    if callee(root) == "text" and root.args and isinstance(root.args[0], ast.Constant):
        sql = str(root.args[0].value).lstrip().split(None, 1)
        return bool(sql) and sql[0].upper() in {"INSERT", "UPDATE", "DELETE"}
    return False


def _head(expr: ast.AST) -> str:
    text = ast.unparse(expr)
    return text if len(text) <= 30 else text[:27] + "..."
