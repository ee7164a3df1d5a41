"""What the rules know about a file: its imports, its functions, which expressions open a
session and which parameters receive one (the guide's two patterns, the legacy forms and
this library's async ones).

Names are recognised by their last part, wherever they are imported from (an
application's ``core.database`` re-exports them): ``get_db_session`` is the sync context
manager whether it comes from ``core.database``, ``sync_compat`` or the deprecated
``database_manager``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ._mapped import Models

__all__ = [
    "SYNC_SESSION_IO",
    "FunctionNode",
    "Opener",
    "SessionParam",
    "Source",
    "callee",
    "dotted",
    "entered",
    "functions",
    "last_name",
    "opener",
    "own_nodes",
    "position",
    "session_params",
    "unawait",
]

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef

#: Context managers that open a session: sync, and async.
SYNC_CONTEXTS = frozenset({"get_db_session", "get_monitored_db_session"})
ASYNC_CONTEXTS = frozenset({"get_async_db_session"})
#: FastAPI dependencies, by what they yield and whether they ever commit on their own.
SYNC_DEPENDENCIES = frozenset({"get_db", "get_db_for", "get_db_session_for_request"})
ASYNC_DEPENDENCIES = frozenset({"get_async_db"})
READ_ONLY_DEPENDENCIES = frozenset({"get_async_db_replica"})
COMMITTING_DEPENDENCIES = frozenset({"get_async_db_transaction", "transaction_dependency"})
#: ``atom_async_db.fastapi``'s annotations: their dependency.
ANNOTATIONS = {
    "AsyncDB": "get_async_db",
    "AsyncReplicaDB": "get_async_db_replica",
    "AsyncTransaction": "get_async_db_transaction",
}
#: The methods of a sync ``Session`` that reach the database (``add`` does not).
SYNC_SESSION_IO = frozenset(
    {
        "query",
        "execute",
        "scalar",
        "scalars",
        "get",
        "get_one",
        "exec",
        "commit",
        "flush",
        "refresh",
        "merge",
        "delete",
        "rollback",
        "connection",
        "bulk_save_objects",
        "bulk_insert_mappings",
        "bulk_update_mappings",
    }
)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def dotted(expr: ast.AST) -> str | None:
    """``a.b.c`` for a chain of names and attributes, else None.

    Raises:
        Nothing.
    """
    parts: list[str] = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return None
    parts.append(expr.id)
    return ".".join(reversed(parts))


def last_name(expr: ast.AST) -> str:
    """The last part of a name or attribute (``User`` of ``models.User``), else ``""``.

    Raises:
        Nothing.
    """
    if isinstance(expr, ast.Attribute):
        return expr.attr
    if isinstance(expr, ast.Name):
        return expr.id
    return ""


def callee(node: ast.AST) -> str:
    """The last part of the name a call calls (``get`` of ``requests.get(url)``).

    Raises:
        Nothing.
    """
    return last_name(node.func) if isinstance(node, ast.Call) else ""


def unawait(expr: ast.expr) -> ast.expr:
    """``expr`` without the ``await`` in front of it.

    Raises:
        Nothing.
    """
    while isinstance(expr, ast.Await):
        expr = expr.value
    return expr


def position(node: ast.AST) -> tuple[int, int]:
    """Where ``node`` starts, to order nodes in source order.

    Raises:
        Nothing.
    """
    return getattr(node, "lineno", 0), getattr(node, "col_offset", 0)


def own_nodes(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Each node under ``nodes`` (them included), in source order, without entering nested
    functions, lambdas and classes (their defining node is yielded, not their body).

    Raises:
        Nothing.
    """
    stack = list(reversed(list(nodes)))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, _SCOPES):
            stack.extend(reversed(list(ast.iter_child_nodes(node))))


def functions(tree: ast.AST) -> Iterator[FunctionNode]:
    """Every function and method of ``tree``, nested ones included.

    Raises:
        Nothing.
    """
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@dataclass
class Source:
    """A parsed file and what the rules share about it."""

    path: str
    """As shown in findings (the path given, joined with the file's path under it)."""
    tree: ast.Module
    is_test: bool = False
    models: Models = field(default_factory=Models)
    """The model classes of every file linted, and their relationships."""
    imports: dict[str, str] = field(default_factory=dict)
    """Each imported local name, by the dotted name it stands for."""
    aliases: dict[str, ast.expr] = field(default_factory=dict)
    """Module-level ``Name = Annotated[...]`` (``ReportDB = Annotated[AsyncSession, ...]``)."""

    def __post_init__(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.imports[alias.asname] = alias.name
                    else:
                        head = alias.name.split(".")[0]
                        self.imports[head] = head
            elif isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                joiner = "" if module.endswith(".") else "."
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = f"{module}{joiner}{alias.name}"
        for statement in self.tree.body:
            if (
                isinstance(statement, ast.Assign)
                and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)
                and isinstance(statement.value, ast.Subscript)
                and last_name(statement.value.value) == "Annotated"
            ):
                self.aliases[statement.targets[0].id] = statement.value

    def qualify(self, expr: ast.AST) -> str:
        """The dotted name ``expr`` stands for, through the imports (``requests.get``
        for ``get`` after ``from requests import get``); ``""`` for other expressions.

        Raises:
            Nothing.
        """
        name = dotted(expr)
        if name is None:
            return ""
        head, dot, rest = name.partition(".")
        return self.imports.get(head, head) + dot + rest


@dataclass(frozen=True)
class Opener:
    """A call that opens a session."""

    call: ast.Call
    sync: bool
    how: str
    """``context`` (``get_db_session()``, ``SessionLocal.begin()``), ``factory``
    (``SessionLocal()``, ``Session(engine)``), ``entered`` (``....__enter__()``) or
    ``next`` (``next(get_db())``)."""
    text: str
    """The call as the messages show it: ``get_db_session()``."""
    separate: bool
    """``independent=True`` or ``database=``: a second session on purpose."""


def opener(expr: ast.expr, source: Source) -> Opener | None:
    """The session ``expr`` opens, if it is a call that opens one (``await`` allowed).

    Raises:
        Nothing.
    """
    expr = unawait(expr)
    if not isinstance(expr, ast.Call):
        return None
    name = callee(expr)
    func = expr.func
    text = f"{dotted(func) or name}()"
    separate = any(
        (keyword.arg == "independent" and _is_true(keyword.value)) or keyword.arg == "database"
        for keyword in expr.keywords
    )
    if name in {"__enter__", "__aenter__"} and isinstance(func, ast.Attribute):
        inner = opener(func.value, source)
        if inner is None:
            return None
        return Opener(expr, inner.sync, "entered", f"{inner.text}.{name}()", False)
    if name in {"next", "anext"} and isinstance(func, ast.Name) and expr.args:
        dependency = callee(expr.args[0])
        if dependency in SYNC_DEPENDENCIES | ASYNC_DEPENDENCIES:
            inner_text = ast.unparse(expr.args[0])
            sync = dependency in SYNC_DEPENDENCIES
            return Opener(expr, sync, "next", f"{name}({inner_text})", False)
        return None
    if name in SYNC_CONTEXTS or name in ASYNC_CONTEXTS:
        return Opener(expr, name in SYNC_CONTEXTS, "context", text, separate)
    if name.endswith("SessionLocal"):
        return Opener(expr, not name.startswith("Async"), "factory", text, separate)
    if (
        name == "begin"
        and isinstance(func, ast.Attribute)
        and last_name(func.value).endswith("SessionLocal")
    ):
        return Opener(expr, not last_name(func.value).startswith("Async"), "context", text, False)
    if name in {"Session", "AsyncSession"}:
        qualified = source.qualify(func)
        if qualified == name or qualified.startswith(("sqlalchemy.", "sqlmodel.")):
            return Opener(expr, name == "Session", "factory", text, False)
    return None


def entered(nodes: Iterable[ast.AST]) -> set[int]:
    """The ids of the expressions ``nodes`` enter as context managers: ``with`` items,
    ``x.__enter__()``, ``stack.enter_context(x)``. A ``get_db_session()`` that is not
    entered opens nothing (``assert_type(get_db_session(), ...)``).

    Raises:
        Nothing.
    """
    found: set[int] = set()
    for node in nodes:
        if isinstance(node, (ast.With, ast.AsyncWith)):
            found |= {id(unawait(item.context_expr)) for item in node.items}
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in {"__enter__", "__aenter__"}:
                found.add(id(node.func.value))
            elif node.func.attr in {"enter_context", "enter_async_context"} and node.args:
                found.add(id(unawait(node.args[0])))
    return found


def _is_true(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Constant) and expr.value is True


@dataclass(frozen=True)
class SessionParam:
    """A parameter that receives a session."""

    name: str
    node: ast.arg
    sync: bool
    injected: bool
    """A FastAPI dependency (``Depends(...)``, ``AsyncDB``) gives it; else its annotation
    alone says it is a session (a service that receives its caller's)."""
    dependency: str
    """The dependency's name (``get_db``, ``get_async_db``), or ``""``."""
    shown: str
    """How the parameter is declared, for messages: ``Depends(get_db)``, ``AsyncDB``."""

    @property
    def never_commits(self) -> bool:
        """Whether its dependency is one that never commits on its own.

        Raises:
            Nothing.
        """
        return self.dependency in SYNC_DEPENDENCIES | ASYNC_DEPENDENCIES


def session_params(func: FunctionNode, source: Source) -> list[SessionParam]:
    """The parameters of ``func`` that receive a session.

    Raises:
        Nothing.
    """
    arguments = func.args
    positional = [*arguments.posonlyargs, *arguments.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(arguments.defaults))
    defaults += arguments.defaults
    pairs = [
        *zip(positional, defaults, strict=True),
        *zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True),
    ]
    found = []
    for argument, default in pairs:
        param = _session_param(argument, default, source)
        if param is not None:
            found.append(param)
    return found


def _session_param(
    argument: ast.arg, default: ast.expr | None, source: Source
) -> SessionParam | None:
    types: list[str] = []
    dependencies: list[tuple[str, str]] = []  # (the dependency's name, as shown)
    if default is not None:
        dependencies += _depends(default)
    if argument.annotation is not None:
        _read_annotation(argument.annotation, source, types, dependencies, depth=0)
    for dependency, shown in dependencies:
        if dependency in SYNC_DEPENDENCIES:
            return SessionParam(argument.arg, argument, True, True, dependency, shown)
        if dependency in ASYNC_DEPENDENCIES | READ_ONLY_DEPENDENCIES | COMMITTING_DEPENDENCIES:
            return SessionParam(argument.arg, argument, False, True, dependency, shown)
    for name in types:
        if name in {"Session", "LegacySession", "AsyncSession"}:
            shown = dependencies[0][1] if dependencies else name
            injected = bool(dependencies)
            return SessionParam(argument.arg, argument, name != "AsyncSession", injected, "", shown)
    return None


def _depends(expr: ast.expr) -> list[tuple[str, str]]:
    """``[(dependency, shown)]`` if ``expr`` is ``Depends(dependency, ...)``."""
    if not isinstance(expr, ast.Call) or callee(expr) != "Depends":
        return []
    target = expr.args[0] if expr.args else None
    for keyword in expr.keywords:
        if keyword.arg == "dependency":
            target = keyword.value
    if target is None:
        return []
    name = callee(target) if isinstance(target, ast.Call) else last_name(target)
    return [(name, f"Depends({ast.unparse(target)})")]


def _read_annotation(
    expr: ast.expr,
    source: Source,
    types: list[str],
    dependencies: list[tuple[str, str]],
    depth: int,
) -> None:
    """The type names and ``Depends`` of an annotation, through ``Optional``, ``|``,
    ``Annotated``, strings and the module's own ``Annotated`` aliases.
    """
    if depth > 5:
        return
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        try:
            expr = ast.parse(expr.value, mode="eval").body
        except SyntaxError:
            return
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):
        for side in (expr.left, expr.right):
            _read_annotation(side, source, types, dependencies, depth + 1)
        return
    if isinstance(expr, ast.Subscript):
        outer = last_name(expr.value)
        items = list(expr.slice.elts) if isinstance(expr.slice, ast.Tuple) else [expr.slice]
        if outer == "Annotated" and items:
            _read_annotation(items[0], source, types, dependencies, depth + 1)
            for item in items[1:]:
                dependencies += _depends(item)
        elif outer in {"Optional", "Union"}:
            for item in items:
                _read_annotation(item, source, types, dependencies, depth + 1)
        return
    name = last_name(expr)
    if name in ANNOTATIONS:
        dependencies.append((ANNOTATIONS[name], name))
    elif isinstance(expr, ast.Name) and name in source.aliases:
        _read_annotation(source.aliases[name], source, types, dependencies, depth + 1)
    elif name:
        types.append(name)
