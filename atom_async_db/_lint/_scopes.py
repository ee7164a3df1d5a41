"""ATOM105 and ATOM106, a session opened where it does not belong: a second one in a
function that already receives one, and the sync API inside ``async def``.

- ATOM105 (Mixing Patterns): in a function with a session parameter (``Depends(get_db)``,
  ``AsyncDB``, or annotated ``Session``/``AsyncSession``), each call that opens another
  session (``get_db_session()``, ``get_async_db_session()`` entered by a ``with``,
  ``SessionLocal()``...). A
  second session on purpose, ``independent=True`` or ``database=...``, is not reported.
- ATOM106 (blocking the event loop): in an ``async def`` (not in the functions and lambdas
  it defines, which may run in a thread or ``run_legacy``), each call that opens a sync
  session (``with get_db_session()``, ``SessionLocal()``, ``next(get_db())``), and the
  first database call (not awaited) on a sync ``Session`` parameter.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ._facts import (
    SYNC_SESSION_IO,
    FunctionNode,
    Opener,
    Source,
    entered,
    functions,
    opener,
    own_nodes,
    session_params,
)
from ._model import Finding, finding

__all__ = ["check"]


def check(source: Source) -> Iterator[Finding]:
    """ATOM105 and ATOM106 in ``source``.

    Raises:
        Nothing.
    """
    for func in functions(source.tree):
        yield from _mixing(func, source)
        if isinstance(func, ast.AsyncFunctionDef):
            yield from _blocking(func, source)


def _mixing(func: FunctionNode, source: Source) -> Iterator[Finding]:
    params = session_params(func, source)
    if not params:
        return
    held = params[0].name
    for node, found in _opened(list(own_nodes(func.body)), source):
        if found.separate or found.how not in {"context", "factory"}:
            continue
        yield finding(
            source.path,
            node,
            "ATOM105",
            f"Mixing patterns: `{found.text}` opens a second session in `{func.name}`, "
            f"which already receives `{held}`; use `{held}` for all database operations",
        )


def _opened(nodes: list[ast.AST], source: Source) -> Iterator[tuple[ast.Call, Opener]]:
    """The calls among ``nodes`` that open a session, with what each opens; a context
    manager counts only where it is entered.
    """
    entered_ids = entered(nodes)
    for node in nodes:
        if isinstance(node, ast.Call):
            found = opener(node, source)
            if found is not None and (found.how != "context" or id(node) in entered_ids):
                yield node, found


def _blocking(func: ast.AsyncFunctionDef, source: Source) -> Iterator[Finding]:
    nodes = list(own_nodes(func.body))
    awaited = {id(node.value) for node in nodes if isinstance(node, ast.Await)}
    for call, found in _opened(nodes, source):
        if not found.sync or found.how == "entered":
            continue
        yield finding(
            source.path,
            call,
            "ATOM106",
            f"Blocking the event loop: sync `{found.text}` inside `async def {func.name}`; "
            "use `async with get_async_db_session() as db:`, or run the sync code with "
            "`await run_legacy(fn, ...)`",
        )
    for param in session_params(func, source):
        if not param.sync:
            continue
        for node in nodes:
            if (
                isinstance(node, ast.Call)
                and id(node) not in awaited
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in SYNC_SESSION_IO
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == param.name
            ):
                route = (
                    "make the route `def` (FastAPI runs it in its threadpool) or take "
                    "`db: AsyncDB` (get_async_db) and await its calls"
                    if param.injected
                    else "take an AsyncSession, or call the sync code with "
                    "`await run_legacy(fn, ...)`"
                )
                yield finding(
                    source.path,
                    node,
                    "ATOM106",
                    f"Blocking the event loop: `{param.name}.{node.func.attr}()` on a sync "
                    f"Session inside `async def {func.name}`; {route}",
                )
                break
