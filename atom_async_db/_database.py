"""``Database``: one configured database, its per-loop engines and its session scopes."""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from typing import Any

from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ._engine import create_engine_for, create_sync_engine_for, open_memory_anchor
from ._hooks import ASYNC_SESSION
from ._loops import LoopEngines
from ._options import SessionOptions
from ._session import (
    ActiveScope,
    SessionScope,
    SingleTaskAsyncSession,
    TestTransaction,
    TrackedSession,
)
from ._settings import Settings, build_settings

__all__ = ["Database"]


class Database:
    """A database: settings, an async engine per event loop, and session scopes.

    Most applications use the process-wide default through the module-level functions
    (:func:`~atom_async_db.configure`, :func:`~atom_async_db.get_async_db_session`,
    :func:`~atom_async_db.get_async_db`). Create a ``Database`` yourself for a second
    database; it offers the same context manager and dependency::

        reporting = Database("postgresql://reporter@replica/reports", pool_size=5)

        async with reporting.get_async_db_session() as db:
            await db.execute(text("select 1"))

        @app.get("/report")
        async def report(db: AsyncSession = Depends(reporting.get_async_db)): ...

        await reporting.dispose()  # at shutdown

    Args:
        url: the database URL; ``None`` reads ``DATABASE_URL`` and falls back to the
            embedded SQLite file ``./atom.db`` (with a logged warning).
        engine_options: extra ``create_async_engine()`` keywords, for what the named
            options do not cover. An ``async_creator`` of your own replaces our connect
            step: the cancellation guard and ``application_name`` are then not applied.
        **options: ``pool_size``, ``max_overflow``, ``pool_timeout``, ``pool_recycle``,
            ``pool_pre_ping``, ``echo``, ``application_name``, ``cleanup_timeout``,
            ``cancel_grace``, ``sqlite_busy_timeout``, and for the legacy layer ``sync_pool_size``,
            ``sync_max_overflow``, ``sync_on_event_loop``; each also settable by
            environment (see the README).

    Raises:
        ConfigurationError: the URL or an option is invalid (the message says which).
        DriverNotInstalledError: the URL's driver is not installed.
    """

    def __init__(
        self,
        url: str | URL | None = None,
        *,
        engine_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.settings: Settings = build_settings(url, engine_options=engine_options, **options)
        settings = self.settings
        self._engines = LoopEngines(
            lambda: create_engine_for(settings), dispose_timeout=settings.cleanup_timeout
        )
        self._sessionmaker = async_sessionmaker(
            class_=SingleTaskAsyncSession,
            expire_on_commit=False,
            sync_session_class=TrackedSession,
            info={ASYNC_SESSION: True},
        )
        self._active: ContextVar[ActiveScope | None] = ContextVar(
            "atom_async_db.active_scope", default=None
        )
        self._sync_engine: Engine | None = None
        # Set while a test runs inside a rolled-back transaction (atom_async_db.testing).
        self._test_transaction: TestTransaction | None = None
        self._sync_engine_lock = threading.Lock()
        if settings.memory:
            anchor = open_memory_anchor(settings)
            weakref.finalize(self, anchor.close)

    @property
    def url(self) -> str:
        """The URL the async engine uses, password masked (safe to log)."""
        return self.settings.display_url

    @property
    def engine(self) -> AsyncEngine:
        """The async engine of the running event loop, created on first use.

        Use it for work that is not a session, such as creating tables::

            async with db.engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)

        Raises:
            NoEventLoopError: called outside a running event loop.
        """
        return self._engines.current()

    @property
    def sync_engine(self) -> Engine:
        """The sync engine of the legacy layer (``sync_compat``), created on first use.

        Same database, settings and pool rules as the async engines, with a sync driver
        (psycopg or psycopg2, sqlite3) and a pool of its own (``sync_pool_size`` +
        ``sync_max_overflow``), shared by all threads. Legacy code run through
        ``sync_compat.run_legacy`` does not use it: it goes through the async pool.

        Raises:
            DriverNotInstalledError: PostgreSQL and psycopg is not installed.
        """
        engine = self._sync_engine
        if engine is None:
            with self._sync_engine_lock:
                engine = self._sync_engine
                if engine is None:
                    engine = self._sync_engine = create_sync_engine_for(self.settings)
                    _forget_in_forked_children(engine)
        return engine

    def get_async_db_session(
        self,
        *,
        independent: bool = False,
        isolation_level: str | None = None,
        read_only: bool = False,
        statement_timeout: float | None = None,
        lock_timeout: float | None = None,
    ) -> AbstractAsyncContextManager[AsyncSession]:
        """A session that commits on success, rolls back on error and is always closed.

        Same as :func:`atom_async_db.get_async_db_session`, on this database.
        """
        options = SessionOptions.of(
            self.settings.dialect,
            isolation_level=isolation_level,
            read_only=read_only,
            statement_timeout=statement_timeout,
            lock_timeout=lock_timeout,
        )
        return SessionScope(self, commit=True, independent=independent, options=options)

    async def get_async_db(self) -> AsyncIterator[AsyncSession]:
        """FastAPI dependency: a request-scoped session that never commits on its own.

        Same as :func:`atom_async_db.get_async_db`, on this database.
        """
        async with SessionScope(self, commit=False) as session:
            yield session

    async def get_async_db_transaction(self) -> AsyncIterator[AsyncSession]:
        """FastAPI dependency: a request-scoped session that commits when the route returns.

        Same as :func:`atom_async_db.get_async_db_transaction`, on this database; declare
        it with ``Depends(..., scope="function")``.
        """
        async with SessionScope(self, commit=True) as session:
            yield session

    async def dispose(self) -> None:
        """Close the pooled connections of the running loop's engine and of the sync engine.

        Sessions still open get up to ``cleanup_timeout`` seconds to end first (not when
        the calling task itself holds one: it could not end meanwhile); sessions that
        outlast that keep working, and the engine is closed when the last of them ends.
        The next use opens new connections. Engines of other loops are disposed when their
        loop shuts down. An in-memory SQLite database keeps its data until the
        ``Database`` itself is garbage collected.
        """
        active = self._active.get()
        holding = active is not None and active.owner is asyncio.current_task()
        await self._engines.dispose_current(wait_for_sessions=not holding)
        self.dispose_sync_engine()

    def dispose_sync_engine(self) -> None:
        """Close the sync engine's pooled connections (no-op if it was never used).

        For sync programs, which have no loop to ``await dispose()`` on; the next sync
        session opens new connections.
        """
        if self._sync_engine is not None:
            self._sync_engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.url!r})"


def _forget_in_forked_children(engine: Engine) -> None:
    # The parent's sockets are the parent's: a forked child drops them unclosed.
    reference = weakref.ref(engine)

    def forget() -> None:
        engine = reference()
        if engine is not None:
            engine.dispose(close=False)

    os.register_at_fork(after_in_child=forget)
