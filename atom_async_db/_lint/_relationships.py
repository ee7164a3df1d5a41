"""ATOM108, N+1 queries: a loop over query results that reads a lazy relationship of each
row, one query per row (in async code the lazy load raises ``MissingGreenlet`` instead).

What it sees:

- the models of the files linted (``_mapped``): a relationship is lazy unless its
  ``lazy=`` is ``"selectin"``, ``"joined"`` or another eager or raising strategy.
- the queries: ``db.query(Model)...``, ``db.execute(select(Model)...)`` and
  ``db.scalars(select(Model)...)``, awaited or not, through ``.all()``, ``.scalars()``,
  ``.filter()`` and the other chained methods, directly in the ``for`` (or comprehension)
  or through variables assigned earlier in the same function (``users = ...``,
  ``stmt = select(User)``, ``result = await db.execute(stmt)``).
- the loop: ``row.rel`` in its body, where ``row`` is the loop variable.

An eager-loading option (``selectinload``, ``joinedload``, ``subqueryload``,
``immediateload``, ``contains_eager``, ``raiseload``, ``noload``) naming the relationship
(``User.posts`` or ``"posts"``), or ``"*"``, in the query's ``.options(...)`` covers it;
options it cannot read (``.options(*opts)``) cover everything.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ._facts import Source, callee, functions, last_name, own_nodes, position, unawait
from ._mapped import single_target
from ._model import Finding, finding

__all__ = ["check"]

CODE = "ATOM108"
_EAGER = frozenset(
    {
        "selectinload",
        "joinedload",
        "subqueryload",
        "immediateload",
        "contains_eager",
        "raiseload",
        "noload",
    }
)
#: Methods of a query, a statement or a result that keep its rows' model.
_CHAIN = frozenset(
    {
        "all",
        "scalars",
        "unique",
        "filter",
        "filter_by",
        "where",
        "order_by",
        "limit",
        "offset",
        "join",
        "outerjoin",
        "distinct",
        "options",
        "execution_options",
        "yield_per",
        "group_by",
        "having",
        "select_from",
        "params",
        "fetchall",
        "partitions",
    }
)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)


@dataclass
class _Query:
    model: str
    covered: set[str] | None
    """The relationships its options eager-load; None: all of them."""
    text: str
    awaited: bool


def check(source: Source) -> Iterator[Finding]:
    """ATOM108 in ``source``.

    Raises:
        Nothing.
    """
    if not source.models:
        return
    scopes = [source.tree.body, *(func.body for func in functions(source.tree))]
    for body in scopes:
        nodes = list(own_nodes(body))
        assigned: dict[str, list[tuple[tuple[int, int], ast.expr]]] = {}
        for node in nodes:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                name = single_target(node)
                if name is not None:
                    assigned.setdefault(name, []).append((position(node), node.value))
        for node in nodes:
            loops: list[tuple[ast.expr, ast.expr, Sequence[ast.AST]]]
            if isinstance(node, (ast.For, ast.AsyncFor)):
                loops = [(node.target, node.iter, node.body)]
            elif isinstance(node, _COMPREHENSIONS):
                parts: list[ast.AST] = (
                    [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
                )
                loops = []
                for index, generator in enumerate(node.generators):
                    rest = [*generator.ifs, *node.generators[index + 1 :], *parts]
                    loops.append((generator.target, generator.iter, rest))
            else:
                continue
            for target, iterable, loop_body in loops:
                yield from _loop(source, assigned, node, target, iterable, loop_body)


def _loop(
    source: Source,
    assigned: dict[str, list[tuple[tuple[int, int], ast.expr]]],
    loop: ast.AST,
    target: ast.expr,
    iterable: ast.expr,
    body: Sequence[ast.AST],
) -> Iterator[Finding]:
    if not isinstance(target, ast.Name):
        return
    query = _query(iterable, source, assigned, position(loop), 0)
    if query is None:
        return
    relationships = source.models.relationships(query.model, source.path)
    reported: set[str] = set()
    for node in own_nodes(body):
        if not (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Load)
            and isinstance(node.value, ast.Name)
            and node.value.id == target.id
        ):
            continue
        rel = relationships.get(node.attr)
        if rel is None or not rel.loads_per_row or node.attr in reported:
            continue
        if query.covered is None or node.attr in query.covered:
            continue
        reported.add(node.attr)
        effect = (
            "in async code the lazy load raises MissingGreenlet"
            if query.awaited
            else "a query per row"
        )
        yield finding(
            source.path,
            node,
            CODE,
            f"N+1 queries: `{target.id}.{node.attr}` loads the lazy relationship "
            f"`{rel.owner}.{rel.name}` for each row of `{query.text}` ({effect}); eager-load "
            f"it: `.options(selectinload({query.model}.{node.attr}))` (or joinedload)",
        )


def _latest_assignment(
    name: ast.Name,
    assigned: dict[str, list[tuple[tuple[int, int], ast.expr]]],
    before: tuple[int, int],
) -> tuple[tuple[int, int], ast.expr] | None:
    """The last assignment to ``name`` before ``before`` (where, value), if any."""
    earlier = [entry for entry in assigned.get(name.id, []) if entry[0] < before]
    return earlier[-1] if earlier else None


def _query(
    expr: ast.expr,
    source: Source,
    assigned: dict[str, list[tuple[tuple[int, int], ast.expr]]],
    before: tuple[int, int],
    depth: int,
) -> _Query | None:
    """The query whose rows ``expr`` iterates, resolving the scope's variables."""
    if depth > 8:
        return None
    awaited = isinstance(expr, ast.Await)
    expr = unawait(expr)
    if isinstance(expr, ast.Name):
        latest = _latest_assignment(expr, assigned, before)
        if latest is None:
            return None
        where, value = latest
        return _query(value, source, assigned, where, depth + 1)
    if not isinstance(expr, ast.Call) or not isinstance(expr.func, ast.Attribute):
        return None
    method = expr.func.attr
    if method == "query" and len(expr.args) == 1:
        model = last_name(expr.args[0])
        if not source.models.relationships(model, source.path):
            return None
        return _Query(model, set(), ast.unparse(expr), awaited)
    if method in {"execute", "scalars"} and expr.args:
        found = _statement(expr.args[0], source, assigned, before, depth + 1)
        if found is not None:
            found.awaited = found.awaited or awaited
            found.text = f"{ast.unparse(expr.func)}({found.text})"
        return found
    if method not in _CHAIN:
        return None
    found = _query(expr.func.value, source, assigned, before, depth + 1)
    if found is not None:
        found.awaited = found.awaited or awaited
        if method == "options":
            _cover(found, expr.args)
    return found


def _statement(
    expr: ast.expr,
    source: Source,
    assigned: dict[str, list[tuple[tuple[int, int], ast.expr]]],
    before: tuple[int, int],
    depth: int,
) -> _Query | None:
    """The model of a ``select(Model)...`` statement, resolving variables."""
    if depth > 8:
        return None
    if isinstance(expr, ast.Name):
        latest = _latest_assignment(expr, assigned, before)
        if latest is None:
            return None
        where, value = latest
        return _statement(value, source, assigned, where, depth + 1)
    if not isinstance(expr, ast.Call):
        return None
    if callee(expr) == "select" and isinstance(expr.func, (ast.Name, ast.Attribute)):
        if isinstance(expr.func, ast.Attribute) and expr.func.attr != "select":
            return None
        if len(expr.args) != 1:
            return None
        if not source.models.relationships(last_name(expr.args[0]), source.path):
            return None
        return _Query(last_name(expr.args[0]), set(), ast.unparse(expr), False)
    if not isinstance(expr.func, ast.Attribute) or expr.func.attr not in _CHAIN:
        return None
    found = _statement(expr.func.value, source, assigned, before, depth + 1)
    if found is not None and expr.func.attr == "options":
        _cover(found, expr.args)
    return found


def _cover(query: _Query, options: list[ast.expr]) -> None:
    """Add the relationships ``options`` eager-load to ``query.covered``."""
    for option in options:
        if not isinstance(option, ast.Call):
            query.covered = None  # (*opts, a variable): assume it covers everything
            return
        names = {
            sub.attr if isinstance(sub, ast.Attribute) else str(sub.value)
            for sub in ast.walk(option)
            if isinstance(sub, ast.Attribute)
            or (isinstance(sub, ast.Constant) and isinstance(sub.value, str))
        }
        if not any(callee(sub) in _EAGER for sub in ast.walk(option)):
            continue
        if "*" in names:
            query.covered = None
            return
        if query.covered is not None:
            query.covered |= names
