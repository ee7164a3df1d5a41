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
- It does not: it is cancelled (asyncpg cancels the statement on the server) and the
  connection is marked *tainted*; :func:`install_cancellation_rules` makes SQLAlchemy
  discard tainted connections and keep every other one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.util import await_

from .exceptions import CommitOutcomeUnknownError, DatabaseUnavailableError

logger = logging.getLogger("atom_async_db")

__all__ = ["ConnectionGuard", "guarded_connector", "install_cancellation_rules"]

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

    __slots__ = ("commit_outcome_unknown", "grace", "rearmed_for", "tainted")

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.tainted = False
        self.commit_outcome_unknown = False
        self.rearmed_for: asyncio.Task[Any] | None = None

    async def commit(self, commit: Awaitable[Any]) -> Any:
        """Run a COMMIT; a connection lost meanwhile leaves its outcome unknown, which
        :func:`install_cancellation_rules` reports as :class:`CommitOutcomeUnknownError`."""
        try:
            return await self.run(commit)
        except Exception as error:
            if _is_connection_loss(error):
                self.commit_outcome_unknown = True
            raise

    def takes_cancellation(self, name: str) -> bool:
        """Whether the call about to be made (method ``name``) is where a cancellation
        re-armed by :meth:`_rearm` must land, before anything is sent."""
        task = self.rearmed_for
        if task is None or name in _ALWAYS_RUN:
            return False
        self.rearmed_for = None
        return task is asyncio.current_task()

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
            if not inner.done() or inner.cancelled():
                self.tainted = True
                raise
            self._rearm(cancel)
            result = inner.result()  # raises the call's own error, if any
        return _guarded(result, self)

    async def _settle(self, inner: asyncio.Future[Any]) -> None:
        """Wait up to ``grace`` for ``inner``, then cancel it and wait for it to wind down,
        whatever cancellations arrive meanwhile."""
        loop = asyncio.get_running_loop()
        with anyio.CancelScope(shield=True):
            for limit, cancel_first in ((self.grace, False), (_SETTLE_TIMEOUT, True)):
                if inner.done():
                    break
                if cancel_first:
                    inner.cancel()
                give_up_at = loop.time() + limit
                while not inner.done() and (remaining := give_up_at - loop.time()) > 0:
                    # (a cancellation delivered again meanwhile is the same one: anyio does)
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait((inner,), timeout=remaining)
        if inner.done() and not inner.cancelled():
            inner.exception()  # retrieved here, so asyncio does not log it as lost

    def _rearm(self, cancel: asyncio.CancelledError) -> None:
        """Deliver ``cancel`` again at the task's next await: taken now, it would have
        interrupted SQLAlchemy between a call that finished and the bookkeeping after it."""
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()
        task.cancel(cancel.args[0] if cancel.args else None)
        self.rearmed_for = task


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
    # "connection is closed"; "cannot switch to state ...; another operation is in progress"
    # (the server ended the connection under a statement: sqlalchemy#13241)
    return isinstance(error, (asyncpg.InterfaceError, asyncpg.InternalClientError))


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
        if not callable(value) or isinstance(value, type):
            return value
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
            await ConnectionGuard(grace)._settle(opening)
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_SETTLE_TIMEOUT):
                    await opening.result().close()
            raise
        return _GuardedDriverObject(connection, ConnectionGuard(grace))

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
