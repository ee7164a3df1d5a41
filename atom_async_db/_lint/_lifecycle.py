"""ATOM102 to ATOM104, a session's lifecycle by hand: created directly, stored where it
outlives its work, closed by hand.

- ATOM102 (Manual Session Creation): each ``SessionLocal()`` call (any name ending in
  ``SessionLocal`` but ``AsyncSessionLocal``, the README's ``AsyncSessionFactory`` form)
  outside tests; a module-level one is ATOM103 instead.
- ATOM103 (Global Sessions): a session opened at module level (``db = SessionLocal()``,
  ``db = get_db_session().__enter__()``, ``db = next(get_db())``), in a class body, on
  ``self``/``cls``, in a ``global`` name, and a ``with`` block's session stored on
  ``self`` (it is closed when the block ends).
- ATOM104 (manual cleanup): ``db.close()`` on a session the function opened, got from a
  ``with`` block or from a dependency (``Depends(get_db)``); in a ``finally`` the message
  names the try/finally. A session the caller passed in is the caller's to close, and a
  generator that yields the session and closes it in ``finally`` (a ``get_db``-style
  dependency, the guide's test fixtures) is left alone: that is what a context manager is.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ._facts import FunctionNode, Opener, Source, functions, opener, own_nodes, session_params
from ._model import Finding, finding

__all__ = ["check"]

_SYNC_FIX = "`with get_db_session() as db:`"
_ASYNC_FIX = "`async with get_async_db_session() as db:`"


def check(source: Source) -> Iterator[Finding]:
    """ATOM102, ATOM103 and ATOM104 in ``source``.

    Raises:
        Nothing.
    """
    yield from _direct(source)
    yield from _module_level(source)
    for func in functions(source.tree):
        yield from _stored(func, source)
        yield from _closed(func, source)


def _fix(sync: bool) -> str:
    return _SYNC_FIX if sync else _ASYNC_FIX


def _direct(source: Source) -> Iterator[Finding]:
    """ATOM102: ``SessionLocal()`` outside tests."""
    if source.is_test:
        return
    for node in ast.walk(source.tree):
        if not isinstance(node, ast.Call):
            continue
        found = opener(node, source)
        if found is None or found.how != "factory" or not found.text.endswith("SessionLocal()"):
            continue
        if not found.sync:
            continue
        yield finding(
            source.path,
            node,
            "ATOM102",
            f"Manual session creation: `{found.text}` used directly; use {_SYNC_FIX} "
            "(services, tasks, scripts) or `db: Session = Depends(get_db)` (routes), "
            "which commit or roll back and close it",
        )


def _stored_opener(value: ast.expr | None, source: Source) -> Opener | None:
    """The session ``value`` opens and leaves open, if any (not a ``with`` item)."""
    if value is None:
        return None
    found = opener(value, source)
    if found is None or found.how == "context":
        return None  # get_db_session() unentered is a context manager, not a session
    return found


def _targets(node: ast.AST) -> tuple[list[ast.expr], ast.expr | None]:
    if isinstance(node, ast.Assign):
        return node.targets, node.value
    if isinstance(node, ast.AnnAssign):
        return [node.target], node.value
    return [], None


def _module_level(source: Source) -> Iterator[Finding]:
    """ATOM103: a session opened at module level or in a class body."""
    for node in own_nodes(source.tree.body):
        bodies: list[list[ast.stmt]] = [[node]] if isinstance(node, ast.stmt) else []
        if isinstance(node, ast.ClassDef):
            bodies = [node.body]
        for body in bodies:
            for statement in body:
                targets, value = _targets(statement)
                found = _stored_opener(value, source)
                if found is None or not targets:
                    continue
                where = "in a class body" if isinstance(node, ast.ClassDef) else "at module level"
                yield finding(
                    source.path,
                    found.call,
                    "ATOM103",
                    f"Global session: `{found.text}` stored {where}, shared by every caller "
                    f"and thread and never closed; open one per call with {_fix(found.sync)}",
                )


def _stored(func: FunctionNode, source: Source) -> Iterator[Finding]:
    """ATOM103: a session stored on ``self``/``cls`` or in a ``global`` name."""
    globals_ = {
        name for node in own_nodes(func.body) if isinstance(node, ast.Global) for name in node.names
    }
    scoped: dict[str, Opener] = {}  # with-block sessions: name → opener
    for node in own_nodes(func.body):
        if isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                found = opener(item.context_expr, source)
                if found is not None and isinstance(item.optional_vars, ast.Name):
                    scoped[item.optional_vars.id] = found
    for node in own_nodes(func.body):
        targets, value = _targets(node)
        for target in targets:
            long_lived = _long_lived(target, globals_)
            if long_lived is None:
                continue
            found = _stored_opener(value, source)
            if found is not None:
                yield finding(
                    source.path,
                    found.call,
                    "ATOM103",
                    f"Global session: `{found.text}` stored on {long_lived}, which outlives "
                    f"the work; open one per operation with {_fix(found.sync)}, or take the "
                    "session as a parameter",
                )
            elif isinstance(value, ast.Name) and value.id in scoped:
                block = scoped[value.id]
                yield finding(
                    source.path,
                    value,
                    "ATOM103",
                    f"Global session: `{value.id}` of `with {block.text}` stored on "
                    f"{long_lived}; the block closes it when it ends: use the session "
                    "inside the block only",
                )


def _long_lived(target: ast.expr, globals_: set[str]) -> str | None:
    if (
        isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id in {"self", "cls"}
    ):
        return f"`{target.value.id}.{target.attr}`"
    if isinstance(target, ast.Name) and target.id in globals_:
        return f"the global `{target.id}`"
    return None


def _closed(func: FunctionNode, source: Source) -> Iterator[Finding]:
    """ATOM104: ``db.close()`` on a session a context manager or a dependency closes."""
    nodes = list(own_nodes(func.body))
    sessions: dict[str, tuple[bool, str]] = {}  # name → (sync, how it was obtained)
    for param in session_params(func, source):
        if param.injected:  # (one the caller passed in is the caller's to close)
            sessions[param.name] = (param.sync, "injected")
    for node in nodes:
        if isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                found = opener(item.context_expr, source)
                if found is not None and isinstance(item.optional_vars, ast.Name):
                    sessions[item.optional_vars.id] = (found.sync, f"with {found.text}")
        targets, value = _targets(node)
        found = _stored_opener(value, source)
        if found is not None:
            for target in targets:
                if isinstance(target, ast.Name):
                    sessions[target.id] = (found.sync, "created")
    yielded = {
        node.value.id
        for node in nodes
        if isinstance(node, (ast.Yield, ast.YieldFrom)) and isinstance(node.value, ast.Name)
    }
    in_finally = {
        id(inner)
        for node in nodes
        if isinstance(node, (ast.Try, ast.TryStar))
        for statement in node.finalbody
        for inner in ast.walk(statement)
    }
    for node in nodes:
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "close"
            and isinstance(node.func.value, ast.Name)
        ):
            continue
        name = node.func.value.id
        if name not in sessions or name in yielded:
            continue
        sync, how = sessions[name]
        yield finding(
            source.path, node, "ATOM104", _close_message(name, sync, how, id(node) in in_finally)
        )


def _close_message(name: str, sync: bool, how: str, in_finally: bool) -> str:
    closes = "commits or rolls back and closes it"
    if how.startswith("with "):
        return f"Manual cleanup: `{name}.close()` inside `{how}`, which closes it; remove it"
    if how == "injected":
        return (
            f"Manual cleanup: `{name}.close()` on the injected session; the dependency closes "
            "it after the request: remove it"
        )
    if in_finally:
        return (
            f"Manual cleanup: try/finally with `{name}.close()` around a session; "
            f"{_fix(sync)} {closes}: remove the try/finally"
        )
    return f"Manual cleanup: `{name}.close()`; {_fix(sync)} {closes}: use it instead"
