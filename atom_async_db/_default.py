"""The process-wide default database and the module-level API that uses it."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession
from typing_extensions import Unpack

from ._database import Database
from ._options import SessionOptionArgs
from ._session import SessionScope

__all__ = [
    "configure",
    "dispose",
    "get_async_db",
    "get_async_db_session",
    "get_async_db_transaction",
    "get_database",
    "transaction_dependency",
]

_default: Database | None = None
_lock = threading.Lock()


def configure(
    url: str | URL | None = None,
    *,
    engine_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Database:
    """Set the process-wide default database and return it.

    Call it once at start-up, before the first session. Without it, the default is
    built on first use from the environment (``DATABASE_URL``, else the embedded SQLite
    file ``./atom.db``). Keywords take precedence over environment variables::

        import atom_async_db

        atom_async_db.configure("postgresql://app@db/atom", pool_size=10)

    Configuring again replaces the default; ``await dispose()`` the old one first if it
    has open connections. Takes the same arguments as :class:`Database`.

    Raises:
        ConfigurationError: the URL or an option is invalid (the message says which).
    """
    global _default
    database = Database(url, engine_options=engine_options, **options)
    with _lock:
        _default = database
    return database


def current_default() -> Database | None:
    """The default database if one was built or configured, without building one."""
    return _default


def replace_default(database: Database | None) -> Database | None:
    """Make ``database`` the default (None: build it from the environment on next use);
    returns the one it replaces (the pytest plugin swaps its test database in and out).
    """
    global _default
    with _lock:
        previous, _default = _default, database
    return previous


def get_database() -> Database:
    """The default :class:`Database`, built from the environment on first use.

    Raises:
        ConfigurationError: ``DATABASE_URL`` or an ``ATOM_DB_*`` variable is invalid (the
            message names it).
        DriverNotInstalledError: the URL's driver is not installed.
    """
    global _default
    database = _default
    if database is None:
        with _lock:
            if _default is None:
                _default = Database()
            database = _default
    return database


def get_async_db_session(
    *,
    independent: bool = False,
    commit: bool = True,
    replica: bool = False,
    **options: Unpack[SessionOptionArgs],
) -> AbstractAsyncContextManager[AsyncSession]:
    """Open a session for services, workers and scripts: ``async with`` it.

    Commits when the block exits cleanly, rolls back when it raises (the exception
    propagates unchanged, ``CancelledError`` included) and always returns the connection
    to the pool. An explicit ``await db.commit()`` inside is allowed. Objects stay
    readable after the block (``expire_on_commit=False``)::

        async with get_async_db_session() as db:
            user = User(email="ada@example.com")
            db.add(user)
        print(user.id)  # committed, still readable

    Nesting: opened while the same task already holds a session of this database, it
    joins that session's transaction through a SAVEPOINT (no second connection); its
    work is committed by the outermost block. ``independent=True`` takes a connection
    of its own and commits on its own instead.

    Options of this unit of work, set on its own transaction and gone when its connection
    returns to the pool (PostgreSQL; on SQLite, whose transactions here are always
    serializable, only ``isolation_level="SERIALIZABLE"`` is accepted):
    ``isolation_level`` (``"SERIALIZABLE"``, ``"REPEATABLE READ"``, ...), ``read_only``,
    ``statement_timeout`` and ``lock_timeout`` (seconds)::

        async with get_async_db_session(isolation_level="SERIALIZABLE") as db:
            ...

    A block that would join may ask only for options its outer transaction already has.

    ``commit=False`` leaves committing to the caller, with :func:`get_async_db`'s
    semantics: what is not committed when the block ends is rolled back (with an
    :class:`UncommittedChangesWarning` when it ends cleanly), and the session is always
    closed. Use it in scripts and test fixtures that call ``await db.commit()`` themselves
    and may end without committing (a test that expects an ``IntegrityError``); use the
    default where the block is the unit of work::

        async with get_async_db_session(commit=False) as db:
            db.add(User(email="ada@example.com"))
            await db.commit()

    ``replica=True`` marks the block as read-only work that a read replica may serve
    (``replica_urls``): it goes to a replica that is up and not behind by more than
    ``max_replica_lag``, unless this task has written to the primary before (it then reads
    its own writes there) or is inside a session of the primary (it joins it). Where it
    lands on the primary, its transaction is read-only, as on a replica; without replicas
    it always lands there (on SQLite it is a session like any other)::

        async with get_async_db_session(replica=True) as db:
            total = await db.scalar(select(func.count()).select_from(Order))

    Raises:
        ConfigurationError: an option is invalid, or not available on SQLite, or
            ``replica=True`` comes with ``independent=True``.
        SessionNestingError: the block would join an outer transaction that lacks its
            options, or is ``independent=True`` on SQLite while the outer block holds a
            transaction.
        DatabaseDisposedError: the database's shutdown (``dispose()``) has begun.
        PoolTimeoutError: no connection became free within ``pool_timeout`` seconds.
        DatabaseUnavailableError: a new connection could not be opened (the server is down or
            unreachable).
        CommitOutcomeUnknownError: the connection was lost while COMMIT was in flight: the
            work may or may not be saved.
    """
    return get_database().get_async_db_session(
        independent=independent, commit=commit, replica=replica, **options
    )


async def get_async_db() -> AsyncIterator[AsyncSession]:
    """FastAPI dependency yielding a request-scoped ``AsyncSession``.

    Like the seed's ``get_db``: it never commits on its own (the route calls
    ``await db.commit()``), rolls back what is uncommitted and always closes the
    session, also when the route raises (``HTTPException`` included) or the request is
    cancelled. A clean request that leaves changes uncommitted gets an
    :class:`UncommittedChangesWarning`::

        from fastapi import Depends
        from sqlalchemy.ext.asyncio import AsyncSession

        @app.post("/users")
        async def create_user(data: UserIn, db: AsyncSession = Depends(get_async_db)):
            user = User(**data.model_dump())
            db.add(user)
            await db.commit()
            return user

    In tests, :mod:`atom_async_db.testing` (and the pytest plugin's ``async_db_session``)
    makes it join the test's rolled-back transaction; no override is needed.

    Raises:
        DatabaseDisposedError: the database's shutdown (``dispose()``) has begun.
        PoolTimeoutError: no connection became free within ``pool_timeout`` seconds.
        DatabaseUnavailableError: a new connection could not be opened (the server is down or
            unreachable).
    """
    async with SessionScope(get_database()._scopes, commit=False) as session:
        yield session


async def get_async_db_replica() -> AsyncIterator[AsyncSession]:
    """FastAPI dependency for read-only routes: :func:`get_async_db` on a read replica.

    The session goes where ``get_async_db_session(replica=True)`` would (a usable replica,
    else the primary, read-only) and, like :func:`get_async_db`, never commits::

        @app.get("/reports/daily")
        async def daily(db: AsyncSession = Depends(get_async_db_replica)):
            return (await db.execute(select(Order.day, func.sum(Order.total)))).all()

    (``atom_async_db.fastapi.AsyncReplicaDB`` is this, ended when the route returns.)

    Raises:
        What :func:`get_async_db` raises.
    """
    async with get_database().get_async_db_session(replica=True, commit=False) as session:
        yield session


async def get_async_db_transaction() -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: a request-scoped session whose transaction commits when the route
    returns and rolls back when it raises (``HTTPException`` and exceptions a handler maps
    to a response included).

    Declare it with ``scope="function"`` (FastAPI 0.121 and later), so that the commit
    happens after the route returns but **before the response is sent**: a commit that
    fails (a deferred foreign key, a serialization failure) becomes an error response,
    never a 2xx for data that was not saved. ``atom_async_db.fastapi.AsyncTransaction``
    is that declaration::

        from atom_async_db.fastapi import AsyncTransaction

        @app.post("/orders", status_code=201)
        async def create_order(data: OrderIn, db: AsyncTransaction):
            db.add(Order(**data.model_dump()))
            # no commit here: it happens when the route returns, before the response

    Without ``scope="function"``, FastAPI 0.118+ runs the commit after the response was
    sent. Streaming bodies and ``BackgroundTasks`` run after the session ended: open
    ``get_async_db_session()`` inside them.

    Raises:
        What :func:`get_async_db` raises, and
        CommitOutcomeUnknownError: the connection was lost while COMMIT was in flight: the
            work may or may not be saved.
    """
    async with SessionScope(get_database()._scopes, commit=True) as session:
        yield session


def transaction_dependency(
    **options: Unpack[SessionOptionArgs],
) -> Callable[[], AsyncIterator[AsyncSession]]:
    """A :func:`get_async_db_transaction` with options for its transaction.

    The options are :func:`get_async_db_session`'s; declare it with ``scope="function"``::

        ReportDB = Annotated[
            AsyncSession,
            Depends(transaction_dependency(read_only=True, statement_timeout=5), scope="function"),
        ]

    Raises:
        ConfigurationError: an option is invalid, or not available on SQLite (at the first
            request).
        What :func:`get_async_db_transaction` raises.
    """

    async def transaction_with_options() -> AsyncIterator[AsyncSession]:
        async with get_async_db_session(**options) as session:
            yield session

    return transaction_with_options


async def dispose() -> None:
    """Shut the default database down: drain its sessions, close its connections
    (:meth:`Database.dispose`). Does nothing if no default was built yet.

    Sessions opened afterwards raise :class:`~atom_async_db.DatabaseDisposedError`; call
    :func:`configure` to start again.

    Raises:
        Nothing of its own (see :meth:`Database.dispose`).
    """
    if _default is not None:
        await _default.dispose()


def restart_if_disposed() -> None:
    """Open a disposed default database again, in place: an application starting again
    in the same process (its lifespan's start-up, in tests).
    """
    with _lock:
        if _default is not None and _default.disposed:
            _default._reopen()
