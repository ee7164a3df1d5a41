"""Health probes (``health_router``: ``/livez``, ``/readyz``) and the lifespan's start-up
check (``lifespan(check=True)``), on real databases; the outage and the failed start-up
on a real uvicorn server."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

import atom_async_db
from atom_async_db import Database, DatabaseUnavailableError
from atom_async_db import _default as default_module
from atom_async_db.fastapi import AsyncDB, health_router, lifespan
from sync_compat import get_db_session
from tests.fixtures.cluster import ThrowawayCluster
from tests.helpers import APP_NAME, assert_no_error_logs, assert_no_leaks, serve

BACKENDS = pytest.mark.parametrize("backend", ["sqlite_file", "postgres"], indirect=True)
SENTINEL = "Sentinel-Pw-7d3b"  # a password that must never be shown
NO_STORE = "no-store"


@asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port bound but not listening: connections to it are refused, and no
    other process can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@contextmanager
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Let the other tasks run until ``condition()`` holds (a pool has no event for it);
    fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0)


@pytest.fixture
def no_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """No default database: the test configures its own; the previous one is put back after."""
    monkeypatch.setattr(default_module, "_default", None)


# --------------------------------------------------------------------------- happy paths


@BACKENDS
async def test_livez_and_readyz_answer_200(db: Database) -> None:
    app = FastAPI(lifespan=lifespan(check=True))  # the start-up check passes too
    app.include_router(health_router())
    async with app.router.lifespan_context(app), client_for(app) as client:
        before = db.pool_stats().checkouts
        live = await client.get("/livez")
        after_live = db.pool_stats().checkouts
        ready = await client.get("/readyz")
        after_ready = db.pool_stats().checkouts
        schema_paths = set(app.openapi()["paths"])
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert after_live == before  # liveness never touches the database
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body.keys() == {"status", "database", "round_trip_ms"}
    assert (body["status"], body["database"]) == ("ok", "ok")
    assert isinstance(body["round_trip_ms"], float) and 0 < body["round_trip_ms"] < 2000
    assert after_ready == after_live + 1  # one round trip on one pooled connection
    assert live.headers["cache-control"] == ready.headers["cache-control"] == NO_STORE
    assert "/livez" not in schema_paths and "/readyz" not in schema_paths
    assert db.disposed  # the lifespan still disposes it at shutdown


async def test_an_explicit_database_under_a_prefix(tmp_path: Path, no_default: None) -> None:
    database = Database(f"sqlite:///{tmp_path / 'health.db'}")
    app = FastAPI()
    app.include_router(health_router(database, prefix="/health"))
    async with client_for(app) as client:
        ready = await client.get("/health/readyz")
        live = await client.get("/health/livez")
        unprefixed = await client.get("/readyz")
    assert (ready.status_code, ready.json()["database"]) == (200, "ok")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert unprefixed.status_code == 404
    assert database.pool_stats().checkouts == 1
    assert default_module._default is None  # the default database was never built
    await assert_no_leaks(database)
    await database.dispose()


async def test_readyz_follows_the_default_database_configured_later(
    tmp_path: Path, no_default: None
) -> None:
    app = FastAPI()
    app.include_router(health_router(timeout=5))  # built before any configure()
    with refused_port() as port:
        down = atom_async_db.configure(
            f"postgresql+asyncpg://app:{SENTINEL}@127.0.0.1:{port}/appdb", pool_timeout=5
        )
        async with client_for(app) as client:
            live = await client.get("/livez")
            unreachable = await client.get("/readyz")
            up = atom_async_db.configure(f"sqlite:///{tmp_path / 'later.db'}")
            ready = await client.get("/readyz")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert unreachable.status_code == 503
    body = unreachable.json()
    assert body.keys() == {"status", "database", "detail"}
    assert (body["status"], body["database"]) == ("unavailable", "unreachable")
    assert f"127.0.0.1:{port}" in body["detail"]
    assert SENTINEL not in unreachable.text
    assert unreachable.headers["cache-control"] == NO_STORE
    assert (ready.status_code, ready.json()["database"]) == (200, "ok")
    for database in (down, up):
        await database.dispose()


async def test_readyz_is_503_once_the_database_is_disposed(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'disposed.db'}")
    app = FastAPI()
    app.include_router(health_router(database))
    async with client_for(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        await database.dispose()  # shutting down: no new sessions, no pings
        disposed = await client.get("/readyz")
    assert disposed.status_code == 503
    assert disposed.json()["status"] == "unavailable"
    assert disposed.json()["database"] == "disposed"


# --------------------------------------------------------------------------- saturation


@BACKENDS
async def test_readyz_is_503_while_callers_wait_for_a_connection(
    make_default: Callable[..., Any],
) -> None:
    db: Database = await make_default(pool_size=1, max_overflow=0)

    def legacy() -> None:  # the sync pool, whose figures are not the async pool's
        with get_db_session() as session:
            session.execute(text("select 1"))

    await asyncio.to_thread(legacy)
    app = FastAPI()
    app.include_router(health_router())
    app.include_router(health_router(prefix="/lenient", max_waiting=1, timeout=0.3))
    holding, release = asyncio.Event(), asyncio.Event()

    @app.get("/hold")
    async def hold(session: AsyncDB) -> dict[str, int]:
        await session.execute(text("select 1"))  # the pool's only connection
        holding.set()
        await release.wait()
        return {}

    @app.get("/query")
    async def query(session: AsyncDB) -> dict[str, int]:
        return {"one": int(await session.scalar(text("select 1")))}

    async with client_for(app) as client:
        held = asyncio.create_task(client.get("/hold"))
        try:
            async with asyncio.timeout(10):
                await holding.wait()
            queued = asyncio.create_task(client.get("/query"))
            await until(lambda: db.pool_stats().waiting == 1)
            checkouts = db.pool_stats().checkouts
            saturated = await client.get("/readyz")
            pinged = db.pool_stats().checkouts != checkouts
            lenient = await client.get("/lenient/readyz")  # 1 waiting is allowed: it pings
        finally:
            release.set()
        assert (await held).status_code == 200
        assert (await queued).json() == {"one": 1}
        ready_again = await client.get("/readyz")
    assert saturated.status_code == 503
    assert saturated.json() == {
        "status": "unavailable",
        "pool": "saturated",
        "name": db.settings.stats_name,
        "waiting": 1,
        "in_use": 1,
        "max": 1,
    }
    assert saturated.headers["cache-control"] == NO_STORE
    assert not pinged  # answered from the pool's figures, without queueing a ping
    # The lenient probe pinged, and its ping queued behind the held connection.
    assert lenient.status_code == 503
    assert lenient.json()["database"] == "unreachable"
    assert "did not answer a ping within 0.3 s" in lenient.json()["detail"]
    assert (ready_again.status_code, ready_again.json()["database"]) == (200, "ok")


# --------------------------------------------------------------------------- outage


@pytest.mark.cluster
async def test_readyz_follows_a_postgres_outage_on_a_running_server(
    pg_cluster: ThrowawayCluster, no_default: None, caplog: pytest.LogCaptureFixture
) -> None:
    url = pg_cluster.url.replace("postgres@", f"postgres:{SENTINEL}@")  # (trust: ignored)
    database = atom_async_db.configure(url, application_name=APP_NAME, pool_timeout=5)
    app = FastAPI(lifespan=lifespan(check=True))
    app.include_router(health_router())
    async with (
        app.router.lifespan_context(app),
        serve(app) as base_url,
        httpx.AsyncClient(base_url=base_url) as client,
    ):
        up = await client.get("/readyz")
        opened = database.pool_stats().connections_opened
        await asyncio.to_thread(pg_cluster.pg_ctl, "stop")
        try:
            down = await client.get("/readyz")
            live = await client.get("/livez")
        finally:
            await asyncio.to_thread(pg_cluster.pg_ctl, "start")
        back = await client.get("/readyz")
        reopened = database.pool_stats().connections_opened
        assert atom_async_db.get_database() is database  # the same app and database
    assert (up.status_code, up.json()["database"]) == (200, "ok")
    assert down.status_code == 503, down.text
    body = down.json()
    assert (body["status"], body["database"]) == ("unavailable", "unreachable")
    assert f"127.0.0.1:{pg_cluster.port}" in body["detail"]
    assert SENTINEL not in down.text
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert (back.status_code, back.json()["database"]) == (200, "ok"), back.text
    assert reopened > opened  # a new connection, to the restarted server
    assert database.disposed  # the lifespan ended with the server
    assert_no_error_logs(caplog)


# --------------------------------------------------------------------------- start-up check


APP_MODULE = """
from fastapi import FastAPI
from atom_async_db.fastapi import health_router, lifespan

app = FastAPI(lifespan=lifespan(check=True))
app.include_router(health_router())
"""


def test_an_unreachable_database_fails_uvicorns_startup(tmp_path: Path) -> None:
    (tmp_path / "health_app.py").write_text(APP_MODULE)
    with refused_port() as port:
        url = f"postgresql+asyncpg://app:{SENTINEL}@127.0.0.1:{port}/appdb"
        result = subprocess.run(
            [sys.executable, "-m", "uvicorn", "health_app:app", "--port", "0"],
            capture_output=True,
            text=True,
            timeout=30,  # (it exits at once: the port refuses connections)
            cwd=tmp_path,  # uvicorn imports the app from its working directory
            env={**os.environ, "DATABASE_URL": url},
        )
    output = result.stdout + result.stderr
    assert result.returncode == 3, output  # uvicorn's STARTUP_FAILURE
    assert "Application startup failed" in output
    assert "Uvicorn running" not in output  # it never served
    assert "DatabaseUnavailableError: the application cannot start" in output
    assert f"postgresql+asyncpg://app:***@127.0.0.1:{port}/appdb" in output
    assert SENTINEL not in output


async def test_check_timeout_bounds_the_startup_check(no_default: None) -> None:
    with silent_port() as port:
        database = atom_async_db.configure(
            f"postgresql+asyncpg://app:{SENTINEL}@127.0.0.1:{port}/appdb", pool_timeout=30
        )
        app = FastAPI(lifespan=lifespan(check=True, check_timeout=0.3))
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError) as raised:
            async with app.router.lifespan_context(app):
                pytest.fail("the app started without its database")
        took = time.monotonic() - started
    message = str(raised.value)
    assert "did not answer a ping within 0.3 s" in message
    assert f"postgresql+asyncpg://app:***@127.0.0.1:{port}/appdb" in message
    assert SENTINEL not in message
    assert took < 10  # check_timeout, not pool_timeout
    assert database.disposed  # the failed start-up shut it down
    assert database.pool_stats().in_use == 0


async def test_without_check_the_lifespan_never_connects(no_default: None) -> None:
    with refused_port() as port:
        database = atom_async_db.configure(f"postgresql+asyncpg://app@127.0.0.1:{port}/appdb")
        for chosen in (lifespan, lifespan(), lifespan(check=False)):
            app = FastAPI(lifespan=chosen)
            async with app.router.lifespan_context(app), client_for(app) as client:
                assert (await client.get("/openapi.json")).status_code == 200
            assert database.disposed
    assert database.pool_stats().checkouts == 0


# --------------------------------------------------------------------------- Database.ping


async def test_ping_is_one_round_trip_on_a_pooled_connection(postgres_url: str) -> None:
    from benchmarks._stacks import Counters

    database = Database(postgres_url, pool_size=1, max_overflow=0)
    try:
        first = await database.ping()  # a new connection: connecting is the round trip
        record = database.engine.pool._free[0][0]  # type: ignore[attr-defined]
        writes = Counters()  # the benchmark's: requests written to the connection's socket
        writes.count_round_trips(record.dbapi_connection.driver_connection)
        again = await database.ping()
        assert writes.round_trips == 1
        assert again > 0 and first > 0
        assert database.pool_stats().checkouts == 2
    finally:
        await database.dispose()


async def test_ping_on_sqlite_runs_a_statement(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'ping.db'}")
    statements: list[str] = []
    try:
        from sqlalchemy import event

        event.listen(
            database.engine.sync_engine,
            "before_cursor_execute",
            lambda _c, _cu, statement, *_: statements.append(statement),
        )
        assert await database.ping() > 0
        assert statements == ["SELECT 1"]
    finally:
        await database.dispose()


async def test_ping_of_a_busy_pool_says_so(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'ping.db'}", pool_timeout=30)
    try:
        async with database.engine.connect() as held:
            await held.execute(text("select 1"))
            with pytest.raises(DatabaseUnavailableError) as raised:
                await database.ping(timeout=0.1)
        assert "did not answer a ping within 0.1 s" in str(raised.value)
        assert "every connection of its pool was in use (1 of pool_size + max_overflow = 1, 0" in (
            str(raised.value)
        )
        assert await database.ping(timeout=1) > 0  # the held connection is free again
    finally:
        await database.dispose()


async def test_ping_of_a_stopped_server_fails_within_its_timeout() -> None:
    with refused_port() as port:
        database = Database(f"postgresql://app:{SENTINEL}@127.0.0.1:{port}/appdb")
        try:
            with pytest.raises(DatabaseUnavailableError) as raised:
                await database.ping(timeout=2)
        finally:
            await database.dispose()
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert SENTINEL not in str(raised.value)
