"""The SQLite fast path: what needs no I/O on an aiosqlite connection (making and closing
a cursor, a rollback with no transaction open) answered on the loop's thread, without a
trip to the connection's thread and back.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from ._cancel import ConnectionGuard

__all__ = ["here_calls"]


class _Ready:
    """An awaitable (and async context manager) whose value is already there."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # (a generator that never suspends)

    async def __aenter__(self) -> Any:
        return self.value

    async def __aexit__(self, *exc_info: Any) -> None:
        if self.value is not None:
            await self.value.close()


def _cursor_here(connection: Any, guard: ConnectionGuard) -> _Ready:
    """The aiosqlite ``cursor()`` without its trip to the connection's thread and back: making
    a sqlite3 cursor does no I/O. SQLAlchemy makes and closes a cursor around every
    statement; with :func:`_close_here` and :func:`_rollback_here`, a point read makes 4
    trips instead of 9.
    """
    import aiosqlite

    return _Ready(guard.wrap(aiosqlite.Cursor(connection, connection._conn.cursor())))


def _close_here(cursor: Any, guard: ConnectionGuard) -> Awaitable[Any]:
    """The aiosqlite ``Cursor.close()`` on the loop's thread: it only finalizes the cursor's
    statement (no I/O, no lock wait); SQLAlchemy calls it after its last fetch. Not when a
    statement was abandoned (``tainted``): it may still run on the connection's thread,
    and the loop's thread would wait for it.
    """
    if guard.tainted:
        return guard.run(cursor.close())
    cursor._cursor.close()
    return _Ready(None)


def _rollback_here(connection: Any, guard: ConnectionGuard) -> Awaitable[Any]:
    """The aiosqlite ``rollback()``, without a trip when no transaction is open (the pool's
    reset after a COMMIT): sqlite3 knows that without I/O.
    """
    if guard.tainted or connection._conn.in_transaction:
        return guard.run(connection.rollback())
    return _Ready(None)


@functools.cache  # built once: it is looked up for every method of every new cursor
def here_calls() -> dict[str, tuple[type, Callable[..., Awaitable[Any]]]]:
    import aiosqlite

    return {
        "cursor": (aiosqlite.Connection, _cursor_here),
        "close": (aiosqlite.Cursor, _close_here),
        "rollback": (aiosqlite.Connection, _rollback_here),
    }
