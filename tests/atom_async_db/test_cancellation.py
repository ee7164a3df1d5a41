"""Cancellation storms: tasks cancelled at seeded random points of their unit of work (waiting
for a connection, inside a statement, during COMMIT, while closing), by ``task.cancel()``,
``asyncio.timeout`` and an anyio task group, lose nothing, leak nothing, log nothing and
cost no connection. The storm itself is ``benchmarks/cancel_storm.py``, which also runs it
against plain SQLAlchemy for comparison."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from atom_async_db import Database
from atom_async_db._session import COMMITTED_BEFORE_CANCEL_NOTE
from benchmarks.cancel_storm import MECHANISMS, PHASES, StormReport, run_storm
from tests.conftest import APP_NAME, assert_no_leaks


def assert_clean(report: StormReport) -> None:
    summary = f"{report}"
    for phase in PHASES:
        assert report.landed[phase] > 0, f"no cancel landed in {phase}: {summary}"
    assert report.outcomes == {"cancelled": report.tasks}, summary
    assert report.tasks_not_cancelled == 0, summary
    assert report.lost == [], summary
    assert report.log_lines == [], summary
    assert report.checked_out_after == 0, summary
    assert report.in_transaction_after == 0, summary
    assert report.discarded == 0 and report.connects == 0, summary
    assert report.followups_ok == 100, summary


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_1000_cancelled_tasks_on_postgres_cost_nothing(
    postgres_url: str, mechanism: str
) -> None:
    report = await run_storm(postgres_url, mechanism=mechanism, tasks=1000, seed=5)
    assert_clean(report)


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_cancelled_tasks_on_sqlite_cost_nothing(tmp_path: Path, mechanism: str) -> None:
    threads_before = set(threading.enumerate())
    report = await run_storm(f"sqlite:///{tmp_path / 'storm.db'}", mechanism=mechanism, tasks=250)
    assert_clean(report)
    for thread in set(threading.enumerate()) - threads_before:  # aiosqlite's, after dispose
        await asyncio.to_thread(thread.join, 5)
        assert not thread.is_alive(), f"{thread} still runs after dispose"


async def test_the_storm_catches_a_session_that_only_closes_in_finally(postgres_url: str) -> None:
    # Control: plain SQLAlchemy's `async with sessionmaker() as s` (try/finally close) is
    # the naive version; the same storm shows what it costs, so the checks above can fail.
    report = await run_storm(postgres_url, stack="plain", tasks=200, seed=5)
    assert report.discarded > 0 and report.connects > 0


async def test_a_long_statement_is_cancelled_on_the_server_after_the_grace(
    postgres_url: str,
) -> None:
    database = Database(postgres_url, application_name=APP_NAME, pool_size=1, cancel_grace=0.1)
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1), database.get_async_db_session() as session:
            await session.execute(text("select pg_sleep(30)"))
    # timeout + grace + the server's cancel, not the statement's 30 s
    assert asyncio.get_running_loop().time() - started < 5
    async with database.get_async_db_session() as session:
        assert await session.scalar(text("select 1")) == 1
    await assert_no_leaks(database)
    await database.dispose()


async def test_a_commit_that_finished_is_reported_on_the_cancellation(
    postgres_url: str,
) -> None:
    database = Database(postgres_url, application_name=APP_NAME, pool_size=1)
    async with database.engine.begin() as connection:
        await connection.execute(text("drop table if exists cancel_notes"))
        await connection.execute(text("create table cancel_notes (id int primary key)"))
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    with pytest.raises(asyncio.CancelledError) as raised:
        async with database.get_async_db_session() as session:
            await session.execute(text("insert into cancel_notes values (1)"))
            loop.call_soon(task.cancel)  # lands while COMMIT is in flight
    task.uncancel()
    assert COMMITTED_BEFORE_CANCEL_NOTE in getattr(raised.value, "__notes__", [])
    async with database.get_async_db_session() as session:
        assert await session.scalar(text("select count(*) from cancel_notes")) == 1
    await assert_no_leaks(database)
    await database.dispose()
