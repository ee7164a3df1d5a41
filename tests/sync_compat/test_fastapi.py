"""The seed's routes and tests, and one app mixing sync, seed-style and async routes."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from atom_async_db import Database, SyncSessionOnEventLoopWarning, get_async_db
from sync_compat import get_db, run_legacy
from tests.helpers import emails, our_backends
from tests.models import User
from tests.sync_compat import seed_app
from tests.sync_compat.core import models as seed_models
from tests.sync_compat.core.database import SessionLocal, get_db_session
from tests.sync_compat.seed_app import app

MakeDefault = Callable[..., Awaitable[Database]]

# The seed's routes call pydantic's `.dict()`, deprecated in pydantic 2: their warning, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")

# ----------------------------------------------------------------------- the seed's own tests
# Its `async def` routes on `get_db` run on the event loop's thread: they work and warn.


@pytest.fixture
def db_session(db: Database) -> Iterator[Session]:
    """Provide test database session"""
    db = SessionLocal()
    try:
        yield db
    finally:
        db.rollback()
        db.close()


def test_create_user(db_session: Session) -> None:
    """Test user creation"""
    user = seed_models.User(email="test@example.com")
    db_session.add(user)
    db_session.commit()

    assert user.id is not None


def test_create_user_with_dependency_override(db: Database) -> None:
    TestingSessionLocal = SessionLocal

    def override_get_db() -> Iterator[Session]:
        """Use test database instead of real database"""
        try:
            db = TestingSessionLocal()
            yield db
        finally:
            db.close()

    client = TestClient(app)
    app.dependency_overrides[get_db] = override_get_db
    try:
        with pytest.warns(SyncSessionOnEventLoopWarning):
            response = client.post("/users", json={"email": "test@example.com"})
        assert response.status_code == 200
    finally:
        app.dependency_overrides.clear()


def test_api_create_user(db: Database) -> None:
    """Test API endpoint"""
    client = TestClient(app)
    with pytest.warns(SyncSessionOnEventLoopWarning):
        response = client.post("/users", json={"email": "test@example.com"})
    assert response.status_code == 200
    assert response.json()["success"] is True


async def test_seed_routes_read_and_write(db: Database) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with pytest.warns(SyncSessionOnEventLoopWarning) as caught:
            created = await client.post("/users", json={"email": "ada@example.com"})
            user_id = created.json()["data"]["id"]
            found = await client.get(f"/users/{user_id}")
            missing = await client.get("/users/nobody")
    assert {warning.filename for warning in caught} == {seed_app.__file__}
    assert created.json()["message"] == "User created successfully"
    assert found.json()["data"]["email"] == "ada@example.com"
    assert (missing.status_code, missing.json()) == (404, {"detail": "User nobody not found"})


# ----------------------------------------------------------------------- one app, three kinds


def mixed_app() -> FastAPI:
    mixed = FastAPI()

    @mixed.post("/sync/{email}")
    def sync_route(email: str, db: Session = Depends(get_db)) -> dict[str, int]:
        user = User(email=email)
        db.add(user)
        db.commit()
        return {"id": user.id}

    @mixed.post("/seed-style/{email}")
    async def seed_style_route(email: str, db: Session = Depends(get_db)) -> dict[str, int]:
        user = User(email=email)
        db.add(user)
        db.commit()
        return {"id": user.id}

    @mixed.post("/async/{email}")
    async def async_route(email: str, db: AsyncSession = Depends(get_async_db)) -> dict[str, int]:
        user = User(email=email)
        db.add(user)
        await db.flush()
        await db.execute(text("select 1"))  # one more round trip inside the transaction
        await db.commit()
        return {"id": user.id}

    @mixed.post("/legacy-service/{email}")
    async def legacy_service_route(email: str) -> dict[str, int]:
        def service() -> int:
            with get_db_session() as db:
                user = User(email=email)
                db.add(user)
                db.flush()
                return user.id

        return {"id": await run_legacy(service)}

    return mixed


# Not on an in-memory database: it serves one event loop, and `def` routes run in threads
# (those get a clear error instead, see test_contexts).
@pytest.mark.many_connections
@pytest.mark.parametrize("backend", ["sqlite_file", "postgres"], indirect=True)
async def test_mixed_app_under_100_concurrent_requests(
    make_default: MakeDefault, backend: str
) -> None:
    kinds = ["sync", "async", "legacy-service", "seed-style"]
    if backend == "postgres":
        database = await make_default(pool_size=5, max_overflow=0, pool_timeout=10)
    else:
        # SQLite has one writer at a time, and a seed-style route cannot wait for the lock on
        # the loop's thread (test_contexts); it fails at once, so it sits this one out.
        database = await make_default()
        kinds.remove("seed-style")
    transport = httpx.ASGITransport(app=mixed_app())
    peak = 0
    done = asyncio.Event()

    async def watch_server() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, len(await our_backends(database.url)))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch_server()) if backend == "postgres" else None
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            responses = await asyncio.gather(
                *(client.post(f"/{kinds[i % len(kinds)]}/u{i}@example.com") for i in range(100))
            )
    done.set()
    if watcher is not None:
        await watcher
    assert [response.status_code for response in responses] == [200] * 100
    assert len(await emails()) == 100
    assert {warning.category for warning in caught} <= {SyncSessionOnEventLoopWarning}
    assert ("seed-style" in kinds) == bool(caught)  # only the seed-style route blocks the loop
    if backend == "postgres":
        # The async pool (5) and the sync pool (5), plus a connection outside the pool for
        # each seed-style request that found the sync pool exhausted (never more than 25).
        assert peak <= 5 + 5 + 25


# Not on an in-memory database: concurrent writers from threads get an error there.
@pytest.mark.many_connections
@pytest.mark.parametrize("backend", ["sqlite_file", "postgres"], indirect=True)
async def test_def_route_calling_a_service_under_100_concurrent_requests(
    make_default: MakeDefault, backend: str
) -> None:
    # The seed's architecture: the route reads through get_db, the service it calls opens
    # get_db_session() and commits on its own. That is two connections per request, as in
    # the seed; on PostgreSQL the README's sizing for it (twice FastAPI's 40 threads), on
    # SQLite the defaults (no pool limit: reads take no lock, the write lock queues writers).
    if backend == "postgres":
        await make_default(sync_pool_size=40, sync_max_overflow=40)
    else:
        await make_default()
    app = FastAPI()

    def create_user(email: str) -> None:
        with get_db_session() as db:
            db.add(User(email=email))

    # No return annotation, as in the seed: a response model on a `def` route is validated
    # in the threadpool while get_db still holds its connection, which can deadlock a full
    # pool (FastAPI #12066; the README's remedy is Depends(get_db, scope="function")).
    @app.post("/users/{email}")
    def route(email: str, db: Session = Depends(get_db)):  # type: ignore[no-untyped-def]
        before = db.scalar(select(func.count(User.id))) or 0
        create_user(email)  # committed by the service itself, as in the seed
        return {"before": before}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        responses = await asyncio.gather(
            *(client.post(f"/users/s{i}@example.com") for i in range(100))
        )
    assert [response.status_code for response in responses] == [200] * 100
    assert len(await emails()) == 100
