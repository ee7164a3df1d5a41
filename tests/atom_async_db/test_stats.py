"""Pool statistics (``_stats``, counted by ``_pool``): each figure of ``pool_stats()``
against a controlled workload, on SQLite and PostgreSQL, for tasks and threads."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from atom_async_db import Database, PoolStats, PoolTimeoutError
from atom_async_db._stats import BOUNDS, Histogram
from sync_compat import get_db_session
from tests.helpers import APP_NAME, asyncpg_dsn

BOTH = pytest.mark.parametrize("backend", ["sqlite_file", "postgres"], indirect=True)


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until ``condition()`` holds (a pool has no event for it)."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0)


def nearest_rank(values: list[float], quantile: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


@pytest.fixture
async def database(backend_url: str) -> Any:
    database = Database(backend_url, application_name=APP_NAME, pool_size=5, max_overflow=5)
    yield database
    await database.dispose()


@BOTH
async def test_each_figure_against_30_tasks_on_a_pool_of_5_plus_5(database: Database) -> None:
    release = asyncio.Event()
    waits: list[float] = []
    holding = 0

    # Connections, not sessions: on SQLite each session's transaction takes the one write
    # lock, so ten sessions could not hold at once.
    async def holder() -> None:
        nonlocal holding
        async with database.engine.connect():
            holding += 1
            await release.wait()

    async def waiter() -> None:
        asked = time.perf_counter()
        async with database.engine.connect() as connection:
            waits.append(time.perf_counter() - asked)
            await connection.execute(text("select 1"))

    holders = [asyncio.create_task(holder()) for _ in range(10)]
    await until(lambda: holding == 10)
    waiters = [asyncio.create_task(waiter()) for _ in range(20)]
    await until(lambda: database.pool_stats().waiting == 20)

    busy = database.pool_stats()
    assert (busy.pool_size, busy.max_overflow) == (5, 5)
    assert (busy.open, busy.in_use, busy.idle, busy.waiting) == (10, 10, 0, 20)
    assert busy.saturated
    assert (busy.checkouts, busy.connections_opened, busy.timeouts) == (10, 10, 0)
    assert [pool.kind for pool in busy.pools] == ["async"]

    await asyncio.sleep(0.05)  # (the waits measured: time the waiters spend queued)
    release.set()
    await asyncio.gather(*holders, *waiters)

    done = database.pool_stats()
    assert (done.in_use, done.waiting, done.idle, done.open) == (0, 0, 10, 10)
    assert done.checkouts == done.wait_time.count == done.use_time.count == 30
    assert done.connections_opened == done.connect_time.count == 10
    assert (done.connections_closed, done.connections_discarded, done.timeouts) == (0, 0, 0)
    # The pool's waits are those the tasks saw (which add the pre-ping), at the buckets'
    # resolution: the holders' ten are 0.
    seen = [0.0] * 10 + waits
    for quantile, figure in ((0.5, done.wait_time.p50), (0.95, done.wait_time.p95)):
        expected = nearest_rank(seen, quantile)
        assert expected - 0.01 <= figure <= expected * 1.25 + 0.001, (quantile, seen)
    assert max(waits) - 0.01 <= done.wait_time.max <= max(waits)
    assert done.wait_time.p99 == done.wait_time.max  # (30 samples: the top one)
    assert done.wait_time.max >= 0.05

    await database.dispose()
    after = database.pool_stats()
    assert after.connections_closed == 10
    assert (after.open, after.pools) == (0, ())
    assert after.checkouts == 30  # the pool is gone; its counts stay in the totals


@BOTH
async def test_timeouts_are_counted_and_are_not_waits(backend_url: str) -> None:
    database = Database(backend_url, pool_size=1, max_overflow=0, pool_timeout=0.05)
    try:
        async with database.engine.connect() as held:
            await held.execute(text("select 1"))
            for _ in range(3):
                with pytest.raises(PoolTimeoutError):
                    async with database.get_async_db_session() as session:
                        await session.connection()
            stats = database.pool_stats()
            assert (stats.timeouts, stats.checkouts, stats.wait_time.count) == (3, 1, 1)
            assert stats.waiting == 0
    finally:
        await database.dispose()


@BOTH
async def test_use_time_is_checkout_to_return(database: Database) -> None:
    asked = time.perf_counter()
    async with database.engine.connect() as connection:
        await connection.execute(text("select 1"))
        await asyncio.sleep(0.1)
    held = time.perf_counter() - asked
    use = database.pool_stats().use_time
    assert use.count == 1
    assert 0.1 <= use.max <= held
    assert use.p50 == use.max


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_connection_the_server_ended_is_counted_as_discarded(
    database: Database, backend_url: str
) -> None:
    import asyncpg

    async with database.get_async_db_session() as session:
        pid = (await session.execute(text("select pg_backend_pid()"))).scalar_one()
    admin = await asyncpg.connect(asyncpg_dsn(backend_url))
    try:
        await admin.execute("select pg_terminate_backend($1)", pid)
        async with database.get_async_db_session() as session:
            await session.execute(text("select 1"))  # the pre-ping finds it dead
    finally:
        await admin.close()
    stats = database.pool_stats()
    assert (stats.connections_discarded, stats.connections_closed) == (1, 1)
    assert stats.connections_opened == 2
    assert (stats.open, stats.checkouts) == (1, 2)


@BOTH
async def test_threads_waiting_on_the_sync_pool_are_counted(backend_url: str) -> None:
    database = Database(backend_url, sync_pool_size=1, sync_max_overflow=0)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with get_db_session(database=database) as session:
            session.execute(text("select 1"))
            session.connection()
            held.set()
            release.wait(10)

    def waiter() -> None:
        with get_db_session(database=database) as session:
            session.execute(text("select 1"))

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    try:
        assert await asyncio.to_thread(held.wait, 10)
        threads.append(threading.Thread(target=waiter))
        threads[1].start()
        await until(lambda: database.pool_stats().waiting == 1)
        stats = database.pool_stats()
        (sync,) = [pool for pool in stats.pools if pool.kind == "sync"]
        assert (sync.in_use, sync.waiting, sync.pool_size, sync.max_overflow) == (1, 1, 1, 0)
        assert sync.name.endswith(" (sync)")
    finally:
        release.set()
        for thread in threads:
            await asyncio.to_thread(thread.join, 10)
    stats = database.pool_stats()
    (sync,) = [pool for pool in stats.pools if pool.kind == "sync"]
    assert (sync.checkouts, sync.waiting, sync.in_use) == (2, 0, 0)
    database.dispose_sync_engine()


@BOTH
async def test_an_ended_loops_pool_leaves_the_figures_and_stays_in_the_counts(
    database: Database,
) -> None:
    async def elsewhere() -> None:
        async with database.get_async_db_session() as session:
            await session.execute(text("select 1"))

    await asyncio.to_thread(asyncio.run, elsewhere())
    async with database.get_async_db_session() as session:
        await session.execute(text("select 1"))
    stats = database.pool_stats()
    assert len(stats.pools) == 1
    assert stats.checkouts == 2
    assert stats.pools[0].checkouts == 1
    assert stats.retired is not None and stats.pools[0].retired is None
    assert (stats.retired.checkouts, stats.retired.wait_time.count) == (1, 1)


def test_pool_names_carry_no_password() -> None:
    database = Database("postgresql://alice:s3cret@db.example:6543/shop")
    stats = database.pool_stats()
    assert stats.name == "db.example:6543/shop"
    assert "s3cret" not in repr(stats)
    assert Database("sqlite:///x.db", pool_name="orders").pool_stats().name == "orders"
    socket = Database("postgresql://app:pw@/shop?host=/run/postgresql&port=5433")
    assert socket.pool_stats().name == "/run/postgresql:5433/shop"


def test_percentiles_are_read_from_buckets_at_most_a_quarter_above() -> None:
    histogram = Histogram("wait_time")
    values = [0.0011 * 1.07**i for i in range(200)]
    for value in values:
        histogram.record(value)
    figures = histogram.snapshot()
    for quantile, figure in ((0.5, figures.p50), (0.95, figures.p95), (0.99, figures.p99)):
        true = nearest_rank(values, quantile)
        assert true <= figure <= true * 1.25
    assert figures.max == max(values)
    assert figures.count == 200
    assert figures.sum == pytest.approx(sum(values))
    assert len(figures.bucket_counts) == len(BOUNDS) + 1
    assert Histogram("x").snapshot().p99 == 0.0


def test_the_snapshot_is_frozen() -> None:
    stats = Database("sqlite:///x.db").pool_stats()
    assert isinstance(stats, PoolStats)
    with pytest.raises(AttributeError):
        stats.waiting = 3  # type: ignore[misc]
