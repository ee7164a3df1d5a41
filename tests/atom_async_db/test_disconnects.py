"""FastAPI on a real uvicorn server on loopback: clients that abort mid-request or mid-stream,
and requests that end in 404, 500 or 422, leak no connection and cost none.
(In-process ASGI transports do not reproduce a client going away.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import event, text

from atom_async_db import Database, get_async_db_session
from atom_async_db.fastapi import AsyncDB
from tests.helpers import assert_no_leaks, serve

pytestmark = pytest.mark.parametrize("backend", ["postgres", "sqlite_file"], indirect=True)

SLOW = {
    "postgresql": "select pg_sleep(0.2)",
    "sqlite": "with recursive c(x) as (select 1 union all select x + 1 from c "
    "where x < 300000) select count(*) from c",
}


class Tracker:
    """Requests in flight on the server, and a signal per request once it is inside its
    statement (so that the client aborts at that point, not after a guessed delay)."""

    def __init__(self) -> None:
        self.inside: dict[str, asyncio.Event] = {}
        self.running = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @asynccontextmanager
    async def request(self, key: str) -> AsyncIterator[asyncio.Event]:
        self.running += 1
        self.idle.clear()
        try:
            yield self.inside.setdefault(key, asyncio.Event())
        finally:
            self.running -= 1
            if self.running == 0:
                self.idle.set()


def build_app(db: Database, tracker: Tracker, *, middleware: bool) -> FastAPI:
    app = FastAPI()
    slow = text(SLOW[db.settings.dialect])
    if middleware:

        @app.middleware("http")
        async def passthrough(request: Request, call_next: Callable[..., Awaitable[Any]]) -> Any:
            return await call_next(request)

    @app.get("/slow/{key}")
    async def slow_route(key: str, session: AsyncDB) -> dict[str, str]:
        async with tracker.request(key) as inside:
            inside.set()
            await session.execute(slow)
        return {"key": key}

    @app.get("/missing")
    async def missing(session: AsyncDB) -> None:
        await session.execute(text("select 1"))
        raise HTTPException(status_code=404)

    @app.get("/crash")
    async def crash(session: AsyncDB) -> None:
        await session.execute(text("select 1"))
        raise RuntimeError("a bug in the route")

    @app.get("/validated")
    async def validated(n: int, session: AsyncDB) -> dict[str, int]:
        return {"n": int(await session.scalar(text("select 1"))) * n}

    @app.get("/ok")
    async def ok(session: AsyncDB) -> dict[str, int]:
        return {"one": int(await session.scalar(text("select 1")))}

    @app.get("/stream/{key}")
    async def stream(key: str) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            async with tracker.request(key) as inside:
                for i in range(50):
                    # A streaming body outlives the request's session: it opens its own.
                    async with get_async_db_session() as session:
                        if i == 1:
                            inside.set()
                        await session.execute(slow)
                    yield b"chunk\n"

        return StreamingResponse(chunks())

    return app


@asynccontextmanager
async def discarded_connections(db: Database) -> AsyncIterator[list[int]]:
    """Counts connections the pool closes or invalidates meanwhile."""
    count = [0]
    pool = db.engine.sync_engine.pool

    def closed(*_: Any) -> None:
        count[0] += 1

    for name in ("close", "close_detached", "invalidate"):
        event.listen(pool, name, closed)
    try:
        yield count
    finally:
        for name in ("close", "close_detached", "invalidate"):
            event.remove(pool, name, closed)


async def abort_when_inside(
    client: httpx.AsyncClient, tracker: Tracker, route: str, key: str
) -> None:
    """GET ``/{route}/{key}`` and drop the connection once the server is inside it."""
    inside = tracker.inside.setdefault(key, asyncio.Event())

    async def read() -> None:
        async with client.stream("GET", f"/{route}/{key}") as response:
            async for _ in response.aiter_bytes():
                pass

    request = asyncio.create_task(read())
    await inside.wait()
    request.cancel()  # closes the socket: the client is gone
    with pytest.raises(asyncio.CancelledError):
        await request


async def all_ok(client: httpx.AsyncClient, count: int) -> None:
    responses = await asyncio.gather(*(client.get("/ok") for _ in range(count)))
    assert [r.status_code for r in responses] == [200] * count


@pytest.mark.parametrize("middleware", [False, True], ids=["plain", "base_http_middleware"])
async def test_clients_aborting_mid_request_leak_nothing(
    make_default: Callable[..., Awaitable[Database]], middleware: bool
) -> None:
    db = await make_default(pool_size=5, max_overflow=0)
    tracker = Tracker()
    app = build_app(db, tracker, middleware=middleware)
    limits = httpx.Limits(max_connections=200)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, limits=limits) as client:
        await all_ok(client, 5)
        async with discarded_connections(db) as discarded:
            await asyncio.gather(
                *(abort_when_inside(client, tracker, "slow", f"r{i}") for i in range(40))
            )
            await tracker.idle.wait()  # the server finished with every aborted request
            await all_ok(client, 100)
        assert discarded == [0]
    await assert_no_leaks(db)


async def test_clients_leaving_a_stream_cancel_it_and_leak_nothing(
    make_default: Callable[..., Awaitable[Database]],
) -> None:
    db = await make_default(pool_size=5, max_overflow=0)
    tracker = Tracker()
    app = build_app(db, tracker, middleware=False)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        await all_ok(client, 5)
        async with discarded_connections(db) as discarded:
            await asyncio.gather(
                *(abort_when_inside(client, tracker, "stream", f"s{i}") for i in range(20))
            )
            await tracker.idle.wait()  # every stream was cancelled (50 chunks would take 10 s)
            await all_ok(client, 100)
        assert discarded == [0]
    await assert_no_leaks(db)


async def test_error_paths_on_a_pool_of_two_leak_nothing(
    make_default: Callable[..., Awaitable[Database]],
) -> None:
    db = await make_default(pool_size=2, max_overflow=0, pool_timeout=10)
    tracker = Tracker()
    app = build_app(db, tracker, middleware=True)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:

        async def expect(path: str, status: int) -> None:
            assert (await client.get(path)).status_code == status

        work = [expect("/missing", 404) for _ in range(25)]
        work += [expect("/crash", 500) for _ in range(25)]
        work += [expect("/validated?n=abc", 422) for _ in range(25)]
        work += [abort_when_inside(client, tracker, "slow", f"e{i}") for i in range(25)]
        await asyncio.gather(*work)
        await tracker.idle.wait()
        await all_ok(client, 100)
    await assert_no_leaks(db)
