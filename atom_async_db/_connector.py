"""The guarded connector: how each async engine opens a driver connection, guarded, with
network failures reported as :class:`~atom_async_db.DatabaseUnavailableError` (by the sync
engine too), and the engine rule that keeps the connections its guards know to be at rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, ExceptionContext

from ._cancel import SETTLE_TIMEOUT, ConnectionGuard, guard_of
from ._classify import (
    CONNECTION_LOST_NOTE,
    commit_outcome_unknown,
    explain_connect_error,
    is_connection_loss,
)
from ._proxies import guard_connection
from ._sqlite_here import LoopBudget
from .exceptions import DatabaseUnavailableError

__all__ = [
    "guarded_connector",
    "install_cancellation_rules",
    "install_sync_connect_rule",
    "server_of",
]


def guarded_connector(
    connect: Callable[..., Any],
    grace: float,
    *,
    server: str | None = None,
    sqlite_loop_limit: float = 0.0,
    sqlite_busy_timeout_ms: int = 0,
) -> Callable[..., Any]:
    """An ``async_creator_fn`` for SQLAlchemy's asyncpg and aiosqlite dialects: connects
    with ``connect`` (the driver's own function) and guards the connection (an aiosqlite
    one with the loop budget of ``_sqlite_here``).

    A task cancelled while its connection is being opened lets the handshake finish and
    closes the connection, rather than drop a half-open socket. Network-level failures to
    reach ``server`` ("host:port") become :class:`DatabaseUnavailableError`.
    """

    async def connect_guarded(*args: Any, **kwargs: Any) -> Any:
        if server is None:  # aiosqlite: see _sqlite_here
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
                with anyio.CancelScope(shield=True), anyio.move_on_after(SETTLE_TIMEOUT):
                    await opening.result().close()
            raise
        # aiosqlite statements run in a thread a task cancel cannot stop; sqlite3 can.
        interrupt = getattr(connection, "interrupt", None) if server is None else None
        here = None
        if server is None and kwargs.get("check_same_thread") is False:
            here = LoopBudget(sqlite_loop_limit, sqlite_busy_timeout_ms)
            if sqlite_loop_limit:  # the loop's thread never waits for a lock (see _sqlite_here)
                connection._conn.execute("PRAGMA busy_timeout=0")
        return guard_connection(connection, ConnectionGuard(grace, interrupt, here=here))

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
        raise unavailable(server, reason) from error


def server_of(url: URL) -> str:
    """``host:port`` of a PostgreSQL URL, as errors name the server (IPv6 in brackets)."""
    host = url.host or "localhost"
    port = url.port or 5432
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def unavailable(server: str, reason: object) -> DatabaseUnavailableError:
    """The error for a server that could not be reached, async or sync."""
    first_line = str(reason).strip().splitlines()[0] if str(reason).strip() else repr(reason)
    return DatabaseUnavailableError(
        f"cannot connect to the database server at {server} ({first_line}); check that it "
        "is running and reachable, and the host and port of the database URL"
    )


# What libpq's message says when the server itself answered (and refused): not "down".
_SERVER_ANSWERED = ("FATAL:", "ERROR:", "PANIC:")
_SERVER_NOT_READY = ("starting up", "shutting down", "in recovery mode")


def install_sync_connect_rule(engine: Engine, server: str) -> None:
    """Make the sync engine report a server it cannot reach as the async engines do, with
    :class:`DatabaseUnavailableError` (psycopg raises ``OperationalError`` for every failed
    connection: one the server refused, such as an unknown database, stays that).
    """

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except dialect.loaded_dbapi.OperationalError as error:
            message = str(error)
            answered = any(marker in message for marker in _SERVER_ANSWERED)
            if answered and not any(state in message for state in _SERVER_NOT_READY):
                raise
            raise unavailable(server, message.removeprefix("connection failed: ")) from error

    @event.listens_for(engine, "handle_error")
    def _explain_refused_login(context: ExceptionContext) -> None:
        if context.connection is None:
            explain_connect_error(context)


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
            explain_connect_error(context)
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
        elif context.sqlalchemy_exception is not None and is_connection_loss(
            original.__cause__ or original
        ):
            context.is_disconnect = True  # never hand this connection out again
            context.sqlalchemy_exception.add_note(CONNECTION_LOST_NOTE)
        return None
