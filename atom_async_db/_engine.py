"""Engine rules per dialect: pool settings, ``application_name``, and the SQLite profile
(WAL, busy timeout, foreign keys, ``BEGIN IMMEDIATE``, shared in-memory database).

The SQLite listeners work on any sync ``Engine``, so the compat layer's sync engine gets
exactly the same rules as the async one.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from ._settings import Settings

__all__ = [
    "MEMORY_CONCURRENCY_NOTE",
    "apply_sqlite_rules",
    "create_engine_for",
    "open_memory_anchor",
]

MEMORY_CONCURRENCY_NOTE = (
    "atom_async_db: an in-memory SQLite database was written from two event loops or threads "
    "at the same time; it serves one transaction at a time within one loop, and other loops "
    "or threads cannot wait for it. Use a file database (sqlite:///path/to/file.db) there."
)


def create_engine_for(settings: Settings) -> AsyncEngine:
    """Create the async engine for ``settings``; called once per event loop."""
    options: dict[str, Any] = {
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_timeout": settings.pool_timeout,
        "pool_recycle": settings.pool_recycle,
        "pool_pre_ping": settings.pool_pre_ping,
        "echo": settings.echo,
    }
    if settings.dialect == "postgresql":
        connect_args = dict(settings.engine_options.get("connect_args", {}))
        connect_args["server_settings"] = {
            "application_name": settings.application_name,
            **connect_args.get("server_settings", {}),
        }
        options["connect_args"] = connect_args
    else:
        options["poolclass"] = AsyncAdaptedQueuePool
        if settings.memory:
            # One connection that sessions take in turn: two transactions on one SQLite
            # connection would share a single transaction state (one's rollback undoes the
            # other's commit), and the data lives on in the anchor, so recycling is harmless
            # but pointless.
            options.update(pool_size=1, max_overflow=0, pool_recycle=-1, pool_pre_ping=False)
    merged = {**settings.engine_options, **options}
    engine = create_async_engine(settings.url, **merged)
    if settings.dialect == "sqlite":
        apply_sqlite_rules(engine.sync_engine, settings)
    return engine


def apply_sqlite_rules(engine: Engine, settings: Settings) -> None:
    """Install the SQLite profile on a (sync or async-backing) engine.

    - ``journal_mode=WAL`` (file databases): readers never block the writer.
    - ``busy_timeout``: a writer waits for the lock instead of failing at once.
    - ``foreign_keys=ON``: SQLite leaves foreign keys off per connection otherwise.
    - The driver's own implicit BEGIN is turned off and every transaction starts with
      ``BEGIN IMMEDIATE``: a deferred transaction that reads and then writes cannot upgrade
      its lock while another writer is active and fails with "database is locked" without
      waiting; it also makes SAVEPOINT work, which the driver's own BEGIN handling breaks.
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

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    if memory:

        @event.listens_for(engine, "handle_error")
        def _explain_shared_cache_lock(context: ExceptionContext) -> None:
            # Shared-cache databases lock whole tables and fail at once instead of waiting.
            if (
                "table is locked" in str(context.original_exception)
                and context.sqlalchemy_exception
            ):
                context.sqlalchemy_exception.add_note(MEMORY_CONCURRENCY_NOTE)


def open_memory_anchor(settings: Settings) -> sqlite3.Connection:
    """Open the connection that keeps a shared in-memory database alive.

    SQLite drops a shared-cache memory database when its last connection closes; pools
    close connections on dispose, invalidation and at the end of every event loop, so
    the :class:`Database` holds this one for as long as it lives.
    """
    return sqlite3.connect(
        f"{settings.url.database}?mode=memory&cache=shared", uri=True, check_same_thread=False
    )
