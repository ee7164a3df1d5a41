"""Test support: each test inside a transaction that is rolled back at its end.

While :func:`rollback_transaction` is open, every session of the database joins the
test's transaction through a SAVEPOINT. That covers ``get_async_db``,
``get_async_db_session()``, and the legacy ``sync_compat.get_db_session()`` and
``SessionLocal()`` inside ``run_legacy``. Code under test can ``commit()`` (it releases
its savepoint) and roll back (to its savepoint) as usual. The test sees everything it
wrote, and nothing survives the test. No dependency override is needed, so middleware,
services and background work are covered as well as routes.

The pytest plugin shipped with the package (``atom_async_db.pytest_plugin``) wraps these
helpers in fixtures; use them directly elsewhere::

    from atom_async_db.testing import client, rollback_transaction

    async def test_signup(app):
        async with rollback_transaction() as db, client(app) as http:
            response = await http.post("/users", json={"email": "ada@example.com"})
            assert response.status_code == 201
            assert await db.scalar(select(func.count(User.id))) == 1

Inside the test transaction, sessions of different tasks (or threads) take turns on the
test's one connection, and ``independent=True`` sessions join it too. Each kind of code
joins only its own kind of test transaction: legacy code in worker threads (``def``
routes, ``asyncio.to_thread``) joins :func:`rollback_transaction_sync`'s, async code joins
:func:`rollback_transaction`'s. Crossing raises :class:`TestIsolationError` rather than
writing to the test database for real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from ._database import Database
from ._default import get_database
from ._session import TestTransaction
from ._tracked import TEST_ROOT_SESSION, TrackedSession

if TYPE_CHECKING:
    import httpx

__all__ = ["client", "rollback_transaction", "rollback_transaction_sync"]


@asynccontextmanager
async def rollback_transaction(database: Database | None = None) -> AsyncIterator[AsyncSession]:
    """Run the block inside a transaction of ``database`` (default: the default database)
    that is rolled back when the block ends; yields a session inside it.

    Every session the code under test opens on this database meanwhile joins the same
    transaction (see the module docstring), so the yielded session sees their writes.

    Raises:
        RuntimeError: a test transaction is already open on this database.
        DatabaseDisposedError: the database's shutdown (``dispose()``) has begun.
        PoolTimeoutError: no connection became free within ``pool_timeout`` seconds.
        DatabaseUnavailableError: a new connection could not be opened (the server is down or
            unreachable).
    """
    database = database or get_database()
    _refuse_a_second(database)
    connection = await database.engine.connect()
    transaction = await connection.begin()
    database._scopes.test_transaction = TestTransaction(connection=connection)
    session = database._scopes.make_session(bind=connection, **TEST_ROOT_SESSION)
    try:
        yield session
    finally:
        database._scopes.test_transaction = None
        try:
            await session.close()
            await transaction.rollback()
        finally:
            await connection.close()


@contextmanager
def rollback_transaction_sync(
    database: Database | None = None, *, session_factory: Callable[..., Session] | None = None
) -> Iterator[Session]:
    """:func:`rollback_transaction` for sync tests (no event loop): a sync connection of
    the legacy layer's engine, joined by the legacy sessions of every thread meanwhile.

    ``session_factory`` builds the yielded session (the pytest plugin passes
    ``sync_compat.SessionLocal``); it receives ``bind=`` and ``join_transaction_mode=``.

    Raises:
        RuntimeError: a test transaction is already open on this database.
        DatabaseDisposedError: the database's shutdown (``dispose()``) has begun.
    """
    database = database or get_database()
    _refuse_a_second(database)
    connection = database.sync_engine.connect()
    transaction = connection.begin()
    database._scopes.test_transaction = TestTransaction(sync_connection=connection)
    factory: Callable[..., Session] = session_factory or TrackedSession
    session = factory(bind=connection, **_sync_session_options())
    try:
        yield session
    finally:
        database._scopes.test_transaction = None
        try:
            session.close()
            transaction.rollback()
        finally:
            connection.close()


def _refuse_a_second(database: Database) -> None:
    if database._scopes.test_transaction is not None:
        raise RuntimeError(
            "a test transaction is already open on this database: a test takes either "
            "async_db_session (async code) or db_session (sync legacy code), not both"
        )


def _sync_session_options() -> dict[str, Any]:
    return {**TEST_ROOT_SESSION, "expire_on_commit": False}


@asynccontextmanager
async def client(app: Any, *, base_url: str = "http://test") -> AsyncIterator[httpx.AsyncClient]:
    """An ``httpx.AsyncClient`` that calls ``app`` (any ASGI app, FastAPI's included) in
    process. Inside :func:`rollback_transaction` its requests join the test's transaction
    without any ``dependency_overrides``.

    Raises:
        ImportError: ``httpx`` is not installed (``pip install httpx``).
    """
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
        yield http
