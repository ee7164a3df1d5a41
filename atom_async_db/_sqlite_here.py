"""The SQLite fast path: statements that take microseconds run on the event loop's thread;
only what can wait (a lock wait, a long read, a write that reaches the disk) makes the
trip to the aiosqlite connection's thread.

A trip costs far more than the statement: SQLite answers a point read on a file in WAL
mode in microseconds, and each trip is a queue hand-off, a thread wake-up, a wake-up of
the loop and two switches of the GIL. What runs here, and the bound on how long the loop
is held (``LoopBudget.limit``, the ``sqlite_loop_limit`` setting):

- ``BEGIN`` (``BEGIN IMMEDIATE``) with a busy timeout of 0: it takes the write lock at
  once or fails at once. When another connection holds the lock, it is sent again on the
  connection's thread with the configured busy timeout, so the wait never holds the loop.
- ``SELECT``, with its rows fetched at once, under a progress handler that stops it
  once it has run ``limit`` seconds; a stopped read leaves the transaction as it was and
  runs again on the connection's thread (a read's work is lost, never a write's). The
  handler looks at the clock every ``_PROGRESS_STEPS`` steps, so a read whose steps call
  expensive functions overshoots the limit by up to that many calls.
- ``SAVEPOINT``, ``RELEASE``, ``ROLLBACK``, and the ``COMMIT`` of a transaction that wrote
  nothing: they end or mark a transaction in memory, without I/O.
- Making and closing cursors.

Everything else runs on the connection's thread as aiosqlite runs it: ``INSERT``,
``UPDATE``, ``DELETE`` (SQLite cannot stop a write midway without rolling back the whole
transaction, so one that turned out long could not be moved), DDL, ``PRAGMA``, the
``COMMIT`` of a transaction that wrote (it may wait for the disk), every statement outside
a transaction (no lock is held yet), and every call on a connection whose guard is
tainted (a call abandoned there may still be running). The connection's busy timeout is 0;
what goes there and may meet a lock is sent with the configured one (``_waiting``).

Nothing here yields to the loop, so no cancellation can arrive midway: the guarantees of
``_cancel`` hold without it. For the same reason a task whose statements all run here
would never let another task run: once they have held the loop ``limit`` seconds without
a turn, the next one waits for a turn first (``_held_too_long``).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

from ._cancel import REARMED_REFS

if TYPE_CHECKING:
    from ._cancel import ConnectionGuard

__all__ = ["LoopBudget", "here_calls"]

# How many SQLite virtual-machine steps between two looks at the clock: about a microsecond
# of plain scanning, and one look per point read. A step that calls an expensive function
# (string work on large values, a Python function the application registered) can hold the
# loop past the limit by up to this many of them.
_PROGRESS_STEPS = 100


class LoopBudget:
    """One aiosqlite connection's rules for running statements on the loop's thread.

    ``limit``: seconds a read may run here before it moves (0: every statement goes to
    the connection's thread, as aiosqlite sends it). ``busy_timeout_ms``: the wait for the
    write lock on the connection's thread. ``wrote``: the open transaction sent a
    statement that may have written, so its COMMIT may wait for the disk.
    """

    __slots__ = ("busy_timeout_ms", "deadline", "limit", "overran", "wal", "wrote")

    def __init__(self, limit: float, busy_timeout_ms: int) -> None:
        self.limit = limit
        self.busy_timeout_ms = busy_timeout_ms
        self.deadline = 0.0
        self.overran = False
        self.wrote = False
        self.wal: bool | None = None  # (learnt at the first COMMIT that wrote)

    def progress(self) -> int:
        """SQLite's progress handler during a read here: non-zero stops the statement."""
        if time.perf_counter() < self.deadline:
            return 0
        self.overran = True
        return 1


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


_DONE = _Ready(None)

# What each first word of a statement is to this module.
_READ = 1  # runs here under the limit
_BEGIN = 2  # runs here, without waiting for the lock
_MARK = 3  # SAVEPOINT, RELEASE, ROLLBACK [TO]: runs here
_THERE = 4  # runs on the connection's thread
_KINDS = {"SELECT": _READ, "BEGIN": _BEGIN, "SAVEPOINT": _MARK, "RELEASE": _MARK}


@functools.lru_cache(maxsize=1024)  # SQLAlchemy sends the same few strings again and again
def _kind(sql: str) -> int:
    words = sql.split(None, 1)
    if not words:
        return _THERE
    first = words[0].upper()
    if first == "ROLLBACK":  # ROLLBACK [TRANSACTION] [TO [SAVEPOINT] name]
        return _MARK
    return _KINDS.get(first, _THERE)


def _cursor_class() -> Any:
    import aiosqlite

    class HereCursor(aiosqlite.Cursor):
        """An aiosqlite cursor that holds the rows of a read run on the loop's thread."""

        rows: collections.deque[Any] | None = None

        def __aiter__(self) -> AsyncIterator[Any]:
            if self.rows is None:
                return super().__aiter__()
            return self._rows_here()

        async def _rows_here(self) -> AsyncIterator[Any]:
            while self.rows:
                yield self.rows.popleft()

    return HereCursor


_HereCursor = functools.cache(_cursor_class)

# The functions below are the calls answered here: each takes the guard, its budget, the
# aiosqlite method it stands for, ``there`` (that method's guarded call, for what goes to
# the thread) and the method's arguments.


def _open(guard: ConnectionGuard) -> bool:
    """Whether a statement may run here: not when a call abandoned on the connection's
    thread may still run there (``tainted``), nor while a cancellation the guard re-armed
    has still to land (the guarded call delivers it before anything is sent).
    """
    return not guard.tainted and not REARMED_REFS


def _cursor_here(
    guard: ConnectionGuard, budget: LoopBudget, method: Any, there: Any
) -> Awaitable[Any]:
    """The aiosqlite ``cursor()``: making a sqlite3 cursor does no I/O."""
    connection = method.__self__
    return _Ready(guard.wrap(_HereCursor()(connection, connection._conn.cursor())))


def _close_here(
    guard: ConnectionGuard, budget: LoopBudget, method: Any, there: Any
) -> Awaitable[Any]:
    """The aiosqlite ``Cursor.close()``: it only finalizes the cursor's statement."""
    if guard.tainted:
        return there()  # type: ignore[no-any-return]
    method.__self__._cursor.close()
    return _DONE


def _rollback_here(
    guard: ConnectionGuard, budget: LoopBudget, method: Any, there: Any
) -> Awaitable[Any]:
    """The aiosqlite ``rollback()``: in WAL mode it drops what the transaction wrote to
    memory; nothing to do when no transaction is open (the pool's reset after a COMMIT).
    """
    connection = method.__self__._conn
    if not connection.in_transaction and not guard.tainted:
        return _DONE
    if not budget.limit or guard.tainted:
        return there()  # type: ignore[no-any-return]
    connection.rollback()
    return _DONE


def _commit_here(
    guard: ConnectionGuard, budget: LoopBudget, method: Any, there: Any
) -> Awaitable[Any]:
    """The aiosqlite ``commit()``: here when the transaction wrote nothing. Otherwise there,
    where outside WAL mode (a file system without shared memory, say) it may have to wait
    for readers to finish.
    """
    connection = method.__self__._conn
    if not budget.limit or guard.tainted:
        return there()  # type: ignore[no-any-return]
    if budget.wrote or not _open(guard):
        if budget.wal is None:
            budget.wal = connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        return there() if budget.wal else _waiting(guard, budget, connection, there)
    connection.commit()
    return _DONE


def _execute_here(
    guard: ConnectionGuard,
    budget: LoopBudget,
    method: Any,
    there: Any,
    sql: str,
    parameters: Any = None,
) -> Awaitable[Any]:
    """The aiosqlite ``Cursor.execute()``: see the module docstring for what runs here.

    Raises:
        sqlite3.OperationalError: the statement failed here (as it would have there).
    """
    cursor = method.__self__
    if not budget.limit or type(cursor) is not _HereCursor():  # (made elsewhere: by
        budget.wrote = True  # Connection.execute, say)
        return there(sql, parameters)  # type: ignore[no-any-return]
    cursor.rows = None
    connection = cursor._conn._conn
    kind = _kind(sql) if _open(guard) else _THERE
    if kind == _THERE or (kind != _BEGIN and not connection.in_transaction):
        budget.wrote = True
        # (A transaction holds the lock; on a tainted connection the loop's thread must
        # not touch sqlite3 at all: an abandoned call may still hold it.)
        if connection.in_transaction or guard.tainted:
            return there(sql, parameters)  # type: ignore[no-any-return]
        return _waiting(guard, budget, connection, functools.partial(there, sql, parameters))
    now = time.perf_counter()
    if _held_too_long(now, budget.limit):
        return _after_a_turn(guard, budget, method, there, sql, parameters)
    raw = cursor._cursor
    parameters = () if parameters is None else parameters
    if kind == _BEGIN:
        budget.wrote = False
        try:
            raw.execute(sql, parameters)  # (busy timeout 0: see _waiting)
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
            return _waiting(guard, budget, connection, functools.partial(there, sql, parameters))
    elif kind == _MARK:
        raw.execute(sql, parameters)
    else:
        budget.deadline = now + budget.limit
        connection.set_progress_handler(budget.progress, _PROGRESS_STEPS)
        try:
            raw.execute(sql, parameters)
            if raw.description is not None:
                cursor.rows = collections.deque(raw.fetchall())
        except sqlite3.OperationalError:
            if not budget.overran:
                raise
            budget.overran = False  # a long read: its transaction is as it was; run it there
            cursor.rows = None
            return there(sql, parameters)  # type: ignore[no-any-return]
        finally:
            connection.set_progress_handler(None, 0)
    return _Ready(guard.wrap(cursor))


class _Streak(threading.local):
    """Since when statements run here have held this thread's loop without a turn."""

    loop: asyncio.AbstractEventLoop | None = None  # (None: the loop has turned since)
    started = 0.0


_streak = _Streak()


def _end_streak() -> None:
    _streak.loop = None


def _held_too_long(now: float, limit: float) -> bool:
    """Whether statements run here have held this loop for ``limit`` seconds without a
    turn of the loop: nothing here waits, so a task that only reads (a worker's loop of
    short sessions) would otherwise never let another task run.
    """
    streak = _streak
    loop = asyncio.get_running_loop()
    if streak.loop is loop:
        return now - streak.started > limit
    # (A streak of another loop is over: that loop stopped before its next turn.)
    streak.loop = loop
    streak.started = now
    loop.call_soon(_end_streak)  # (runs at the loop's next turn)
    return False


async def _after_a_turn(
    guard: ConnectionGuard, budget: LoopBudget, method: Any, there: Any, sql: str, parameters: Any
) -> Any:
    """The statement, once the loop has turned: every other task ready to run has run."""
    await asyncio.sleep(0)
    _streak.loop = None  # (the turn just taken ends the streak, whatever ran meanwhile)
    return await _execute_here(guard, budget, method, there, sql, parameters)


async def _waiting(
    guard: ConnectionGuard, budget: LoopBudget, connection: sqlite3.Connection, call: Any
) -> Any:
    """``call()``, a statement sent to the connection's thread, with SQLite's busy timeout,
    so that it waits there for a lock another connection holds. Everywhere else the
    connection's busy timeout is 0: what runs on the loop's thread never waits for a lock.
    """
    connection.execute(f"PRAGMA busy_timeout={budget.busy_timeout_ms}")
    try:
        return await call()
    finally:
        if not guard.tainted:  # (else a call abandoned there may still run)
            connection.execute("PRAGMA busy_timeout=0")


def _fetch_here(name: str) -> Callable[..., Awaitable[Any]]:
    """The aiosqlite fetch method ``name``, answered from the rows a read here fetched."""

    def fetch(
        guard: ConnectionGuard,
        budget: LoopBudget,
        method: Any,
        there: Any,
        size: int | None = None,
    ) -> Awaitable[Any]:
        cursor = method.__self__
        rows = getattr(cursor, "rows", None)
        if rows is None:
            return there() if size is None else there(size)  # type: ignore[no-any-return]
        if name == "fetchone":
            return _Ready(rows.popleft() if rows else None)
        if name == "fetchall":
            size = len(rows)
        elif size is None:
            size = cursor.arraysize
        return _Ready([rows.popleft() for _ in range(min(size, len(rows)))])

    return fetch


def _marks_written(
    guard: ConnectionGuard, budget: LoopBudget, method: Any, there: Any, *args: Any, **kw: Any
) -> Any:
    """An aiosqlite method sent to the connection's thread as it is, marking the
    transaction as one that may have written (and a cursor's rows read here as gone).
    """
    budget.wrote = True
    if type(method.__self__) is _HereCursor():
        method.__self__.rows = None
    return there(*args, **kw)


@functools.cache  # built once: it is looked up for every method of every new cursor
def here_calls() -> dict[tuple[type, str], Callable[..., Awaitable[Any]]]:
    """What the aiosqlite methods answered here are answered with, by (class, name)."""
    import aiosqlite

    connection, cursor = aiosqlite.Connection, aiosqlite.Cursor
    return {
        (connection, "cursor"): _cursor_here,
        (connection, "rollback"): _rollback_here,
        (connection, "commit"): _commit_here,
        (connection, "execute"): _marks_written,
        (connection, "executemany"): _marks_written,
        (connection, "executescript"): _marks_written,
        (cursor, "close"): _close_here,
        (cursor, "execute"): _execute_here,
        (cursor, "executemany"): _marks_written,
        (cursor, "executescript"): _marks_written,
        (cursor, "fetchone"): _fetch_here("fetchone"),
        (cursor, "fetchmany"): _fetch_here("fetchmany"),
        (cursor, "fetchall"): _fetch_here("fetchall"),
    }
