"""``retry_on_conflict`` on real conflicts: serialization failures and deadlocks resolve
themselves; nothing else is retried."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import anyio
import pytest
from sqlalchemy import exc, text
from sqlalchemy.util.concurrency import await_

from atom_async_db import Database, retry_on_conflict
from sync_compat import get_db_session, run_legacy
from tests.helpers import assert_no_leaks, hold_a_session

POSTGRES = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


async def make_counters(db: Database) -> None:
    async with db.engine.begin() as connection:
        await connection.execute(text("drop table if exists retry_counters"))
        await connection.execute(
            text("create table retry_counters (id int primary key, value int not null)")
        )
        await connection.execute(text("insert into retry_counters values (1, 0), (2, 0)"))


@POSTGRES
async def test_two_serializable_workers_lose_no_increment(db: Database) -> None:
    await make_counters(db)
    attempts = 0

    @retry_on_conflict(attempts=100, deadline=60)
    async def increment() -> None:
        nonlocal attempts
        attempts += 1
        async with db.get_async_db_session() as session:
            await session.connection(execution_options={"isolation_level": "SERIALIZABLE"})
            value = await session.scalar(text("select value from retry_counters where id = 1"))
            await asyncio.sleep(0)  # let the other worker read the same value
            await session.execute(
                text("update retry_counters set value = :v where id = 1"), {"v": value + 1}
            )

    async def worker() -> None:
        for _ in range(100):
            await increment()

    async with asyncio.timeout(60):
        await asyncio.gather(worker(), worker())
    async with db.get_async_db_session() as session:
        assert await session.scalar(text("select value from retry_counters where id = 1")) == 200
    assert attempts > 200  # conflicts happened, and were retried
    await assert_no_leaks(db)


@POSTGRES
async def test_a_deadlock_is_retried_and_both_transactions_complete(db: Database) -> None:
    await make_counters(db)
    first_updates = [asyncio.Event(), asyncio.Event()]
    failures: list[str] = []

    def transfer(first: int, second: int, mine: asyncio.Event, theirs: asyncio.Event):
        @retry_on_conflict(attempts=5, deadline=30)
        async def run() -> None:
            try:
                async with db.get_async_db_session() as session:
                    await session.execute(text("set local deadlock_timeout = '50ms'"))
                    update = "update retry_counters set value = value + 1 where id = :id"
                    await session.execute(text(update), {"id": first})
                    if not mine.is_set():  # first attempt: meet the other in the middle
                        mine.set()
                        await theirs.wait()
                    await session.execute(text(update), {"id": second})
            except exc.DBAPIError as error:
                failures.append(str(getattr(error.orig, "sqlstate", "")))
                raise

        return run

    async with asyncio.timeout(30):
        await asyncio.gather(
            transfer(1, 2, first_updates[0], first_updates[1])(),
            transfer(2, 1, first_updates[1], first_updates[0])(),
        )
    assert failures and all(sqlstate == "40P01" for sqlstate in failures)  # deadlock_detected
    async with db.get_async_db_session() as session:
        values = (await session.scalars(text("select value from retry_counters"))).all()
    assert sorted(values) == [2, 2]
    await assert_no_leaks(db)


@POSTGRES
async def test_other_errors_are_never_retried(db: Database) -> None:
    await make_counters(db)
    attempts = 0

    @retry_on_conflict(attempts=5)
    async def duplicate() -> None:
        nonlocal attempts
        attempts += 1
        async with db.get_async_db_session() as session:
            await session.execute(text("insert into retry_counters values (1, 0)"))

    with pytest.raises(exc.IntegrityError):
        await duplicate()
    assert attempts == 1
    await assert_no_leaks(db)


@pytest.mark.parametrize("backend", ["sqlite_file"], indirect=True)
async def test_sqlite_busy_lock_is_retried(
    make_default: Callable[..., Awaitable[Database]],
) -> None:
    db = await make_default(pool_size=2, sqlite_busy_timeout=0.05)
    await make_counters(db)
    holder = await hold_a_session(db, "update retry_counters set value = 1 where id = 1")
    attempts = 0

    @retry_on_conflict(attempts=50, deadline=30, max_delay=0.05)
    async def write() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 2:
            holder.release.set()  # the holder finishes while we back off
        async with db.get_async_db_session() as session:
            await session.execute(text("update retry_counters set value = 5 where id = 2"))

    await write()
    await holder.end()
    assert attempts >= 2  # the first attempt met the lock
    await assert_no_leaks(db)


# --------------------------------------------------------------------------- sync functions


def read_then_write(barrier: Callable[[], object], attempts: list[int]) -> None:
    """One increment in a SERIALIZABLE legacy session; the first attempt of each caller
    waits at ``barrier`` after its read, so that two callers conflict for certain."""
    attempts.append(1)
    with get_db_session(isolation_level="SERIALIZABLE") as session:
        value = session.scalar(text("select value from retry_counters where id = 1"))
        if len(attempts) <= 2:
            barrier()
        session.execute(text("update retry_counters set value = :v where id = 1"), {"v": value + 1})


@POSTGRES
async def test_sync_functions_in_threads_are_retried(db: Database) -> None:
    await make_counters(db)
    attempts: list[int] = []
    barrier = threading.Barrier(2, timeout=30)
    increment = retry_on_conflict(attempts=5)(read_then_write)
    async with anyio.create_task_group() as group:
        for _ in range(2):
            group.start_soon(anyio.to_thread.run_sync, increment, barrier.wait, attempts)
    async with db.get_async_db_session() as session:
        assert await session.scalar(text("select value from retry_counters where id = 1")) == 2
    assert len(attempts) == 3  # one of the two met the other's update, and ran again
    await assert_no_leaks(db)


@POSTGRES
async def test_sync_functions_under_run_legacy_wait_on_the_loop(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_counters(db)
    attempts: list[int] = []
    barrier = asyncio.Barrier(2)
    increment = retry_on_conflict(attempts=5)(read_then_write)

    def no_blocking_sleep(seconds: float) -> None:
        raise AssertionError("time.sleep() on the event loop's thread")

    monkeypatch.setattr(time, "sleep", no_blocking_sleep)
    async with asyncio.timeout(30):
        await asyncio.gather(
            *(run_legacy(increment, lambda: await_(barrier.wait()), attempts) for _ in range(2))
        )
    async with db.get_async_db_session() as session:
        assert await session.scalar(text("select value from retry_counters where id = 1")) == 2
    assert len(attempts) == 3
    await assert_no_leaks(db)


async def test_sync_functions_are_not_retried_on_other_errors(db: Database) -> None:
    await make_counters(db)
    calls = 0

    @retry_on_conflict(attempts=5)
    def duplicate() -> None:
        nonlocal calls
        calls += 1
        with get_db_session() as session:
            session.execute(text("insert into retry_counters values (1, 0)"))

    with pytest.raises(exc.IntegrityError):
        await run_legacy(duplicate)
    assert calls == 1
