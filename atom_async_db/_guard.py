"""Driver calls that a cancellation cannot cut in half, so a cancelled task keeps its
connection healthy instead of costing one.

With plain SQLAlchemy, a task cancelled while a statement is in flight abandons the
driver's call midway: asyncpg then sends a cancel request to the server, and SQLAlchemy,
which cannot tell what state the connection is in, throws it away. Under a storm of client
disconnects the pool churns through reconnects (``benchmarks/cancel_storm.py``: about 500
connections discarded per 1,000 cancelled tasks).

Here each async engine connects through :func:`guarded_connector`, which wraps the
driver's connection (and the prepared statements, transactions and cursors it hands out)
so that every call into the driver runs in a task of its own. When the caller is
cancelled meanwhile, the call is given ``cancel_grace`` seconds to finish:

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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.util import await_

from .exceptions import CommitOutcomeUnknownError, DatabaseUnavailableError

logger = logging.getLogger("atom_async_db")

__all__ = [
    "ConnectionGuard",
    "deliver_rearmed_cancellation",
    "guarded_connector",
    "install_cancellation_rules",
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

    __slots__ = ("commit_outcome_unknown", "grace", "interrupt", "tainted")

    def __init__(self, grace: float, interrupt: Callable[[], Awaitable[Any]] | None) -> None:
        self.grace = grace
        self.interrupt = interrupt  # stops a running statement (aiosqlite; asyncpg: cancel)
        self.tainted = False
        self.commit_outcome_unknown = False

    async def commit(self, commit: Awaitable[Any]) -> Any:
        """Run a COMMIT; a connection lost meanwhile, or a COMMIT still running when a
        cancellation's grace ran out, leaves its outcome unknown (reported as
        :class:`CommitOutcomeUnknownError`, or as a note on the ``CancelledError``)."""
        try:
            return await self.run(commit)
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
        inner = asyncio.ensure_future(awaitable)
        try:
            result = await asyncio.shield(inner)
        except asyncio.CancelledError as cancel:
            if inner.done() and inner.cancelled():
                raise  # the call itself was cancelled (by the loop shutting down, say)
            await self._settle(inner)
            if self.tainted:
                if inner.done() and not inner.cancelled():
                    inner.exception()  # the interrupted statement's error: not the news
                raise
            self._rearm(cancel)
            result = inner.result()  # raises the call's own error, if any
        return _guarded(result, self)

    async def _settle(self, inner: asyncio.Future[Any]) -> None:
        """Wait up to ``grace`` for ``inner``, then stop it and wait for it to wind down,
        whatever cancellations arrive meanwhile.

        aiosqlite: the statement is interrupted and ends with an error, leaving the
        connection consistent. asyncpg: the call is cancelled (asyncpg cancels the
        statement on the server) midway, so the connection is tainted. A call that does
        not wind down either way (a SQLite busy wait ignores interrupts) taints it too.
        """
        loop = asyncio.get_running_loop()
        with anyio.CancelScope(shield=True):
            for limit, stop_first in ((self.grace, False), (_SETTLE_TIMEOUT, True)):
                if inner.done():
                    break
                if stop_first:
                    if self.interrupt is not None:
                        await self.interrupt()
                    else:
                        self.tainted = True
                        inner.cancel()
                give_up_at = loop.time() + limit
                while not inner.done() and (remaining := give_up_at - loop.time()) > 0:
                    # (a cancellation delivered again meanwhile is the same one: anyio does)
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait((inner,), timeout=remaining)
            if not inner.done():
                self.tainted = True
                inner.cancel()
        if inner.done() and not inner.cancelled():
            inner.exception()  # retrieved here, so asyncio does not log it as lost

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


# Tasks whose cancellation a guard re-armed and that has not landed yet.
_REARMED: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


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
    results run through a :class:`ConnectionGuard`; everything else passes through."""

    __slots__ = ("_atom_guard", "_atom_methods", "_atom_target")

    def __init__(self, target: Any, guard: ConnectionGuard) -> None:
        object.__setattr__(self, "_atom_target", target)
        object.__setattr__(self, "_atom_guard", guard)
        object.__setattr__(self, "_atom_methods", {})

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._atom_target, name)
        if not inspect.ismethod(value):  # attributes, and callable objects such as the
            return value  # sqlite3 connection behind aiosqlite's ``_conn``
        method = self._atom_methods.get(name)
        if method is None:
            method = self._atom_methods[name] = _guarded_method(name, self._atom_target, self)
        return method

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._atom_target, name, value)

    def __repr__(self) -> str:
        return f"<guarded {self._atom_target!r}>"


def _guarded_method(name: str, target: Any, proxy: _GuardedDriverObject) -> Callable[..., Any]:
    guard = proxy._atom_guard

    @functools.wraps(getattr(target, name))
    def call(*args: Any, **kwargs: Any) -> Any:
        result = getattr(target, name)(*args, **kwargs)
        if not hasattr(result, "__await__"):
            return _guarded(result, guard)
        if hasattr(result, "__aenter__"):
            return _GuardedContext(result, guard, name)
        commit = name == "commit"
        if guard.takes_cancellation(name):
            rollback = getattr(target, "rollback", None) if commit else None
            return guard.deliver_cancellation(result, rollback)
        return guard.commit(result) if commit else guard.run(result)

    return call


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
    if isinstance(result, _driver_object_types()):
        return _GuardedDriverObject(result, guard)
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
        opening = asyncio.ensure_future(_connect(connect, args, kwargs, server))
        try:
            connection = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # Let the handshake finish rather than drop a half-open socket, then close.
            await ConnectionGuard(grace, None)._settle(opening)
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_SETTLE_TIMEOUT):
                    await opening.result().close()
            raise
        # aiosqlite statements run in a thread a task cancel cannot stop; sqlite3 can.
        interrupt = getattr(connection, "interrupt", None) if server is None else None
        return _GuardedDriverObject(connection, ConnectionGuard(grace, interrupt))

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


def install_cancellation_rules(engine: Engine, *, ping_on_checkout: bool) -> None:
    """Make ``engine`` (an async engine's ``sync_engine``) keep connections that a
    cancellation interrupted unless their guard says their state is unknown.

    SQLAlchemy treats every ``CancelledError`` during a statement as a disconnect and
    discards the connection; with guarded driver calls it is known to be at rest.

    ``ping_on_checkout`` (PostgreSQL, in place of SQLAlchemy's ``pool_pre_ping``): test a
    pooled connection before handing it out, with one simple-protocol query (one
    round trip, no prepared statement, so PgBouncer-safe) instead of SQLAlchemy's BEGIN,
    query and ROLLBACK. SQLAlchemy discards a connection on any exception in its own ping
    or in a checkout hook, a cancellation included; this ping lets a cancelled task keep
    the connection (the cancellation then lands on the session's first statement).
    """
    if ping_on_checkout:

        @event.listens_for(engine, "connect")
        def _fresh(_dbapi_connection: Any, record: Any) -> None:
            record.info["atom_fresh"] = True

        @event.listens_for(engine, "checkout")
        def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
            if record.info.pop("atom_fresh", False):
                return
            driver = dbapi_connection.driver_connection
            guard = guard_of(driver)
            try:
                if guard is None:
                    dbapi_connection.ping()
                else:
                    await_(guard.run(driver._atom_target.execute("SELECT 1")))
            except Exception as error:
                logger.info("a pooled connection failed its ping (%r); reconnecting", error)
                disconnect = exc.DisconnectionError(f"the connection failed its ping: {error!r}")
                disconnect.invalidate_pool = True  # the server likely dropped them all
                raise disconnect from error

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
            unknown = CommitOutcomeUnknownError(
                "COMMIT", None, original, connection_invalidated=True
            )
            unknown.add_note(COMMIT_OUTCOME_UNKNOWN_NOTE)
            return unknown
        elif context.sqlalchemy_exception is not None and _is_connection_loss(
            original.__cause__ or original
        ):
            context.is_disconnect = True  # never hand this connection out again
            context.sqlalchemy_exception.add_note(CONNECTION_LOST_NOTE)
        return None
