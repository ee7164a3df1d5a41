"""``Database``: one configured database, its per-loop engines and its session scopes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from typing_extensions import Unpack

from ._drain import OpenScope
from ._engine import create_engine_for, create_sync_engine_for, open_memory_anchor
from ._health import ping
from ._leaks import still_open_places
from ._loops import LoopEngines, forget_in_forked_children
from ._masking import mask_url
from ._options import SessionOptionArgs, SessionOptions
from ._pool import FairPool
from ._replicas import Replicas, ReplicaScope, ReplicaStatus
from ._session import Scopes, SessionScope
from ._settings import Settings, build_settings
from ._startup import StartupCheck
from ._stats import PoolBook, PoolStats
from ._tracked import backing_class, single_task_class
from .exceptions import ConfigurationError

__all__ = ["Database"]

logger = logging.getLogger("atom_async_db")


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
            A ``poolclass`` of your own (``NullPool`` behind PgBouncer) replaces our pool
            and its sizes.
        **options: ``pool_size``, ``max_overflow``, ``pool_timeout``, ``pool_recycle``,
            ``pool_pre_ping``, ``pool_max_idle``, ``echo``, ``application_name``,
            ``cleanup_timeout``, ``drain_timeout``, ``cancel_grace``,
            ``sqlite_busy_timeout``, ``sqlite_loop_limit``, ``server_pooler``,
            ``replica_urls``, ``max_replica_lag``, ``replica_check_interval``,
            ``worker_processes``, ``pool_name``, ``leak_threshold``,
            ``idle_in_transaction_threshold``, ``slow_statement_threshold``, the session
            classes, and for the legacy layer ``sync_pool_size``, ``sync_max_overflow``,
            ``sync_on_event_loop``; each also settable by environment (see the README).

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
        self._start(build_settings(url, engine_options=engine_options, **options))

    def _start(self, settings: Settings) -> None:
        self.settings: Settings = settings
        self._startup = startup = StartupCheck(settings)
        self._replicas = replicas = _replicas_of(settings)
        self._pools = pools = PoolBook()

        def create_engine() -> AsyncEngine:
            engine = startup.install(create_engine_for(settings))
            pools.track(engine.sync_engine)
            if settings.replica_urls and replicas is not None:
                replicas.watch_writes(engine)
            return engine

        self._engines = LoopEngines(create_engine, dispose_timeout=settings.cleanup_timeout)
        self._scopes = Scopes(
            repr(self),
            settings,
            self._engines,
            async_sessionmaker(
                class_=single_task_class(settings.async_session_class),
                expire_on_commit=False,
                sync_session_class=backing_class(settings.session_class),
            ),
        )
        self._sync_engine: Engine | None = None
        self._sync_engine_lock = threading.Lock()
        # The pytest plugin's database outlives the application's lifespans: its dispose()
        # drains and closes, then opens it again (_reopen).
        self._reopens = False
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
            DatabaseDisposedError: the database was disposed.
        """
        return self._scopes.engine()

    @property
    def sync_engine(self) -> Engine:
        """The sync engine of the legacy layer (``sync_compat``), created on first use.

        Same database, settings and pool rules as the async engines, with a sync driver
        (psycopg or psycopg2, sqlite3) and a pool of its own (``sync_pool_size`` +
        ``sync_max_overflow``), shared by all threads. Legacy code run through
        ``sync_compat.run_legacy`` does not use it: it goes through the async pool.

        Raises:
            DriverNotInstalledError: PostgreSQL and psycopg is not installed.
            DatabaseDisposedError: the database was disposed.
        """
        engine = self._sync_engine
        if engine is None:
            if self._scopes.disposed:
                raise self._scopes.disposed_error()
            with self._sync_engine_lock:
                engine = self._sync_engine
                if engine is None:
                    engine = create_sync_engine_for(self.settings)
                    self._sync_engine = self._startup.install_sync(engine)
                    self._pools.track(engine)
                    forget_in_forked_children(engine)
        return engine

    def get_async_db_session(
        self,
        *,
        independent: bool = False,
        commit: bool = True,
        replica: bool = False,
        **options: Unpack[SessionOptionArgs],
    ) -> AbstractAsyncContextManager[AsyncSession]:
        """A session that commits on success, rolls back on error and is always closed.

        Same as :func:`atom_async_db.get_async_db_session`, on this database.

        Raises:
            ConfigurationError: ``replica=True`` with ``independent=True`` (a replica
                session is one of its own already).
            What :func:`atom_async_db.get_async_db_session` raises.
        """
        checked = SessionOptions.of(self.settings.dialect, options)
        if replica:
            if independent:
                raise ConfigurationError(
                    "a replica=True session is a session of its own already; drop independent=True"
                )
            if self._replicas is not None:
                return ReplicaScope(
                    self.get_async_db_session,
                    self._scopes,
                    self._replicas,
                    commit=commit,
                    options=options,
                )
        return SessionScope(self._scopes, commit=commit, independent=independent, options=checked)

    async def get_async_db_replica(self) -> AsyncIterator[AsyncSession]:
        """FastAPI dependency for read-only routes: a request-scoped session on a replica.

        Same as :func:`atom_async_db.get_async_db_replica`, on this database.

        Raises:
            What :func:`atom_async_db.get_async_db_replica` raises.
        """
        async with self.get_async_db_session(replica=True, commit=False) as session:
            yield session

    def replica_status(self) -> tuple[ReplicaStatus, ...]:
        """What the last check of each replica (``replica_urls``) found: whether sessions go
        to it, how far behind it was and, when skipped, why; empty without replicas.

        Raises:
            Nothing: it reads what the checks recorded, without I/O.
        """
        return () if self._replicas is None else self._replicas.status()

    async def get_async_db(self) -> AsyncIterator[AsyncSession]:
        """FastAPI dependency: a request-scoped session that never commits on its own.

        Same as :func:`atom_async_db.get_async_db`, on this database.

        Raises:
            What :func:`atom_async_db.get_async_db` raises.
        """
        async with SessionScope(self._scopes, commit=False) as session:
            yield session

    async def get_async_db_transaction(self) -> AsyncIterator[AsyncSession]:
        """FastAPI dependency: a request-scoped session that commits when the route returns.

        Same as :func:`atom_async_db.get_async_db_transaction`, on this database; declare
        it with ``Depends(..., scope="function")``.

        Raises:
            What :func:`atom_async_db.get_async_db_transaction` raises.
        """
        async with SessionScope(self._scopes, commit=True) as session:
            yield session

    def transaction_dependency(
        self, **options: Unpack[SessionOptionArgs]
    ) -> Callable[[], AsyncIterator[AsyncSession]]:
        """:meth:`get_async_db_transaction` with options for its transaction.

        Same as :func:`atom_async_db.transaction_dependency`, on this database; declare
        it with ``Depends(..., scope="function")``.

        Raises:
            ConfigurationError: an option is invalid, or not available on SQLite (when it
                is called: the options are checked once).
            What :meth:`get_async_db_transaction` raises, per request.
        """
        checked = SessionOptions.of(self.settings.dialect, options)
        scopes = self._scopes

        async def transaction_with_options() -> AsyncIterator[AsyncSession]:
            async with SessionScope(scopes, commit=True, options=checked) as session:
                yield session

        return transaction_with_options

    def pool_stats(self) -> PoolStats:
        """A snapshot of this database's connection pools, summed over them.

        See :class:`~atom_async_db.PoolStats`, field by field::

            stats = database.pool_stats()
            print(stats.in_use, stats.waiting, stats.wait_time.p99)

        Raises:
            Nothing: it reads counters, without I/O.
        """
        engines = [engine.sync_engine for engine in self._engines.engines()]
        if self._sync_engine is not None:
            engines.append(self._sync_engine)
        return self._pools.snapshot(self.settings.stats_name, engines)

    async def ping(self, timeout: float = 5.0) -> float:  # noqa: ASYNC109 (a probe's deadline)
        """Check that the database answers within ``timeout`` seconds.

        One round trip on a pooled connection of this loop's engine; returns the seconds
        it took. A connection attempt the deadline cuts short may take ``cancel_grace``
        longer to settle::

            try:
                await database.ping(timeout=2)
            except DatabaseUnavailableError as error:
                print(f"not ready: {error}")

        Raises:
            DatabaseUnavailableError: no answer within ``timeout`` (the server down or
                overloaded, or the pool busy: the message says), or the connection failed.
            DatabaseDisposedError: the database was disposed.
            NoEventLoopError: called outside a running event loop.
        """
        settings = self.settings
        return await ping(
            self.engine,
            timeout=timeout,
            pinged_on_checkout=settings.pool_pre_ping or settings.server_pooler != "none",
            name=settings.display_url,
        )

    @property
    def disposed(self) -> bool:
        """Whether :meth:`dispose` (or :meth:`dispose_sync_engine`) has begun: the database
        opens no new sessions.
        """
        return self._scopes.disposed

    async def dispose(self) -> None:
        """Shut the database down: drain its sessions, then close its connections.

        1. New sessions are refused with :class:`DatabaseDisposedError`, except blocks
           nested in a session that was already open (they are part of its work).
        2. The sessions open now (this loop's tasks, and threads on the sync engine; not
           the caller's own) get ``drain_timeout`` seconds to end: opened, connected, in a
           statement or committing, each finishes as it would have.
        3. Tasks whose sessions are still open then are cancelled, and their sessions roll
           back (a COMMIT in flight reports its outcome on the ``CancelledError``, as for
           any cancellation); threads cannot be stopped.
        4. This loop's pool and the sync pool are closed: free connections now, those of
           sessions still open (the caller's own, a thread's) as each ends.

        To start again, configure the database anew (:func:`~atom_async_db.configure`, or
        a new ``Database``); FastAPI's ``atom_async_db.fastapi.lifespan`` opens the default
        database again, in place, when the application starts again. Engines of other
        event loops close when their loop shuts down. An in-memory SQLite database keeps
        its data until the ``Database`` itself is garbage collected.

        Raises:
            Nothing of its own: a session that fails while it drains fails in its own task.
        """
        self._scopes.disposed = True
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()

        def drained(scope: OpenScope) -> bool:
            return scope.owner is not me and scope.loop in (loop, None)

        still_open = await self._scopes.open.wait(drained, self.settings.drain_timeout)
        stopping = {
            scope.owner
            for scope in still_open
            if isinstance(scope.owner, asyncio.Task) and scope.owner.get_loop() is loop
        }
        if still_open:
            logger.warning(
                "dispose: %d sessions were still open after drain_timeout=%g s; stopping "
                "the %d tasks among them (their sessions roll back). Still open:\n  %s",
                len(still_open),
                self.settings.drain_timeout,
                len(stopping),
                "\n  ".join(still_open_places(still_open)),
            )
        for task in stopping:
            task.cancel("atom_async_db: dispose() stopped this session after drain_timeout")
        if stopping:  # each one's cleanup is bounded (see _session._release)
            limit = 2 * self.settings.cleanup_timeout + 1
            await self._scopes.open.wait(lambda scope: scope.owner in stopping, limit)
        await self._engines.close_current()
        self._close_sync_engine()
        if self._replicas is not None:
            await self._replicas.dispose()
        if self._reopens:
            self._reopen()

    def dispose_sync_engine(self) -> None:
        """:meth:`dispose` for sync programs, which have no loop to await it on: new
        sessions are refused, the sync engine's sessions of other threads get
        ``drain_timeout`` seconds to end, and the sync pool is closed (the connections of
        sessions still open close as each ends; threads cannot be stopped).

        Raises:
            Nothing of its own: a session that fails while it drains fails in its own thread.
        """
        self._scopes.disposed = True
        me = threading.current_thread()
        still_open = self._scopes.open.wait_sync(
            lambda scope: scope.loop is None and scope.owner is not me,
            self.settings.drain_timeout,
        )
        if still_open:
            logger.warning(
                "dispose: %d sessions on the sync engine were still open after "
                "drain_timeout=%g s; their connections close as they end. Still open:\n  %s",
                len(still_open),
                self.settings.drain_timeout,
                "\n  ".join(still_open_places(still_open)),
            )
        self._close_sync_engine()
        if self._reopens:
            self._reopen()

    def _close_sync_engine(self) -> None:
        # The engine object stays: code holds it (``engine = get_database().sync_engine``
        # in a ported core/database.py), and it works again after _reopen().
        engine = self._sync_engine
        if engine is not None:
            pool = engine.pool
            if isinstance(pool, FairPool):
                pool.close()
            engine.dispose()

    def _reopen(self) -> None:
        """Open a disposed database again, in place: the application starts again in the
        same process (``fastapi.lifespan``), or the test plugin's database outlives an
        application's shutdown. Every reference to it, and to its sync engine, works again.
        """
        engine = self._sync_engine
        if engine is not None and isinstance(engine.pool, FairPool):
            engine.pool.reopen()
        if self._replicas is not None:
            self._replicas.reopen()
        self._scopes.disposed = False

    def __repr__(self) -> str:
        return f"Database({self.url!r})"


def _replicas_of(settings: Settings) -> Replicas | None:
    """The replicas of ``settings`` (a ``Database`` each, with the primary's settings);
    on PostgreSQL without any, none: ``replica=True`` sessions then go to the primary,
    read-only, as they would with every replica gone.
    """
    if settings.dialect != "postgresql":
        return None
    databases = []
    for url in settings.replica_urls:
        replica = Database.__new__(Database)
        replica._start(
            dataclasses.replace(
                settings,
                url=url,
                sync_url=url.set(drivername="postgresql+psycopg"),  # (never used)
                replica_urls=(),
            )
        )
        databases.append((mask_url(url), replica))
    return Replicas(
        databases,
        max_lag=settings.max_replica_lag,
        interval=settings.replica_check_interval,
        check_timeout=min(settings.pool_timeout, 5.0),
    )
