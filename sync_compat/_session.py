"""Where a legacy sync session gets its connection, decided each time it starts a transaction.

- **Bridged** (inside ``run_legacy``, or any SQLAlchemy greenlet): the running loop's async
  engine, through its ``sync_engine`` facade. Every wait becomes an ``await`` on the event
  loop, so the legacy code shares the async pool and blocks nothing.
- **Thread** (no event loop running in this thread: scripts, worker threads, FastAPI's
  threadpool for ``def`` routes): the database's sync engine.
- **Loop** (an event loop is running in this very thread, outside a greenlet: the seed's
  ``async def`` routes on ``get_db``, its "background task"): the sync engine too, so the
  code keeps working, but every statement blocks the loop, so each one warns
  (:class:`SyncSessionOnEventLoopWarning`) or, with ``sync_on_event_loop="error"``, raises.
  It never waits on the loop for a pooled connection or SQLite's write lock: whoever holds
  them needs this loop to give them back, so such a wait could only end in a timeout.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import sys
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.util.concurrency import in_greenlet

import atom_async_db
from atom_async_db import (
    ConfigurationError,
    Database,
    SyncSessionContextError,
    SyncSessionOnEventLoopError,
    SyncSessionOnEventLoopWarning,
    TestIsolationError,
)
from atom_async_db._compat import (
    FairPool,
    TrackedSession,
    backing_class,
    composed_class,
    create_sync_engine_for,
    mask_url,
    merge_session_keywords,
    refuse_a_second_sqlite_connection,
    with_keywords,
)

__all__ = ["LegacySession", "LegacySessionFactory", "SessionLocal"]

logger = logging.getLogger("atom_async_db")

# Frames of these files are skipped when a warning points at the caller's line (SQLAlchemy
# also runs code it generates, named "<sqlalchemy generated ...>").
_INTERNAL_FILES = (
    "<sqlalchemy",
    *(
        os.path.dirname(module.__file__) + os.sep
        for module in (sqlalchemy, atom_async_db, sys.modules[__name__.rpartition(".")[0]])
        if module.__file__
    ),
)


class _Where(enum.Enum):
    BRIDGED = "bridged"
    THREAD = "thread"
    LOOP = "loop"


def _where() -> _Where:
    if in_greenlet():
        return _Where.BRIDGED
    if asyncio._get_running_loop() is not None:
        return _Where.LOOP
    return _Where.THREAD


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning issued by our caller point at user code."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL_FILES):
        frame = frame.f_back
        level += 1
    return level


def _on_loop_thread(database: Database) -> None:
    message = (
        "a sync database session ran a statement on the event loop's thread, which stops "
        "every other task until the database answers; run this code with "
        "`await sync_compat.run_legacy(fn, ...)` or use the async API "
        "(get_async_db / get_async_db_session)"
    )
    if database.settings.sync_on_event_loop == "error":
        raise SyncSessionOnEventLoopError(
            f"{message} (sync_on_event_loop='error' forbids it; 'warn' allows it)"
        )
    warnings.warn(message, SyncSessionOnEventLoopWarning, stacklevel=caller_stacklevel())


class LegacySession(TrackedSession):
    """The sync ``Session`` of the legacy API (``get_db``, ``get_db_session``, ``SessionLocal``).

    A plain SQLAlchemy ``Session`` whose connection depends on where it runs (see the module
    docstring). Pass ``bind=`` to pin it to an engine or connection of your own instead.

    Args:
        database: the database to use; ``None`` means the default one
            (:func:`atom_async_db.get_database`), looked up at the first statement.

    Raises:
        Nothing when it is made; its statements raise what :meth:`get_bind` documents.
    """

    def __init__(self, bind: Any = None, *, database: Database | None = None, **kw: Any) -> None:
        super().__init__(bind=bind, **kw)
        self._atom_database = database
        self._atom_engine: Engine | None = None  # chosen for the current transaction

    def get_bind(self, mapper: Any = None, **kw: Any) -> Engine | Connection:
        """The connection or engine this session's next statement runs on.

        SQLAlchemy's own lookup when the session was given a ``bind`` or ``binds``;
        otherwise the test transaction if one is open, else the running loop's async
        engine (under :func:`run_legacy`) or the database's sync engine.

        Raises:
            TestIsolationError: a test transaction is open and this session cannot join it
                from where it runs.
            SyncSessionOnEventLoopError: it runs on the event loop's thread and the
                ``sync_on_event_loop`` setting is ``"error"``.
            SyncSessionContextError: a transaction begun under :func:`run_legacy` is used
                outside it.
            NoEventLoopError: under :func:`run_legacy` with no running loop.
            SessionNestingError: under :func:`run_legacy` on SQLite, the task holds an open
                session of this database in a transaction, whose write lock this one
                would wait for.
        """
        if self.bind is not None or kw.get("bind") is not None or self.binds:
            return super().get_bind(mapper, **kw)
        database = self._atom_database
        if database is None:
            database = self._atom_database = atom_async_db.get_database()
        where = _where()
        pinned = database._scopes.test_transaction
        if pinned is not None:  # a test's rolled-back transaction: join it (atom_async_db.testing)
            async_connection = pinned.connection if where is _Where.BRIDGED else None
            connection = (
                async_connection.sync_connection if async_connection else pinned.sync_connection
            )
            if connection is None:
                raise TestIsolationError(
                    "a legacy sync session ran outside run_legacy (a worker thread or the "
                    "loop's thread) during an async test's rolled-back transaction "
                    "(async_db_session); it cannot join it and would write to the test "
                    "database for real. Call that code through sync_compat.run_legacy, or "
                    "test it with the db_session fixture."
                )
            self.join_transaction_mode = "create_savepoint"
            return connection
        if where is _Where.LOOP:
            _on_loop_thread(database)
        engine = self._atom_engine
        if engine is None or not self.in_transaction():
            if where is _Where.BRIDGED:
                refuse_a_second_sqlite_connection(database._scopes, "SessionLocal()")
            engine = self._atom_engine = _engine_for(database, where)
        elif where is _Where.BRIDGED and not engine.dialect.is_async:
            _on_loop_thread(database)  # begun in a thread, now the sync driver blocks the loop
        elif where is not _Where.BRIDGED and engine.dialect.is_async:
            raise SyncSessionContextError(
                "this session's transaction began inside run_legacy(), on the event loop's "
                "async pool, and cannot continue outside it; commit, roll back or close the "
                "session inside the legacy function, or open one session per context"
            )
        return engine


@event.listens_for(LegacySession, "after_transaction_end")
def _forget_engine(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None and isinstance(session, LegacySession):
        session._atom_engine = None


class LegacySessionFactory(sessionmaker[LegacySession]):
    """The type of :data:`SessionLocal`: SQLAlchemy's ``sessionmaker`` whose sessions are
    :class:`LegacySession` composed with the application's own session class.

    That class is the database's ``session_class`` setting (SQLModel's ``Session``, say),
    or one given here with ``SessionLocal.configure(class_=...)``, which wins; the other
    keywords of ``configure()`` and of each call are a ``sessionmaker``'s.

    Raises:
        Nothing when it is made; calling it builds the default database when it names
        none, and raises what :func:`atom_async_db.get_database` raises.
    """

    def __init__(self) -> None:
        super().__init__(class_=LegacySession, expire_on_commit=False)
        self._application: type[Session] | None = None
        self._configured = False

    def configure(self, **new_kw: Any) -> None:
        """Change the keywords new sessions get, as ``sessionmaker.configure``; ``class_``
        names the application's own session class.

        Raises:
            ConfigurationError: ``class_`` is not a subclass of ``sqlalchemy.orm.Session``.
        """
        if "class_" in new_kw:
            application = new_kw.pop("class_")
            if application is not None and not (
                isinstance(application, type) and issubclass(application, Session)
            ):
                raise ConfigurationError(
                    "SessionLocal.configure(class_=...) takes a subclass of "
                    f"sqlalchemy.orm.Session (such as sqlmodel.Session), got {application!r}"
                )
            self._application = application
        super().configure(**new_kw)
        self._configured = True

    def _bridged_maker(self, database: Database) -> Callable[..., AsyncSession] | None:
        """How ``get_db_session()`` and ``get_db`` make their sessions under ``run_legacy``
        (async sessions of the database, whose sync side the legacy code uses) when
        :meth:`configure` was called: with its keywords and class, as everywhere else;
        None when it was not (the database's own maker).
        """
        if not self._configured:
            return None
        mine = {key: value for key, value in self.kw.items() if key != "bind"}
        if self._application is not None:
            mine["sync_session_class"] = backing_class(self._application)
        return with_keywords(database._scopes.make_session, mine)

    def _class_for(self, database: Database | None) -> type[LegacySession]:
        """The class of the sessions made for ``database`` (None: the default one)."""
        application = self._application
        if application is None:
            application = (database or atom_async_db.get_database()).settings.session_class
        return composed_class(self.class_, application, "Legacy")

    def __call__(self, **local_kw: Any) -> LegacySession:
        """A new session, as ``sessionmaker()``; ``database=`` names its database.

        Raises:
            What :func:`atom_async_db.get_database` raises, when it names no database.
        """
        keywords = merge_session_keywords(self.kw, local_kw)
        return self._class_for(keywords.get("database"))(**keywords)


SessionLocal = LegacySessionFactory()
"""The seed's session factory, on the default database (``expire_on_commit=False``, as in
the seed): ``SessionLocal()`` is a sync ``Session``. Prefer ``get_db_session()``, which
commits, rolls back and closes it for you (``atom-db lint`` reports ``SessionLocal()``
outside tests: ATOM102)."""

_outside_pool: weakref.WeakKeyDictionary[Database, Engine] = weakref.WeakKeyDictionary()


def _engine_for(database: Database, where: _Where) -> Engine:
    if where is _Where.BRIDGED:
        return database.engine.sync_engine
    engine = database.sync_engine
    if where is _Where.LOOP and _exhausted(engine):
        return _outside_pool_engine(database)
    return engine


def _exhausted(engine: Engine) -> bool:
    pool = engine.pool
    return isinstance(pool, FairPool) and pool.exhausted()


def _outside_pool_engine(database: Database) -> Engine:
    """An unpooled twin of the sync engine, for statements on the loop's thread while the
    sync pool is exhausted: each holder of a pooled connection gives it back only when this
    loop runs again, so waiting for one would freeze the loop until ``pool_timeout``.
    """
    engine = _outside_pool.get(database)
    if engine is None:
        engine = _outside_pool[database] = create_sync_engine_for(
            database.settings, poolclass=NullPool
        )
        logger.warning(
            "the sync pool of %s was exhausted when a sync session ran on the event loop's "
            "thread; such sessions now get a connection outside the pool (closed after use) "
            "instead of freezing the loop until pool_timeout. Run that code with "
            "sync_compat.run_legacy(), or raise sync_pool_size.",
            mask_url(database.settings.sync_url),
        )
    return engine
