"""``AsyncTransaction``: a request's transaction commits when the route returns, before the
response is sent, and rolls back when it raises; on a real uvicorn server, so "before the
response" is what a client can observe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import text

from atom_async_db import Database, get_async_db_session
from atom_async_db.fastapi import AsyncDB, AsyncTransaction
from tests.helpers import assert_no_leaks, serve

pytestmark = pytest.mark.parametrize("backend", ["postgres", "sqlite_file"], indirect=True)


class Refused(Exception):
    pass


async def make_tables(db: Database) -> None:
    async with db.engine.begin() as connection:
        for statement in (
            "drop table if exists tx_children",
            "drop table if exists tx_parents",
            "create table tx_parents (id integer primary key)",
            "create table tx_children (id integer primary key, parent integer references "
            "tx_parents (id) deferrable initially deferred)",
        ):
            await connection.execute(text(statement))


def build_app() -> FastAPI:
    app = FastAPI()

    @app.exception_handler(Refused)
    async def refused(_request: Request, error: Refused) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.post("/parents/{pid}", status_code=201)
    async def add_parent(pid: int, db: AsyncTransaction) -> dict[str, int]:
        await db.execute(text("insert into tx_parents values (:pid)"), {"pid": pid})
        return {"id": pid}

    @app.get("/parents/{pid}")
    async def get_parent(pid: int, db: AsyncTransaction) -> dict[str, int]:
        found = await db.scalar(text("select id from tx_parents where id = :p"), {"p": pid})
        if found is None:
            raise HTTPException(status_code=404)
        return {"id": found}

    @app.post("/orphans/{cid}", status_code=201)
    async def add_orphan(cid: int, db: AsyncTransaction) -> dict[str, int]:
        # The foreign key is deferred: it fails at COMMIT, after the route returned.
        await db.execute(text("insert into tx_children values (:c, 999)"), {"c": cid})
        return {"id": cid}

    @app.post("/then-404/{pid}")
    async def then_404(pid: int, db: AsyncTransaction) -> None:
        await db.execute(text("insert into tx_parents values (:pid)"), {"pid": pid})
        raise HTTPException(status_code=404)

    @app.post("/then-refused/{pid}")
    async def then_refused(pid: int, db: AsyncTransaction) -> None:
        await db.execute(text("insert into tx_parents values (:pid)"), {"pid": pid})
        raise Refused("mapped to 400 by a handler")

    @app.post("/later/{pid}", status_code=202)
    async def later(pid: int, tasks: BackgroundTasks) -> dict[str, int]:
        async def add() -> None:  # runs after the response: a session of its own
            async with get_async_db_session() as db:
                await db.execute(text("insert into tx_parents values (:pid)"), {"pid": pid})

        tasks.add_task(add)
        return {"id": pid}

    @app.post("/later-after-a-route-session/{pid}", status_code=202)
    async def later_after(pid: int, db: AsyncDB, tasks: BackgroundTasks) -> dict[str, int]:
        await db.execute(text("select 1"))

        async def add() -> None:  # must not join the route's session, which has ended
            async with get_async_db_session() as own:
                await own.execute(text("insert into tx_parents values (:pid)"), {"pid": pid})

        tasks.add_task(add)
        return {"id": pid}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def rows() -> AsyncIterator[bytes]:
            async with get_async_db_session() as db:  # the body's own session
                for (pid,) in await db.execute(text("select id from tx_parents order by id")):
                    yield f"{pid}\n".encode()

        return StreamingResponse(rows())

    return app


async def count(db: Database, table: str) -> int:
    async with db.get_async_db_session() as session:
        return int(await session.scalar(text(f"select count(*) from {table}")))


async def test_a_commit_that_fails_is_an_error_response_and_saves_nothing(db: Database) -> None:
    await make_tables(db)
    async with serve(build_app()) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/orphans/1")
    assert response.status_code == 500  # never the route's 201
    assert await count(db, "tx_children") == 0
    await assert_no_leaks(db)


async def test_the_commit_happens_before_the_response(db: Database) -> None:
    await make_tables(db)
    async with serve(build_app()) as url, httpx.AsyncClient(base_url=url) as http:
        for pid in range(200):  # every GET, on another connection, sees the POSTed row
            assert (await http.post(f"/parents/{pid}")).status_code == 201
            assert (await http.get(f"/parents/{pid}")).status_code == 200
    await assert_no_leaks(db)


async def test_exceptions_roll_back_handled_or_not(db: Database) -> None:
    await make_tables(db)
    async with serve(build_app()) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.post("/then-404/1")).status_code == 404
        assert (await http.post("/then-refused/2")).status_code == 400
    assert await count(db, "tx_parents") == 0
    await assert_no_leaks(db)


async def test_background_tasks_and_streams_use_sessions_of_their_own(db: Database) -> None:
    await make_tables(db)
    async with serve(build_app()) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.post("/later/7")).status_code == 202
        assert (await http.post("/parents/8")).status_code == 201
        assert (await http.post("/later-after-a-route-session/9")).status_code == 202
        body = await asyncio.wait_for(_stream_until(http, "9"), timeout=10)
        body = await asyncio.wait_for(_stream_until(http, "7"), timeout=10)
    assert body.split() == ["7", "8", "9"]
    await assert_no_leaks(db)


async def _stream_until(http: httpx.AsyncClient, pid: str) -> str:
    # The background task runs after its response; read the stream until its row shows.
    while True:
        body = (await http.get("/stream")).text
        if pid in body.split():
            return body
        await asyncio.sleep(0.01)
