"""The statement watch (``_watch``): a transaction left idle between statements (a sleep, an
HTTP call) is reported where it resumed, a slow statement is not such a gap; slow
statements are logged with their SQL and never their parameters."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from atom_async_db import Database
from tests.helpers import APP_NAME, LogSeen, marker_line, serve, watching_logs

BOTH = pytest.mark.parametrize("backend", ["sqlite_file", "postgres"], indirect=True)


def line_of(marker: str) -> int:
    return marker_line(__file__, marker)


def slow_sql(database: Database) -> str:
    """A statement that takes about 0.3 s on either backend, with one parameter."""
    if database.settings.dialect == "postgresql":
        return "select pg_sleep(0.3), cast(:secret as text)"
    return (
        "with recursive c(x) as (select 1 union all select x + 1 from c where x < 1500000) "
        "select count(*), :secret from c"
    )


@pytest.fixture
def logs() -> Iterator[LogSeen]:
    yield from watching_logs(lambda record: False)


def warnings_of(logs: LogSeen, start: str) -> list[str]:
    return [m for m in logs.messages(logging.WARNING) if m.startswith(start)]


@pytest.fixture
async def database(backend_url: str) -> AsyncIterator[Database]:
    database = Database(
        backend_url,
        application_name=APP_NAME,
        idle_in_transaction_threshold=0.1,
        slow_statement_threshold=0.2,
    )
    yield database
    await database.dispose()


@BOTH
async def test_a_sleep_between_two_statements_is_reported_where_it_resumed(
    database: Database, logs: LogSeen
) -> None:
    async with database.get_async_db_session() as session:
        await session.execute(text("select 1"))
        await asyncio.sleep(0.15)
        await session.execute(text("select 2"))  # resumed here
    [warning] = warnings_of(logs, "a transaction stayed open")
    assert "idle_in_transaction_threshold=0.1 s" in warning
    assert "Between 'select 1' and 'select 2'" in warning
    assert f'File "{__file__}", line {line_of("# resumed here")}, in test_a_sleep' in warning
    [record] = [r for r in logs.records if r.getMessage() == warning]
    assert record.atom_db_idle_seconds >= 0.15  # type: ignore[attr-defined]


@BOTH
async def test_an_http_call_inside_the_block_is_reported_at_commit(
    database: Database, logs: LogSeen
) -> None:
    async def slow_service(_request: object) -> PlainTextResponse:
        await asyncio.sleep(0.15)
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/charge", slow_service)])
    async with (
        serve(app) as base,
        httpx.AsyncClient() as client,
        database.get_async_db_session() as session,
    ):
        await session.execute(text("select 1"))
        assert (await client.get(f"{base}/charge")).text == "ok"
    # (the block's end: COMMIT)
    [warning] = warnings_of(logs, "a transaction stayed open")
    assert "Between 'select 1' and 'COMMIT'" in warning


@BOTH
async def test_a_slow_statement_is_not_an_idle_gap_and_its_parameters_are_never_logged(
    database: Database, logs: LogSeen
) -> None:
    async with database.get_async_db_session() as session:
        await session.execute(text("select 1"))
        await session.execute(text(slow_sql(database)), {"secret": "hunter2"})
        await session.execute(text("select 1"))
    assert warnings_of(logs, "a transaction stayed open") == []
    [slow] = warnings_of(logs, "slow statement")
    assert "slow_statement_threshold=0.2 s" in slow
    [record] = [r for r in logs.records if r.getMessage() == slow]
    assert record.atom_db_duration_seconds >= 0.2  # type: ignore[attr-defined]
    assert record.atom_db_statement.startswith(slow_sql(database)[:20])  # type: ignore[attr-defined]
    assert record.atom_db_pool == database.settings.stats_name  # type: ignore[attr-defined]
    assert all("hunter2" not in str(vars(r)) for r in logs.records)
    assert database.pool_stats().statement_time.count == 3


@BOTH
async def test_short_gaps_and_autocommit_reads_are_not_reported(
    database: Database, logs: LogSeen
) -> None:
    async with database.get_async_db_session() as session:
        await session.execute(text("select 1"))
        await session.execute(text("select 2"))
    async with database.get_async_db_session() as session:
        await session.execute(text("select 3"))
    await asyncio.sleep(0.15)  # between two sessions: no transaction is open
    async with database.get_async_db_session() as session:
        await session.execute(text("select 4"))
    assert logs.messages(logging.WARNING) == []


async def test_nothing_is_installed_without_a_threshold(tmp_path: object) -> None:
    from sqlalchemy import event

    database = Database(f"sqlite:///{tmp_path}/x.db")
    try:
        assert not event.contains(database.engine.sync_engine, "before_cursor_execute", None)
        assert not database.engine.sync_engine.dispatch.before_cursor_execute
    finally:
        await database.dispose()
