"""The seed guide's FastAPI examples, async, against a real app through httpx."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

import atom_async_db
from atom_async_db import Database, get_async_db, get_async_db_session
from atom_async_db.fastapi import AsyncDB, lifespan
from tests.helpers import emails, run_python
from tests.models import User


class UserCreate(BaseModel):
    email: str


class UserService:
    """The seed's service layer, async: it opens its own session (the nesting rule joins
    it to the route's session when called from a route)."""

    async def create_user(self, email: str) -> User:
        async with get_async_db_session() as db:
            user = User(email=email)
            db.add(user)
            return user


def build_app() -> FastAPI:
    app = FastAPI(lifespan=lifespan)

    @app.get("/users/{user_id}")
    async def get_user(user_id: int, db: AsyncSession = Depends(get_async_db)) -> dict[str, object]:
        user = await db.get(User, user_id)
        if user is None:
            raise HTTPException(status_code=404, detail=f"User {user_id} not found")
        return {"id": user.id, "email": user.email}

    @app.post("/users", status_code=201)
    async def create_user(data: UserCreate, db: AsyncDB) -> dict[str, object]:
        user = User(email=data.email)
        db.add(user)
        await db.commit()  # explicit commit, as in the seed
        await db.refresh(user)
        return {"id": user.id, "email": user.email}

    @app.post("/users-then-404")
    async def add_then_fail(data: UserCreate, db: AsyncDB) -> None:
        db.add(User(email=data.email))
        await db.flush()
        raise HTTPException(status_code=404, detail="changed my mind")

    @app.post("/users-via-service", status_code=201)
    async def via_service(data: UserCreate, db: AsyncDB) -> dict[str, object]:
        user = await UserService().create_user(data.email)  # joins this request's transaction
        await db.commit()
        return {"id": user.id}

    @app.post("/users-crash")
    async def crash(data: UserCreate, db: AsyncDB) -> None:
        db.add(User(email=data.email))
        raise RuntimeError("bug in the route")

    return app


@pytest.fixture
async def client(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_create_then_get_user(client: httpx.AsyncClient) -> None:
    created = await client.post("/users", json={"email": "ada@example.com"})
    assert created.status_code == 201
    user_id = created.json()["id"]
    fetched = await client.get(f"/users/{user_id}")
    assert fetched.json() == {"id": user_id, "email": "ada@example.com"}
    assert (await client.get("/users/999999")).status_code == 404


async def test_http_exception_after_add_persists_nothing(
    client: httpx.AsyncClient, db: Database
) -> None:
    response = await client.post("/users-then-404", json={"email": "ghost@example.com"})
    assert response.status_code == 404
    assert await emails() == set()
    assert db.engine.pool.checkedout() == 0


async def test_unhandled_error_persists_nothing(client: httpx.AsyncClient) -> None:
    response = await client.post("/users-crash", json={"email": "crash@example.com"})
    assert response.status_code == 500
    assert await emails() == set()


async def test_service_called_from_a_route_joins_the_request_transaction(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/users-via-service", json={"email": "svc@example.com"})
    assert response.status_code == 201
    assert await emails() == {"svc@example.com"}


async def test_dependency_override_with_a_second_database(db: Database, tmp_path: object) -> None:
    # The seed's "Testing with Dependency Override", async: the route uses another database.
    testing = Database("sqlite://")
    async with testing.engine.begin() as connection:
        from tests.models import Base

        await connection.run_sync(Base.metadata.create_all)
    app = build_app()
    app.dependency_overrides[get_async_db] = testing.get_async_db
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/users", json={"email": "test@example.com"})
    assert response.status_code == 201
    async with testing.get_async_db_session() as session:
        assert (await session.execute(select(User.email))).scalars().all() == ["test@example.com"]
    assert await emails() == set()  # the default database was not touched
    await testing.dispose()


async def test_lifespan_disposes_the_default_database(db: Database) -> None:
    app = build_app()
    async with get_async_db_session() as session:
        await session.execute(select(1))
    async with lifespan(app):
        pass
    assert db._engines.engines() == []
    assert db.disposed


async def test_an_app_started_again_gets_its_database_back(db: Database) -> None:
    app = build_app()
    engine = db.sync_engine  # as a ported core/database.py keeps it, at import time
    for round_ in range(3):  # e.g. `with TestClient(app):` in several tests
        async with (
            lifespan(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test"
            ) as client,
        ):
            response = await client.post("/users", json={"email": f"{round_}@example.com"})
            assert response.status_code == 201
            with engine.connect() as connection:  # the kept engine works in every round
                assert connection.scalar(select(1)) == 1
        assert db.disposed  # (shut down by the lifespan, opened again by the next one)
    assert atom_async_db.get_database() is db
    again = Database(db.settings.url)
    async with again.get_async_db_session() as session:
        emails = set((await session.execute(select(User.email))).scalars())
    await again.dispose()
    assert emails == {"0@example.com", "1@example.com", "2@example.com"}


def test_importing_the_core_does_not_import_fastapi() -> None:
    output = run_python(
        "import sys, atom_async_db\n"
        "print(sorted(m for m in ('fastapi', 'starlette', 'pydantic') if m in sys.modules))"
    )
    assert output.strip() == "[]"
    assert "atom_async_db.fastapi" in sys.modules  # this module did import it
    assert atom_async_db.__all__  # and the core's surface is explicit
