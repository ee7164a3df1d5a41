"""Leak detection (``_leaks``): a connection held past ``leak_threshold`` is reported once,
with the application's line that took it, and again when it comes back; sessions still
open at ``dispose()`` are reported with where they are."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from atom_async_db import Database
from atom_async_db.fastapi import AsyncDB
from sync_compat import get_db_session
from tests.helpers import APP_NAME, LogSeen, marker_line, watching_logs

BOTH = pytest.mark.parametrize("backend", ["sqlite_file", "postgres"], indirect=True)


def line_of(marker: str) -> int:
    return marker_line(__file__, marker)


@pytest.fixture
def leak_warning() -> Iterator[LogSeen]:
    yield from watching_logs(lambda record: record.levelno == logging.WARNING)


@BOTH
async def test_a_session_held_too_long_is_reported_with_the_line_that_took_it(
    backend_url: str, leak_warning: LogSeen
) -> None:
    database = Database(backend_url, application_name=APP_NAME, leak_threshold=0.2)
    try:
        async with database.get_async_db_session() as quick:
            await quick.execute(text("select 1"))
        async with database.get_async_db_session() as session:
            taken = time.time()
            await session.execute(text("select 1"))  # the leak
            await leak_warning.wait()
        [warning] = leak_warning.messages(logging.WARNING)  # the quick one is not reported
        [record] = [r for r in leak_warning.records if r.levelno == logging.WARNING]
        assert record.created - taken >= 0.2
        assert f'File "{__file__}", line {line_of("# the leak")}, in test_a_session' in warning
        assert "leak_threshold=0.2 s" in warning
        assert record.atom_db_taken_at.startswith(f"{__file__}:{line_of('# the leak')}")  # type: ignore[attr-defined]
        [back] = [m for m in leak_warning.messages(logging.INFO) if "came back" in m]
        assert f"{__file__}:{line_of('# the leak')}" in back
    finally:
        await database.dispose()


@BOTH
async def test_a_connection_held_shorter_than_the_threshold_is_not_reported(
    backend_url: str, leak_warning: LogSeen
) -> None:
    database = Database(backend_url, leak_threshold=0.3)
    try:
        async with database.engine.connect() as first:
            await first.execute(text("select 1"))
        # The timer set at the first checkout fires while the second is young: it is
        # reported at 0.3 s of its own age, not at the first one's deadline.
        taken = time.time()
        async with database.engine.connect() as connection:  # connect() leak
            await connection.execute(text("select 1"))
            await leak_warning.wait()
        [record] = [r for r in leak_warning.records if r.levelno == logging.WARNING]
        assert record.created - taken >= 0.3
        [warning] = leak_warning.messages(logging.WARNING)
        assert f"line {line_of('# connect() leak')}," in warning
    finally:
        await database.dispose()


@BOTH
async def test_a_thread_holding_a_legacy_session_is_reported_with_its_line(
    backend_url: str, leak_warning: LogSeen
) -> None:
    database = Database(backend_url, leak_threshold=0.2)

    def legacy() -> None:
        with get_db_session(database=database) as session:
            session.execute(text("select 1"))  # legacy leak
            leak_warning.event.wait(10)

    try:
        await asyncio.to_thread(legacy)
        [warning] = leak_warning.messages(logging.WARNING)
        assert f"line {line_of('# legacy leak')}, in legacy" in warning
    finally:
        database.dispose_sync_engine()
        await database.dispose()


def test_without_a_threshold_nothing_watches() -> None:
    database = Database("sqlite:///unused.db")
    assert database.settings.leak_threshold is None
    assert database.sync_engine.pool._leaks is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_dispose_reports_the_sessions_still_open_and_where(
    backend_url: str, leak_warning: LogSeen
) -> None:
    database = Database(backend_url, drain_timeout=0.1)
    opened = asyncio.Event()

    async def stuck() -> None:
        async with database.get_async_db_session() as session:
            await session.execute(text("select 1"))
            opened.set()
            await asyncio.Event().wait()  # still open at dispose

    task = asyncio.create_task(stuck(), name="stuck-worker")
    await opened.wait()
    await database.dispose()
    assert task.cancelled()
    [warning] = leak_warning.messages(logging.WARNING)
    assert "1 sessions were still open" in warning
    assert f"task 'stuck-worker', at {__file__}:{line_of('# still open at dispose')}" in warning


async def test_a_routes_leak_names_the_route_not_the_framework(
    make_default: Any, leak_warning: LogSeen
) -> None:
    await make_default(leak_threshold=0.1)
    app = FastAPI()

    @app.get("/slow")
    async def slow(db: AsyncDB) -> dict[str, int]:
        await db.execute(text("select 1"))  # the route takes it
        await asyncio.to_thread(leak_warning.event.wait, 10)
        return {}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/slow")).status_code == 200
    [warning] = leak_warning.messages(logging.WARNING)
    frames = [line for line in warning.splitlines() if line.startswith("  File ")]
    assert frames[0] == f'  File "{__file__}", line {line_of("# the route takes it")}, in slow'
    frameworks = ("/starlette/", "/fastapi/", "/anyio/")
    assert not [line for line in frames if any(name in line for name in frameworks)]
