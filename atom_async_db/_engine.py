"""Engine rules per dialect: pool settings, ``application_name``, and the SQLite profile
(WAL, busy timeout, foreign keys, ``BEGIN IMMEDIATE``, shared in-memory database).

Both engines of a database are built here from the same settings: the async engine
(asyncpg, aiosqlite) and the legacy layer's sync engine (psycopg or psycopg2, sqlite3), so
they get the same pool rules, the same ``application_name`` and the same SQLite profile.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import math
import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool

from ._classify import install_commit_outcome_rule
from ._connector import (
    guarded_connector,
    install_cancellation_rules,
    install_sync_connect_rule,
    server_of,
)
from ._ping import install_checkout_ping
from ._pool import FairAsyncPool, FairPool
from ._pooler import async_connect_args, install_pooler_rules, sync_connect_args
from ._settings import Settings
from ._urls import ASYNCPG_COUNTS, ASYNCPG_SECONDS, PSYCOPG_ONLY, prepare_threshold
from ._watch import install_statement_watch
from .exceptions import DriverNotInstalledError

logger = logging.getLogger("atom_async_db")

__all__ = [
    "LOOP_THREAD_LOCK_NOTE",
    "MEMORY_CONCURRENCY_NOTE",
    "apply_sqlite_rules",
    "create_engine_for",
    "create_sync_engine_for",
    "open_memory_anchor",
]

LOOP_THREAD_LOCK_NOTE = (
    "atom_async_db: this sync session runs on an event loop's thread, where waiting for "
    "SQLite's write lock would stop every task of the loop, including the one holding the "
    "lock; so it failed at once instead of waiting. Run this code with "
    "`await sync_compat.run_legacy(fn)` or move it to the async API."
)

MEMORY_CONCURRENCY_NOTE = (
    "atom_async_db: an in-memory SQLite database was written from two event loops or threads "
    "at the same time; it serves one transaction at a time within one loop, and other loops "
    "or threads cannot wait for it. Use a file database (sqlite:///path/to/file.db) there."
)


# Options only our pools take (pool_timeout is SQLAlchemy's name for their timeout).
_OUR_POOLS_OPTIONS = ("pool_timeout", "max_idle", "stats_name", "leak_threshold")


class _SyncPool(FairPool):
    settings_names = ("sync_pool_size", "sync_max_overflow", "pool_timeout")


def create_engine_for(settings: Settings) -> AsyncEngine:
    """Create the async engine for ``settings``; called once per event loop."""
    options: dict[str, Any] = {
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_timeout": settings.pool_timeout,
        "pool_recycle": settings.pool_recycle,
        "pool_pre_ping": settings.pool_pre_ping,
        "max_idle": settings.pool_max_idle,
        "stats_name": settings.stats_name,
        "leak_threshold": settings.leak_threshold,
        "echo": settings.echo,
        "poolclass": FairAsyncPool,
    }
    url = settings.url
    connect_args = dict(settings.engine_options.get("connect_args", {}))
    if settings.dialect == "postgresql":
        import asyncpg

        connect: Callable[..., Any] = asyncpg.connect
        for names, kind in ((ASYNCPG_SECONDS, float), (ASYNCPG_COUNTS, int)):
            for name in names:
                if name in url.query:
                    connect_args.setdefault(name, kind(str(url.query[name])))
            url = url.difference_update_query(names)
        for name, value in async_connect_args(settings).items():
            connect_args.setdefault(name, value)
        connect_args.setdefault("timeout", settings.connect_timeout)
        connect_args["server_settings"] = {
            "application_name": settings.application_name,
            **connect_args.get("server_settings", {}),
        }
    else:
        import aiosqlite

        connect = aiosqlite.connect
        if settings.memory:
            # One connection that sessions take in turn: two transactions on one SQLite
            # connection would share a single transaction state (one's rollback undoes the
            # other's commit), and the data lives on in the anchor, so recycling is harmless
            # but pointless.
            options.update(pool_size=1, max_overflow=0, pool_recycle=-1, pool_pre_ping=False)
    if "async_creator" not in settings.engine_options:
        server = server_of(url) if settings.dialect == "postgresql" else None
        connect_args["async_creator_fn"] = guarded_connector(
            connect,
            settings.cancel_grace,
            server=server,
            sqlite_loop_limit=settings.sqlite_loop_limit,
            sqlite_busy_timeout_ms=int(settings.sqlite_busy_timeout * 1000),
        )
    options["connect_args"] = connect_args
    if "poolclass" in settings.engine_options:
        # The application's own pool (NullPool behind PgBouncer): our sizes are not its.
        for name in (*_OUR_POOLS_OPTIONS, "poolclass", "pool_size", "max_overflow"):
            options.pop(name)
    merged = {**settings.engine_options, **options}
    ping = merged.pop("pool_pre_ping")  # ours, not SQLAlchemy's (see _ping)
    engine = create_async_engine(url, **merged)
    install_cancellation_rules(engine.sync_engine)
    pooled = settings.server_pooler != "none"
    if ping or pooled:
        install_checkout_ping(
            engine.sync_engine, first_trip_limit=settings.pool_timeout if pooled else None
        )
    if settings.dialect == "sqlite":
        apply_sqlite_rules(engine.sync_engine, settings)
    else:
        install_pooler_rules(engine.sync_engine, settings)
    _watch_statements(engine.sync_engine, settings)
    return engine


def _watch_statements(engine: Engine, settings: Settings) -> None:
    install_statement_watch(
        engine,
        slow=settings.slow_statement_threshold,
        idle=settings.idle_in_transaction_threshold,
    )


def create_sync_engine_for(settings: Settings, *, poolclass: type[Pool] | None = None) -> Engine:
    """Create the legacy layer's sync engine for ``settings`` (one per database).

    The pool is ``sync_pool_size`` + ``sync_max_overflow``; ``engine_options`` apply as for
    the async engine, except ``connect_args``, which are the async driver's.

    Raises:
        DriverNotInstalledError: PostgreSQL and no sync driver (psycopg) is installed.
    """
    url = settings.sync_url
    if settings.dialect == "postgresql":
        driver = url.get_driver_name()
        if importlib.util.find_spec(driver) is None and driver != "psycopg":
            logger.info("the sync driver %r is not installed; using psycopg 3 instead", driver)
            driver = "psycopg"
            url = url.set(drivername="postgresql+psycopg")
        if importlib.util.find_spec(driver) is None:
            raise DriverNotInstalledError(
                "sync code on PostgreSQL (sync_compat outside run_legacy) needs the 'psycopg' "
                "package, which is not installed: pip install 'atom_async_db[postgres]'"
            )
        connect_args: dict[str, Any] = {
            "application_name": settings.application_name,
            **sync_connect_args(settings, driver),
        }
        if "connect_timeout" not in url.query:  # as the async engine's (libpq: whole s, >= 2)
            connect_args["connect_timeout"] = max(2, math.ceil(settings.connect_timeout))
        if "prepare_threshold" in url.query and driver == "psycopg":
            connect_args["prepare_threshold"] = prepare_threshold(url.query["prepare_threshold"])
        url = url.difference_update_query(PSYCOPG_ONLY)
    else:
        # The pool is shared by threads; each connection is used by one thread at a time.
        connect_args = {"check_same_thread": False}
    options: dict[str, Any] = {
        **{k: v for k, v in settings.engine_options.items() if k != "connect_args"},
        "poolclass": poolclass or settings.engine_options.get("poolclass") or _SyncPool,
        "pool_pre_ping": settings.pool_pre_ping,
        "echo": settings.echo,
        "connect_args": connect_args,
    }
    if options["poolclass"] is _SyncPool:
        options.update(
            pool_size=settings.sync_pool_size,
            max_overflow=settings.sync_max_overflow,
            pool_timeout=settings.pool_timeout,
            pool_recycle=settings.pool_recycle,
            max_idle=settings.pool_max_idle,
            stats_name=f"{settings.stats_name} (sync)",
            leak_threshold=settings.leak_threshold,
        )
    engine = create_engine(url, **options)
    if settings.dialect == "sqlite":
        apply_sqlite_rules(engine, settings, sync=True)
    else:  # (SQLite runs in the process: it has no COMMIT in flight to lose)
        install_commit_outcome_rule(engine)
        install_sync_connect_rule(engine, server_of(url))
        install_pooler_rules(engine, settings)
    _watch_statements(engine, settings)
    return engine


#: Set on a sync SQLite connection by a transaction that asked for SERIALIZABLE: its first
#: statement, a read too, takes the write lock (BEGIN IMMEDIATE), as every async one does.
LOCK_AT_FIRST_STATEMENT = "atom_lock_at_first_statement"


def lock_sqlite_at_first_statement(session: Session) -> None:
    """Make the sync SQLite transaction of ``session`` serializable: its first statement
    takes the write lock, so what it reads cannot change before it writes.
    """
    session.connection().info[LOCK_AT_FIRST_STATEMENT] = True


def apply_sqlite_rules(engine: Engine, settings: Settings, *, sync: bool = False) -> None:
    """Install the SQLite profile on an engine (``sync``: the legacy layer's sync engine).

    - ``journal_mode=WAL`` (file databases): readers never block the writer.
    - ``busy_timeout``: a writer waits for the lock instead of failing at once.
    - ``foreign_keys=ON``: SQLite leaves foreign keys off per connection otherwise.
    - The driver's own implicit BEGIN is turned off and every transaction starts with
      ``BEGIN IMMEDIATE``: a deferred transaction that reads and then writes cannot upgrade
      its lock while another writer is active and fails with "database is locked" without
      waiting; it also makes SAVEPOINT work, which the driver's own BEGIN handling breaks.
    - The sync engine (``sync``) sends that ``BEGIN IMMEDIATE`` just before the first
      statement that is not a SELECT, as the seed's sqlite3 did with a plain BEGIN: reads
      take no lock, so a route's session that only read never blocks the service it
      calls. On an event loop's thread it does not wait for the lock (busy timeout 0):
      the holder needs that loop to finish, so waiting could only end in "database is
      locked" after the full timeout with every task stopped.
    """
    busy_timeout_ms = int(settings.sqlite_busy_timeout * 1000)
    memory = settings.memory

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    if not sync:
        # The dialect's own step, where SQLite's is a no-op: SQLAlchemy reports its errors as
        # those of any statement, and it costs a driver call, where the documented "begin"
        # event runs a whole statement execution (7 % of a point read's instructions).
        engine.dialect.do_begin = _begin_immediate  # type: ignore[method-assign]

    else:

        @event.listens_for(engine, "begin")
        def _on_begin_later(connection: Connection) -> None:
            info = connection.info  # lives with the DBAPI connection
            info["atom_begin_pending"] = True
            info[LOCK_AT_FIRST_STATEMENT] = False

        @event.listens_for(engine, "before_cursor_execute")
        def _begin_before_first_write(
            connection: Connection, cursor: Any, statement: str, *_: Any
        ) -> None:
            info = connection.info
            if not info.get("atom_begin_pending") or (
                statement.lstrip()[:6].upper() == "SELECT" and not info[LOCK_AT_FIRST_STATEMENT]
            ):
                return
            info["atom_begin_pending"] = False
            wanted = 0 if asyncio._get_running_loop() is not None else busy_timeout_ms
            if info.get("atom_busy_timeout_ms", busy_timeout_ms) != wanted:
                cursor.execute(f"PRAGMA busy_timeout={wanted}")
                info["atom_busy_timeout_ms"] = wanted
            cursor.execute("BEGIN IMMEDIATE")

    @event.listens_for(engine, "handle_error")
    def _explain_lock_errors(context: ExceptionContext) -> None:
        message = str(context.original_exception)
        if context.sqlalchemy_exception is None or "is locked" not in message:
            return
        if memory and "table is locked" in message:
            # Shared-cache databases lock whole tables and fail at once instead of waiting.
            context.sqlalchemy_exception.add_note(MEMORY_CONCURRENCY_NOTE)
        if sync and asyncio._get_running_loop() is not None:
            context.sqlalchemy_exception.add_note(LOOP_THREAD_LOCK_NOTE)


def _begin_immediate(dbapi_connection: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("BEGIN IMMEDIATE")
    finally:
        cursor.close()


def open_memory_anchor(settings: Settings) -> sqlite3.Connection:
    """Open the connection that keeps a shared in-memory database alive.

    SQLite drops a shared-cache memory database when its last connection closes; pools
    close connections on dispose, invalidation and at the end of every event loop, so
    the :class:`Database` holds this one for as long as it lives.
    """
    return sqlite3.connect(
        f"{settings.url.database}?mode=memory&cache=shared", uri=True, check_same_thread=False
    )
