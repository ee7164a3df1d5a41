"""The HTTP benchmark's application: the same routes on each stack compared, chosen by the
environment (``BENCH_STACK``, ``BENCH_URL``), served by uvicorn in its own process.
``BENCH_POOL=null`` gives the atom_async_db stacks SQLAlchemy's ``NullPool`` (the
scale-out benchmark's PgBouncer case; the other options come from ``ATOM_DB_*``).

- ``plain``: the FastAPI tutorial's hand-written dependency: ``async_sessionmaker`` with
  ``expire_on_commit=False`` on an engine with a pool of 20 + 30 (SQLAlchemy's defaults on
  SQLite), ``async with SessionLocal() as session: yield session``.
- ``asyncdb``: ``db: AsyncDB``; ``get_async_db``: ``Depends(get_async_db)``;
  ``transaction``: ``db: AsyncTransaction`` (the route does not commit);
  ``sync_def``: a ``def`` route on ``sync_compat.get_db``.

Routes: ``GET /items/{id}`` (a primary-key read; 404 when there is no such row) and
``POST /items/{id}`` (UPDATE ... RETURNING, then commit).
"""

# (No ``from __future__ import annotations``: FastAPI reads the routes' annotations, some
# of them local names.)
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import atom_async_db
from atom_async_db._settings import build_settings
from atom_async_db.fastapi import AsyncDB, AsyncTransaction, lifespan
from benchmarks._stacks import User
from sync_compat import get_db

STACK = os.environ.get("BENCH_STACK", "asyncdb")
URL = os.environ.get("BENCH_URL", "sqlite:///bench.db")
STACKS = ("plain", "asyncdb", "get_async_db", "transaction", "sync_def")


def _found(user: User | None) -> dict[str, int]:
    if user is None:
        raise HTTPException(404, "no such item")
    return {"id": user.id, "counter": user.counter}


def _increment(item_id: int) -> Any:
    return (
        update(User)
        .where(User.id == item_id)
        .values(counter=User.counter + 1)
        .returning(User.counter)
    )


def _async_routes(app: FastAPI, session_type: Any, commits: bool) -> None:
    @app.get("/items/{item_id}")
    async def read(item_id: int, db: session_type) -> dict[str, int]:  # type: ignore[valid-type]
        return _found(await db.get(User, item_id))

    @app.post("/items/{item_id}")
    async def write(item_id: int, db: session_type) -> dict[str, int]:  # type: ignore[valid-type]
        counter = (await db.execute(_increment(item_id))).scalar_one()
        if commits:
            await db.commit()
        return {"id": item_id, "counter": counter}


def build(stack: str, url: str) -> FastAPI:
    """The app of ``stack`` on the database of ``url``."""
    if stack == "plain":
        engine_url = build_settings(url).url
        sqlite = engine_url.get_backend_name() == "sqlite"
        pool = {} if sqlite else {"pool_size": 20, "max_overflow": 30}
        engine = create_async_engine(engine_url, **pool)
        session_local = async_sessionmaker(engine, expire_on_commit=False)

        async def get_session() -> AsyncIterator[AsyncSession]:
            async with session_local() as session:
                yield session

        async def dispose_engine(app: FastAPI) -> AsyncIterator[None]:
            yield
            await engine.dispose()

        app = FastAPI(lifespan=dispose_engine)
        _async_routes(app, Annotated[AsyncSession, Depends(get_session)], commits=True)
        return app
    pool_kind = os.environ.get("BENCH_POOL", "default")
    if pool_kind not in ("default", "null"):
        raise SystemExit(f"unknown BENCH_POOL {pool_kind!r}; choose default or null")
    options: dict[str, Any] = (
        {"engine_options": {"poolclass": NullPool}} if pool_kind == "null" else {}
    )
    atom_async_db.configure(url, **options)
    app = FastAPI(lifespan=lifespan)
    if stack == "asyncdb":
        _async_routes(app, AsyncDB, commits=True)
    elif stack == "get_async_db":
        _async_routes(
            app, Annotated[AsyncSession, Depends(atom_async_db.get_async_db)], commits=True
        )
    elif stack == "transaction":
        _async_routes(app, AsyncTransaction, commits=False)
    elif stack == "sync_def":
        SyncDB = Annotated[Session, Depends(get_db)]

        @app.get("/items/{item_id}")
        def read(item_id: int, db: SyncDB) -> dict[str, int]:
            return _found(db.get(User, item_id))

        @app.post("/items/{item_id}")
        def write(item_id: int, db: SyncDB) -> dict[str, int]:
            counter = db.execute(_increment(item_id)).scalar_one()
            db.commit()
            return {"id": item_id, "counter": counter}

    else:
        raise SystemExit(f"unknown stack {stack!r}; the stacks: {', '.join(STACKS)}")
    return app


app = build(STACK, URL)
