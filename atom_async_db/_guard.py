"""Driver calls that a cancellation cannot cut in half, so a cancelled task keeps its
connection healthy instead of costing one.

With plain SQLAlchemy, a task cancelled while a statement is in flight abandons the
driver's call midway: asyncpg then sends a cancel request to the server, and SQLAlchemy,
which cannot tell what state the connection is in, throws it away. Under a storm of client
disconnects the pool churns through reconnects (``benchmarks/cancel_storm.py``: about 500
connections discarded per 1,000 cancelled tasks).

Here each async engine connects through :func:`guarded_connector`, which wraps the
driver's connection (and the prepared statements, transactions and cursors it hands out)
so that the calling task never waits on the driver's own future, only on a stand-in
(``_Shielded``) that the driver's future wakes: a cancellation cancels the stand-in, never
the call. When the caller is cancelled meanwhile, the call is given ``cancel_grace``
seconds to finish:

- It finishes: its result is handed back as if nothing happened, so SQLAlchemy's view of
  the connection stays exact, and the cancellation is delivered again at the task's next
  await. When that is the connection's next driver call, it is taken there, before
  anything is sent (a COMMIT becomes a ROLLBACK: the cancelled task's work is undone). The
  session's cleanup then rolls back and returns a healthy connection.
- It does not: it is stopped. An aiosqlite statement is interrupted and fails, which
  leaves the connection consistent (as if it had finished). An asyncpg call is cancelled
  midway (asyncpg cancels the statement on the server) and the connection is marked
  *tainted*; :func:`install_cancellation_rules` makes SQLAlchemy discard tainted
  connections and keep every other one.

Third-party internals. This module, ``_ping``, ``_pool``, ``_tracked``, ``_nesting`` and
``_engine`` rely on these, each checked by name in
``tests/atom_async_db/test_third_party_internals.py``, which says what breaks without it;
pyproject.toml caps each driver at the versions verified:

- aiosqlite_conn_is_the_sqlite3_connection, aiosqlite_cursor_wraps_a_sqlite3_cursor,
  aiosqlite_thread_is_reachable;
- asyncpg_driver_object_types_exist;
- sqlalchemy_asyncpg_adapter_starts_transactions,
  sqlalchemy_asyncpg_dialect_sets_readonly_and_deferrable,
  sqlalchemy_async_conn_dialect_exists, sqlalchemy_session_connection_for_bind,
  sqlalchemy_session_transaction_connections, sqlalchemy_async_session_proxies_sync_methods;
- asyncio_future_blocking_protocol, asyncio_task_uncancel,
  asyncio_get_running_loop_without_raising, weakset_data_is_its_set_of_references.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import types
import weakref
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import anyio
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext

from .exceptions import CommitOutcomeUnknownError, DatabaseUnavailableError

logger = logging.getLogger("atom_async_db")

__all__ = [
    "ConnectionGuard",
    "cancellation_rearmed",
    "commit_outcome_unknown",
    "deliver_rearmed_cancellation",
    "guarded_connector",
    "install_cancellation_rules",
    "install_commit_outcome_rule",
]

# Calls that put a connection back at rest: a cancellation never stops them.
_ALWAYS_RUN = frozenset({"rollback", "close", "terminate", "reset", "is_closed"})

# How long a driver call cancelled on the server may take to wind down before the
# connection is given up on (its state is then unknown).
_SETTLE_TIMEOUT = 5.0


class ConnectionGuard:
    """Runs one driver connection's calls so that cancellation lets them finish.

    ``tainted`` is True once a call had to be abandoned: the connection's state is then
    unknown and it must not be reused.
    """

    __slots__ = ("commit_outcome_unknown", "cursors_here", "grace", "interrupt", "tainted")

    def __init__(
        self,
        grace: float,
        interrupt: Callable[[], Awaitable[Any]] | None,
        *,
        cursors_here: bool = False,
    ) -> None:
        self.grace = grace
        self.interrupt = interrupt  # stops a running statement (aiosqlite; asyncpg: cancel)
        self.tainted = False
        self.commit_outcome_unknown = False
        # aiosqlite with check_same_thread=False: what does no I/O (making and closing
        # cursors, a rollback with no transaction open) runs on the loop's thread, not by
        # a trip to the connection's thread (see _here_calls).
        self.cursors_here = cursors_here
        _driver_object_types()  # (the hot paths read _DRIVER_OBJECT_TYPES directly)

    async def commit(self, commit: Awaitable[Any]) -> Any:
        """Run a COMMIT; a connection lost meanwhile, or a COMMIT still running when a
        cancellation's grace ran out, leaves its outcome unknown (reported as
        :class:`CommitOutcomeUnknownError`, or as a note on the ``CancelledError``)."""
        try:
            return await self._drive(commit)
        except asyncio.CancelledError as cancel:
            if self.tainted:
                cancel.add_note(COMMIT_ABANDONED_NOTE)
            raise
        except Exception as error:
            if _is_connection_loss(error):
                self.commit_outcome_unknown = True
            raise

    @staticmethod
    def takes_cancellation(name: str) -> bool:
        """Whether the call about to be made (method ``name``) is where a cancellation
        re-armed by :meth:`_rearm` must land, before anything is sent."""
        if not _REARMED or name in _ALWAYS_RUN:
            return False
        task = asyncio.current_task()
        if task is None or task not in _REARMED:
            return False
        _REARMED.discard(task)
        return True

    async def deliver_cancellation(
        self, call: Awaitable[Any], rollback: Callable[[], Awaitable[Any]] | None
    ) -> Any:
        """Take the re-armed cancellation instead of making ``call`` (not started yet).
        A COMMIT (``rollback`` given) becomes a ROLLBACK: SQLAlchemy forgets the
        transaction either way, so it must not stay open."""
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            getattr(call, "close", lambda: None)()  # never started: nothing was sent
            if rollback is not None:
                try:
                    await self.run(rollback())
                except Exception:
                    self.tainted = True
            raise
        # The cancellation was withdrawn meanwhile.
        return await (self.run(call) if rollback is None else self.commit(call))

    async def run(self, awaitable: Awaitable[Any]) -> Any:
        """Await ``awaitable`` (a driver call) so that a cancellation of the caller lets it
        finish within the grace; see the module docstring. (A coroutine, not ``_drive``'s
        generator, so a guarded method can be handed to ``create_task`` or anyio.)"""
        return await self._drive(awaitable)

    @types.coroutine
    def _drive(self, awaitable: Awaitable[Any]) -> Generator[Any, None, Any]:
        # The call runs in the caller's task, but the task never waits on the driver's own
        # future: a cancellation would cancel that future, and asyncpg would abandon the
        # statement. The task waits on a _Shielded stand-in instead, which wakes it when
        # the driver's future is done, at no extra turn of the loop, or, when cancelled,
        # detaches the task from that future and wakes it with the cancellation.
        steps = awaitable.__await__()
        try:
            pending = steps.send(None)
            while True:
                if pending is None:  # a bare yield (asyncio.sleep(0)): nothing to protect
                    try:
                        yield
                    except asyncio.CancelledError as cancel:
                        return (yield from self._settle_call(steps, None, cancel))
                else:
                    try:
                        yield _Shielded(pending)
                    except asyncio.CancelledError as cancel:
                        return (yield from self._settle_call(steps, pending, cancel))
                pending = steps.send(None)
        except StopIteration as done:
            value = done.value
            return _guard_object(value, self) if isinstance(value, _DRIVER_OBJECT_TYPES) else value

    def _settle_call(
        self, steps: Generator[Any, None, Any], pending: Any, cancel: asyncio.CancelledError
    ) -> Generator[Any, None, Any]:
        """The caller was cancelled while the call waited for ``pending``: finish the call
        (see :meth:`settle`), then either re-arm the cancellation and hand back the call's
        outcome, or, when the call had to be stopped midway, raise the cancellation."""
        finished, value, error = yield from self.settle(steps, pending)
        if self.tainted or not finished:
            raise cancel
        self._rearm(cancel)
        if error is not None:
            raise error  # the call's own error
        return _guarded(value, self)

    @types.coroutine
    def settle(
        self, steps: Generator[Any, None, Any], pending: Any
    ) -> Generator[Any, None, tuple[bool, Any, BaseException | None]]:
        """Drive the rest of a call (``steps``, waiting for ``pending``) whatever
        cancellations arrive: up to ``grace`` seconds, then stopped, and given a few more
        seconds to wind down. Returns (finished, result, error).

        aiosqlite: the statement is interrupted and ends with an error, leaving the
        connection consistent. asyncpg: the call is cancelled (asyncpg cancels the
        statement on the server) midway, so the connection is tainted. A call that does
        not wind down either way (a SQLite busy wait ignores interrupts) taints it too.
        """
        loop = asyncio.get_running_loop()
        with anyio.CancelScope(shield=True):  # noqa: ASYNC100 (it waits: `yield from`)
            for limit, stop_first in ((self.grace, False), (_SETTLE_TIMEOUT, True)):
                if stop_first:
                    if self.interrupt is not None:
                        yield from _ignoring_cancellation(self.interrupt())
                    else:
                        self.tainted = True
                        if pending is not None:
                            pending.cancel()
                give_up_at = loop.time() + limit
                while loop.time() < give_up_at or (pending is not None and pending.done()):
                    if pending is not None and not pending.done():
                        yield from _wait(pending, give_up_at - loop.time())
                        continue
                    try:
                        pending = steps.send(None)
                    except StopIteration as done:
                        return True, done.value, None
                    except BaseException as error:  # the call's own error (or cancellation)
                        return True, None, error
                    if pending is None:
                        yield from _wait(None, 0)
        self.tainted = True
        with contextlib.suppress(RuntimeError):
            steps.close()
        return False, None, None

    @staticmethod
    def _rearm(cancel: asyncio.CancelledError) -> None:
        """Deliver ``cancel`` again at the task's next await: taken now, it would have
        interrupted SQLAlchemy between a call that finished and the bookkeeping after it.
        :func:`deliver_rearmed_cancellation` makes sure it lands before the session
        method that made the call returns."""
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()
        task.cancel(cancel.args[0] if cancel.args else None)
        _REARMED.add(task)


class _Shielded:
    """What a task waits on instead of a driver's future ``pending``: asyncio's task protocol
    for awaited objects (``_asyncio_future_blocking``, ``add_done_callback``, ``cancel``,
    ``result``), minus the cancelling of ``pending``.

    ``pending``'s own done-callback wakes the task, so a call that finishes wakes it with no
    extra turn of the loop. The task is woken with None, never with ``pending``'s outcome:
    the driver's coroutine reads that itself on the next send, so its own error handling
    runs (asyncpg re-prepares a statement a schema change invalidated, and swallows a reset
    while closing). ``cancel()`` takes the callback off ``pending`` (which runs on) and
    wakes the task with the ``CancelledError``; once ``pending`` is done, the wake-up is
    already on its way and ``cancel()`` returns False, so the task takes the cancellation
    at its next step, as it does for a finished future.
    """

    __slots__ = ("_asyncio_future_blocking", "_cancelled", "_context", "_loop", "_pending", "_wake")

    def __init__(self, pending: asyncio.Future[Any]) -> None:
        self._pending = pending
        self._loop = pending._loop  # (asyncio reads it where there is no get_loop())
        self._asyncio_future_blocking = True
        self._cancelled: tuple[Any, ...] | None = None  # the CancelledError's arguments

    def add_done_callback(self, wake: Callable[[Any], object], *, context: Any = None) -> None:
        self._wake = wake
        self._context = context
        self._pending.add_done_callback(self._done, context=context)

    def _done(self, pending: asyncio.Future[Any]) -> None:
        if pending.cancelled() or pending.exception() is not None:
            self._wake(self)  # (wakes the task with None: see the class docstring)
        else:
            self._wake(pending)  # the same, but asyncio's fast path

    def cancel(self, msg: Any = None) -> bool:
        if self._cancelled is not None or self._pending.done():
            return False
        self._pending.remove_done_callback(self._done)
        self._cancelled = () if msg is None else (msg,)
        self._loop.call_soon(self._wake, self, context=self._context)
        return True

    def done(self) -> bool:
        return self._cancelled is not None or self._pending.done()

    def cancelled(self) -> bool:
        return self._cancelled is not None

    def result(self) -> None:
        if self._cancelled is not None:
            # A new error each time: one kept here would hold this object, and so the
            # task's wake-up and the task, through its traceback (a cycle only the GC ends).
            raise asyncio.CancelledError(*self._cancelled)

    def __repr__(self) -> str:
        return f"<_Shielded {self._pending!r}>"


def _resolve(waiter: asyncio.Future[Any], _: object = None) -> None:
    if not waiter.done():
        waiter.set_result(None)


@types.coroutine
def _wait(pending: asyncio.Future[Any] | None, timeout: float) -> Generator[Any, None, None]:
    """Wait until ``pending`` is done (None: one turn of the loop) or ``timeout`` passed;
    a cancellation meanwhile is the one being settled (anyio delivers it again)."""
    if pending is None:
        with contextlib.suppress(asyncio.CancelledError):
            yield
        return
    waiter = pending.get_loop().create_future()
    wake = functools.partial(_resolve, waiter)
    timer = waiter.get_loop().call_later(timeout, wake)
    pending.add_done_callback(wake)
    try:
        yield from waiter
    except asyncio.CancelledError:
        pass
    finally:
        timer.cancel()
        pending.remove_done_callback(wake)


def _ignoring_cancellation(awaitable: Awaitable[Any]) -> Generator[Any, None, None]:
    """Await ``awaitable`` (for up to ``_SETTLE_TIMEOUT``) through the cancellations that
    are being settled."""
    task = asyncio.ensure_future(awaitable)
    give_up_at = task.get_loop().time() + _SETTLE_TIMEOUT
    while not task.done() and (remaining := give_up_at - task.get_loop().time()) > 0:
        yield from _wait(task, remaining)
    if task.done() and not task.cancelled():
        task.exception()


# Tasks whose cancellation a guard re-armed and that has not landed yet; _REARMED_REFS is
# its underlying set, whose truth is a cheap test on every driver call.
_REARMED: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
_REARMED_REFS: set[Any] = _REARMED.data  # type: ignore[attr-defined]


def cancellation_rearmed() -> bool:
    """Whether some task has a re-armed cancellation still to land (a cheap check before
    :func:`deliver_rearmed_cancellation`)."""
    return bool(_REARMED_REFS)


async def deliver_rearmed_cancellation(
    cause: BaseException | None = None, *, note: str | None = None
) -> None:
    """Let a cancellation re-armed during this task's last driver calls land now.

    Called when a session method (or ``run_legacy``) returns or raises: the cancellation
    then surfaces inside the ``asyncio.timeout``, cancel scope or ``try`` that wraps the
    call, as it would have without the guard, never later and elsewhere.
    """
    if not _REARMED:
        return
    task = asyncio.current_task()
    if task is None or task not in _REARMED:
        return
    _REARMED.discard(task)
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError as cancel:
        if note is not None:
            cancel.add_note(note)
        if cause is not None and cancel is not cause:
            raise cancel from cause
        raise


COMMIT_ABANDONED_NOTE = (
    "atom_async_db: the COMMIT was still running when this cancellation's grace period "
    "(cancel_grace) ran out and was stopped, so the transaction may or may not have been "
    "committed; read the data back to find out."
)

COMMIT_OUTCOME_UNKNOWN_NOTE = (
    "atom_async_db: the connection was lost while COMMIT was in flight, so the transaction "
    "may or may not have been committed; read the data back to find out. It is not retried "
    "automatically, since a retry could apply the work twice."
)


CONNECTION_LOST_NOTE = (
    "atom_async_db: the database closed this session's connection (a server-side timeout "
    "such as idle_in_transaction_session_timeout, pg_terminate_backend, a restart, or the "
    "network); the transaction is gone and the connection is discarded. Retry the unit of "
    "work with a new session."
)


def _explain_connect_error(context: ExceptionContext) -> None:
    cause = context.original_exception.__cause__
    if context.sqlalchemy_exception is None or cause is None:
        return
    if type(cause).__name__ in {"InvalidPasswordError", "InvalidAuthorizationSpecificationError"}:
        context.sqlalchemy_exception.add_note(
            "atom_async_db: the server refused the login; check the user name and password "
            "of the database URL (DATABASE_URL), and the server's pg_hba.conf"
        )


def _is_connection_loss(error: BaseException) -> bool:
    if isinstance(error, (OSError, EOFError)):
        return True
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is an optional extra
        return False
    if isinstance(error, asyncpg.PostgresError):
        # A server error answered the COMMIT (a deferred constraint, a serialization
        # failure): the outcome is known (rolled back), unless the server is going away.
        return error.sqlstate is not None and error.sqlstate.startswith(("57P", "08"))
    if isinstance(error, (asyncpg.InterfaceError, asyncpg.InternalClientError)):
        # "... the underlying connection is closed", and "cannot switch to state ...;
        # another operation is in progress" when the server ended the connection under a
        # statement (sqlalchemy#13241). Other interface errors are the caller's (too many
        # arguments, a bad type) and leave the connection fine.
        message = str(error)
        return "connection is closed" in message or "another operation" in message
    return False


class _GuardedDriverObject:
    """A driver object (connection, prepared statement, transaction, cursor) whose awaitable
    results run through a :class:`ConnectionGuard`; everything else passes through, setting
    and deleting attributes included.

    Each driver class gets a subclass of its own (made by :func:`_guard_object`), which
    keeps a :class:`_GuardedMethod` for a method once it has been used: later calls, on any
    object of that class, find it without going through ``__getattr__``. (A transaction is
    a new object per session, so wrappers per object would be made again for every session.)
    """

    __slots__ = ("__weakref__", "_atom_guard", "_atom_target")

    def __init__(self, target: Any, guard: ConnectionGuard) -> None:
        object.__setattr__(self, "_atom_target", target)
        object.__setattr__(self, "_atom_guard", guard)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._atom_target, name)
        if not inspect.ismethod(value):  # attributes, and callable objects such as the
            return value  # sqlite3 connection behind aiosqlite's ``_conn``
        method = _GuardedMethod(name, value)
        if not name.startswith("__"):  # (on the class, a special method would change what
            setattr(type(self), name, method)  # the interpreter does with every proxy)
        return method.__get__(self)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._atom_target, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._atom_target, name)

    def __repr__(self) -> str:
        return f"<guarded {self._atom_target!r}>"


_PROXY_CLASSES: dict[type, type[_GuardedDriverObject]] = {}


def _guard_object(target: Any, guard: ConnectionGuard) -> _GuardedDriverObject:
    proxy_class = _PROXY_CLASSES.get(type(target))
    if proxy_class is None:
        name = f"Guarded[{type(target).__module__}.{type(target).__qualname__}]"
        proxy_class = type(name, (_GuardedDriverObject,), {"__slots__": ()})
        _PROXY_CLASSES[type(target)] = proxy_class
    return proxy_class(target, guard)


class _GuardedMethod:
    """Driver method ``name`` as its proxy class holds it. Reading it from a proxy looks the
    method up on the driver object at that moment, as a bound method would be: a method
    saved before the driver object's was replaced (instrumentation, ``monkeypatch``) still
    calls the one it saved. What replaced it, if not a method, is handed out as it is."""

    __slots__ = ("_call", "_name")

    def __init__(self, name: str, method: Any) -> None:
        self._name = name
        self._call = _guarded_method(name, method)

    def __get__(self, proxy: _GuardedDriverObject | None, owner: Any = None) -> Any:
        if proxy is None:
            return self
        method = getattr(proxy._atom_target, self._name)
        if type(method) is not types.MethodType:
            return method
        return functools.partial(self._call, proxy._atom_guard, method)


def _guarded_method(name: str, method: Any) -> Callable[..., Any]:
    """The guarded call of driver method ``name`` (``method``: one object's, to look at)."""
    commit = name == "commit"

    def call(guard: ConnectionGuard, method: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(*args, **kwargs)
        if type(result) is not types.CoroutineType:  # (driver calls mostly are coroutines)
            if not hasattr(result, "__await__"):
                return _guarded(result, guard)
            if hasattr(result, "__aenter__"):
                return _GuardedContext(result, guard, name)
        if _REARMED_REFS and guard.takes_cancellation(name):
            rollback = getattr(method.__self__, "rollback", None) if commit else None
            return guard.deliver_cancellation(result, rollback)
        return guard.commit(result) if commit else guard.run(result)

    here = _here_calls().get(name)
    if here is not None and isinstance(method.__self__, here[0]):
        answer_here = here[1]

        def call_here(guard: ConnectionGuard, method: Any, *args: Any, **kwargs: Any) -> Any:
            if guard.cursors_here:
                return answer_here(method.__self__, guard)
            return call(guard, method, *args, **kwargs)

        return call_here
    return call


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
    """aiosqlite's ``cursor()`` without its trip to the connection's thread and back: making
    a sqlite3 cursor does no I/O. SQLAlchemy makes and closes a cursor around every
    statement; with :func:`_close_here` and :func:`_rollback_here`, a point read makes 4
    trips instead of 9."""
    import aiosqlite

    return _Ready(_guard_object(aiosqlite.Cursor(connection, connection._conn.cursor()), guard))


def _close_here(cursor: Any, guard: ConnectionGuard) -> Awaitable[Any]:
    """aiosqlite's ``Cursor.close()`` on the loop's thread: it only finalizes the cursor's
    statement (no I/O, no lock wait); SQLAlchemy calls it after its last fetch. Not when a
    statement was abandoned (``tainted``): it may still run on the connection's thread,
    and the loop's thread would wait for it."""
    if guard.tainted:
        return guard.run(cursor.close())
    cursor._cursor.close()
    return _Ready(None)


def _rollback_here(connection: Any, guard: ConnectionGuard) -> Awaitable[Any]:
    """aiosqlite's ``rollback()``, without a trip when no transaction is open (the pool's
    reset after a COMMIT): sqlite3 knows that without I/O."""
    if guard.tainted or connection._conn.in_transaction:
        return guard.run(connection.rollback())
    return _Ready(None)


@functools.cache  # built once: it is looked up for every method of every new cursor
def _here_calls() -> dict[str, tuple[type, Callable[..., Awaitable[Any]]]]:
    import aiosqlite

    return {
        "cursor": (aiosqlite.Connection, _cursor_here),
        "close": (aiosqlite.Cursor, _close_here),
        "rollback": (aiosqlite.Connection, _rollback_here),
    }


class _GuardedContext:
    """A driver result that is awaited or entered (aiosqlite's ``cursor()``)."""

    __slots__ = ("_guard", "_name", "_result")

    def __init__(self, result: Any, guard: ConnectionGuard, name: str) -> None:
        self._result = result
        self._guard = guard
        self._name = name

    def __await__(self) -> Any:
        return self._start(enter=False).__await__()

    def __aenter__(self) -> Any:
        return self._start(enter=True)

    def _start(self, *, enter: bool) -> Any:
        if self._guard.takes_cancellation(self._name):
            # Awaiting the result gives what entering it does (the cursor).
            return self._guard.deliver_cancellation(self._result, None)
        return self._guard.run(self._result.__aenter__() if enter else self._result)

    def __aexit__(self, *exc_info: Any) -> Any:
        return self._guard.run(self._result.__aexit__(*exc_info))


# Driver classes whose methods do I/O and therefore are wrapped as well.
_DRIVER_OBJECT_TYPES: tuple[type, ...] = ()


def _driver_object_types() -> tuple[type, ...]:
    global _DRIVER_OBJECT_TYPES
    if not _DRIVER_OBJECT_TYPES:
        types: list[type] = []
        try:
            from asyncpg.cursor import Cursor
            from asyncpg.prepared_stmt import PreparedStatement
            from asyncpg.transaction import Transaction

            types += [PreparedStatement, Transaction, Cursor]
        except ImportError:  # asyncpg is an optional extra
            pass
        import aiosqlite

        types.append(aiosqlite.Cursor)
        _DRIVER_OBJECT_TYPES = tuple(types)
    return _DRIVER_OBJECT_TYPES


def _guarded(result: Any, guard: ConnectionGuard) -> Any:
    if isinstance(result, _DRIVER_OBJECT_TYPES):
        return _guard_object(result, guard)
    return result


def guard_of(driver_connection: Any) -> ConnectionGuard | None:
    """The guard of a driver connection made by :func:`guarded_connector`, else None."""
    if isinstance(driver_connection, _GuardedDriverObject):
        guard: ConnectionGuard = driver_connection._atom_guard
        return guard
    return None


def guarded_connector(
    connect: Callable[..., Any], grace: float, *, server: str | None = None
) -> Callable[..., Any]:
    """An ``async_creator_fn`` for SQLAlchemy's asyncpg and aiosqlite dialects: connects
    with ``connect`` (the driver's own function) and guards the connection.

    A task cancelled while its connection is being opened lets the handshake finish and
    closes the connection, rather than drop a half-open socket. Network-level failures to
    reach ``server`` ("host:port") become :class:`DatabaseUnavailableError`.
    """

    async def connect_guarded(*args: Any, **kwargs: Any) -> Any:
        if server is None:  # aiosqlite: see ConnectionGuard.cursors_here
            kwargs.setdefault("check_same_thread", False)
        opening = asyncio.ensure_future(_connect(connect, args, kwargs, server))
        try:
            connection = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # Let the handshake finish rather than drop a half-open socket, then close.
            if not opening.done():
                steps = opening.__await__()
                await ConnectionGuard(grace, None).settle(steps, steps.send(None))
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_SETTLE_TIMEOUT):
                    await opening.result().close()
            raise
        # aiosqlite statements run in a thread a task cancel cannot stop; sqlite3 can.
        interrupt = getattr(connection, "interrupt", None) if server is None else None
        here = server is None and kwargs.get("check_same_thread") is False
        return _guard_object(connection, ConnectionGuard(grace, interrupt, cursors_here=here))

    return connect_guarded


async def _connect(connect: Callable[..., Any], args: Any, kwargs: Any, server: str | None) -> Any:
    connection = connect(*args, **kwargs)
    thread = getattr(connection, "_thread", None)
    if thread is not None:
        # aiosqlite >= 0.22 runs each connection in a non-daemon thread, which would keep
        # the process alive if a connection is never closed (SQLAlchemy does the same).
        thread.daemon = True
    try:
        return await connection
    except Exception as error:
        # 57P03: the server is starting up or shutting down
        down = (
            isinstance(error, (OSError, TimeoutError)) or getattr(error, "sqlstate", 0) == "57P03"
        )
        if server is None or not down:
            raise
        reason = (
            "no answer within the connect timeout" if isinstance(error, TimeoutError) else error
        )
        raise DatabaseUnavailableError(
            f"cannot connect to the database server at {server} ({reason}); check that it is "
            "running and reachable, and the host and port of the database URL"
        ) from error


def install_cancellation_rules(engine: Engine) -> None:
    """Make ``engine`` (an async engine's ``sync_engine``) keep connections that a
    cancellation interrupted unless their guard says their state is unknown.

    SQLAlchemy treats every ``CancelledError`` during a statement as a disconnect and
    discards the connection; with guarded driver calls it is known to be at rest.
    """

    @event.listens_for(engine, "handle_error")
    def _keep_connections_at_rest(context: ExceptionContext) -> BaseException | None:
        connection = context.connection
        if connection is None:
            _explain_connect_error(context)
            return None
        if connection.invalidated:
            return None
        guard = guard_of(connection.connection.driver_connection)
        if guard is None:
            return None
        original = context.original_exception
        if isinstance(original, asyncio.CancelledError):
            context.is_disconnect = guard.tainted
        elif guard.commit_outcome_unknown:
            guard.commit_outcome_unknown = False
            context.is_disconnect = True
            return commit_outcome_unknown(original)
        elif context.sqlalchemy_exception is not None and _is_connection_loss(
            original.__cause__ or original
        ):
            context.is_disconnect = True  # never hand this connection out again
            context.sqlalchemy_exception.add_note(CONNECTION_LOST_NOTE)
        return None


def commit_outcome_unknown(original: BaseException) -> CommitOutcomeUnknownError:
    """The error for a COMMIT whose connection was lost in flight (``original``: the
    driver's error)."""
    unknown = CommitOutcomeUnknownError("COMMIT", None, original, connection_invalidated=True)
    unknown.add_note(COMMIT_OUTCOME_UNKNOWN_NOTE)
    return unknown


def install_commit_outcome_rule(engine: Engine) -> None:
    """Make ``engine`` (the legacy layer's sync engine) report a connection lost while
    COMMIT was in flight as :class:`CommitOutcomeUnknownError`, as the async engines do.

    SQLAlchemy fires the ``commit`` event just before it sends COMMIT, and reports a
    failure of the COMMIT through ``handle_error`` straight after; the mark set between
    the two is cleared when the connection begins or rolls back.
    """
    committing: weakref.WeakSet[Connection] = weakref.WeakSet()

    @event.listens_for(engine, "commit")
    def _mark(connection: Connection) -> None:
        committing.add(connection)

    @event.listens_for(engine, "begin")
    @event.listens_for(engine, "rollback")
    def _unmark(connection: Connection) -> None:
        committing.discard(connection)

    @event.listens_for(engine, "handle_error")
    def _report(context: ExceptionContext) -> BaseException | None:
        connection = context.connection
        if connection is None or connection not in committing:
            return None
        committing.discard(connection)
        if not context.is_disconnect:  # the server answered: the outcome is known
            return None
        return commit_outcome_unknown(context.original_exception)
