"""The pools (``_pool``): first come, first served for tasks and threads, overflow
connections kept while needed, waiters that give up or are cancelled pass on what they
were handed; and (``_ping``) a session's BEGIN doubling as its connection's ping."""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from atom_async_db import Database, PoolTimeoutError
from benchmarks._stacks import Counters
from tests.helpers import assert_no_leaks, our_backends


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until ``condition()`` holds (a pool has no event for it)."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0)


async def queued(database: Database, count: int) -> None:
    """Return once ``count`` callers wait in the async pool's queue."""
    await until(lambda: len(database.engine.pool._waiters) >= count)  # type: ignore[attr-defined]


async def test_waiting_tasks_are_served_in_arrival_order(make_default: Any) -> None:
    db = await make_default(pool_size=2, max_overflow=0)
    held = [await db.engine.connect() for _ in range(db.engine.pool.size())]
    order: list[int] = []

    async def client(i: int) -> None:
        async with db.get_async_db_session() as session:
            await session.connection()
            order.append(i)

    tasks = []
    for i in range(20):
        tasks.append(asyncio.create_task(client(i)))
        await queued(db, i + 1)
    # A holder that gives its connection back and asks again queues behind all of them.
    await held[0].close()
    again = await db.engine.connect()
    order.append(-1)
    await again.close()
    for connection in held[1:]:
        await connection.close()
    await asyncio.gather(*tasks)
    assert order == [*range(20), -1]
    await assert_no_leaks(db)


async def test_control_sqlalchemys_pool_lets_the_releasing_task_jump_the_queue(
    tmp_path: Any,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    held = await engine.connect()
    order: list[int] = []

    async def client(i: int) -> None:
        async with engine.connect() as connection:
            await connection.execute(text("select 1"))
            order.append(i)

    tasks = [asyncio.create_task(client(i)) for i in range(5)]
    await until(lambda: len(engine.pool._pool._queue._getters) >= 5)  # type: ignore[attr-defined]
    await held.close()
    async with engine.connect():
        order.append(-1)
    await asyncio.gather(*tasks)
    assert order[0] == -1  # what the FIFO test above rules out
    await engine.dispose()


async def test_a_waiter_cancelled_after_it_was_handed_a_connection_passes_it_on(
    make_default: Any,
) -> None:
    database = await make_default(pool_size=1, max_overflow=0)
    held = await database.engine.connect()
    first = asyncio.create_task(database.engine.connect().start())
    await queued(database, 1)
    second = asyncio.create_task(database.engine.connect().start())
    await queued(database, 2)
    await held.close()  # hands the connection to `first`, which has not run yet
    first.cancel()
    connection: AsyncConnection = await second
    assert await connection.scalar(text("select 1")) == 1
    await connection.close()
    with pytest.raises(asyncio.CancelledError):
        await first
    await assert_no_leaks(database)


async def test_a_waiter_that_times_out_is_skipped(make_default: Any) -> None:
    database = await make_default(pool_size=1, max_overflow=0, pool_timeout=0.2)
    held = await database.engine.connect()
    with pytest.raises(PoolTimeoutError, match=r"pool_timeout=0\.2"):
        await database.engine.connect()
    await held.close()  # must not go to the waiter that gave up
    async with database.get_async_db_session() as session:
        assert await session.scalar(text("select 1")) == 1
    await assert_no_leaks(database)


async def test_each_waiter_times_out_at_its_own_deadline_and_a_served_one_never(
    make_default: Any,
) -> None:
    # (one timer serves every waiter: it must move on from the first deadline to the next)
    database = await make_default(pool_size=1, max_overflow=0, pool_timeout=0.3)
    loop = asyncio.get_running_loop()
    held = await database.engine.connect()

    async def wait_for_a_connection() -> float:
        started = loop.time()
        with pytest.raises(PoolTimeoutError):
            await database.engine.connect()
        return loop.time() - started

    first = asyncio.create_task(wait_for_a_connection())
    await asyncio.sleep(0.1)  # (the second arrives later, so its deadline is later)
    second = asyncio.create_task(wait_for_a_connection())
    waits = await asyncio.gather(first, second)
    assert min(waits) >= 0.3, waits

    async def take() -> Any:
        return await database.engine.connect()

    served = asyncio.create_task(take())
    await asyncio.sleep(0)
    await held.close()  # handed to `served` long before its deadline
    connection = await served
    await asyncio.sleep(0.4)  # past that deadline: the timer must not touch it
    assert await connection.scalar(text("select 1")) == 1
    await connection.close()
    await assert_no_leaks(database)


async def test_overflow_connections_stay_open_while_needed_and_close_when_idle(
    make_default: Any, backend: str
) -> None:
    database = await make_default(pool_size=2, max_overflow=3, pool_max_idle=1.0)
    size = database.engine.pool.size() + database.engine.pool._max_overflow  # type: ignore[attr-defined]
    opened: list[object] = []
    event.listen(database.engine.sync_engine, "connect", lambda *_: opened.append(1))
    already = database.engine.pool.checkedin()  # opened by the test's setup
    gate = asyncio.Event()

    async def client() -> None:
        async with database.get_async_db_session() as session:
            await session.connection()
            await gate.wait()  # every client holds a connection at once

    for _ in range(30):
        gate.clear()
        tasks = [asyncio.create_task(client()) for _ in range(size)]
        await until(lambda: database.engine.pool.checkedout() >= size)
        gate.set()
        await asyncio.gather(*tasks)
    assert already + len(opened) == size  # SQLAlchemy's pool: 3 more in each of 30 rounds
    assert database.engine.pool.checkedin() == size
    if size == database.engine.pool.size():
        return  # (in-memory SQLite: one connection, no overflow)
    # Once idle for pool_max_idle, the pool's timer closes the surplus: no traffic needed.
    await until(lambda: database.engine.pool.checkedin() < size)
    await until(lambda: database.engine.pool.checkedin() == database.engine.pool.size())
    await database.engine.pool._closing  # type: ignore[attr-defined]  # the closing's I/O
    if backend == "postgres":
        assert len(await our_backends(database.url)) == database.engine.pool.size()
    await assert_no_leaks(database)


async def test_the_sync_pool_closes_its_idle_surplus_too(make_default: Any) -> None:
    database = await make_default(sync_pool_size=2, sync_max_overflow=4, pool_max_idle=0.5)
    engine = database.sync_engine
    start = threading.Barrier(6)

    def client() -> None:
        with engine.connect() as connection:
            start.wait()  # all six hold one at once
            connection.exec_driver_sql("select 1")

    workers = [threading.Thread(target=client) for _ in range(6)]
    for worker in workers:
        worker.start()
    await asyncio.to_thread(lambda: [worker.join() for worker in workers])
    assert engine.pool.checkedin() == 6
    await until(lambda: engine.pool.checkedin() == 2)
    await assert_no_leaks(database)


async def test_threads_take_turns_on_the_sync_pool(make_default: Any) -> None:
    database = await make_default(sync_pool_size=2, sync_max_overflow=0)
    engine = database.sync_engine
    threads, rounds = 20, 15
    served: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def client(i: int) -> None:
        start.wait()
        for _ in range(rounds):
            with engine.connect() as connection:
                connection.exec_driver_sql("select 1")
                with lock:
                    served.append(i)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    await asyncio.to_thread(lambda: [worker.join() for worker in workers])
    assert len(served) == threads * rounds
    # First come, first served: a thread that gives its connection back and asks again
    # queues behind every thread already waiting, so about threads - 1 others get one
    # before its next turn. SQLAlchemy's QueuePool lets it take the connection back at
    # once: there, some threads cycle with gaps of 0 while others wait (measured: 0 to 27
    # here). Only the stretch where every thread is in the game counts (a thread that
    # starts late or ends early legitimately sees other gaps), and a few short gaps are
    # allowed: a loaded machine can keep a thread from asking again for a while.
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for position, thread in enumerate(served):
        first.setdefault(thread, position)
        last[thread] = position
    begin, end = max(first.values()), min(last.values())
    previous: dict[int, int] = {}
    gaps: list[int] = []
    for position in range(begin, end + 1):
        thread = served[position]
        if thread in previous:
            gaps.append(position - previous[thread] - 1)
        previous[thread] = position
    # (SQLAlchemy's QueuePool fails here: threads finish all their turns before others
    # have had one.)
    assert len(gaps) >= 2 * threads, f"threads served while others starved: {served}"
    assert statistics.median(gaps) >= threads // 2, gaps
    assert sum(gap < threads // 4 for gap in gaps) <= len(gaps) // 10, gaps
    await assert_no_leaks(database)


# --------------------------------------------------------------------------- the ping


async def test_a_sessions_begin_is_its_connections_ping(postgres_url: str) -> None:
    database = Database(postgres_url, pool_size=1, max_overflow=0)
    statement = text("select 1")
    for _ in range(2):  # the second checkout is a pooled connection's: it gets tested
        async with database.get_async_db_session() as session:
            await session.scalar(statement)
    record = database.engine.pool._free[0][0]  # type: ignore[attr-defined]
    writes = Counters()  # the benchmark's: requests written to the connection's socket
    writes.count_round_trips(record.dbapi_connection.driver_connection)
    async with database.get_async_db_session() as session:
        assert await session.scalar(statement) == 1
    assert writes.round_trips == 3  # BEGIN (also the ping), the statement, COMMIT
    async with database.engine.connect() as connection:  # not a session: a SELECT 1 ping
        await connection.scalar(statement)
        await connection.commit()
    assert writes.round_trips == 3 + 4
    await database.dispose()


@pytest.mark.parametrize(
    ("option", "value", "setting", "expected"),
    [
        ("postgresql_readonly", True, "transaction_read_only", "on"),
        ("isolation_level", "SERIALIZABLE", "transaction_isolation", "serializable"),
    ],
)
async def test_connection_settings_apply_to_the_transaction_begun_at_checkout(
    postgres_url: str, option: str, value: object, setting: str, expected: str
) -> None:
    database = Database(postgres_url, pool_size=1, max_overflow=0)
    async with database.get_async_db_session() as session:
        await session.connection()  # a fresh connection; pooled from now on
    async with database.get_async_db_session() as session:
        await session.connection(execution_options={option: value})
        assert await session.scalar(text(f"show {setting}")) == expected
    async with database.get_async_db_session() as session:  # reset on return
        assert await session.scalar(text(f"show {setting}")) != expected
    await assert_no_leaks(database)
    await database.dispose()


async def test_only_the_sessions_own_connection_begins_at_checkout(postgres_url: str) -> None:
    """Raw driver writes on another connection of the same task, or of a task started in
    the block, are not pulled into a transaction (they autocommit, as asyncpg's do)."""
    database = Database(postgres_url, pool_size=3, max_overflow=0)
    async with database.engine.begin() as connection:
        await connection.execute(text("drop table if exists raw_writes"))
        await connection.execute(text("create table raw_writes (n int)"))
    for _ in range(2):  # pooled connections from now on: they get tested at checkout
        async with database.get_async_db_session() as session:
            await session.execute(text("select 1"))

    async def raw_insert(n: int) -> None:
        async with database.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            await raw.driver_connection.execute(f"insert into raw_writes values ({n})")

    async with database.get_async_db_session() as session:
        await session.execute(text("select 1"))
        await raw_insert(1)
        await asyncio.create_task(raw_insert(2))
    async with database.get_async_db_session() as session:
        rows = (await session.scalars(text("select n from raw_writes order by n"))).all()
    assert rows == [1, 2]
    await assert_no_leaks(database)
    await database.dispose()


async def test_guarded_driver_methods_are_coroutines(backend_url: str) -> None:
    database = Database(backend_url, pool_size=1, max_overflow=0)
    async with database.engine.connect() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        query = "select 1"
        if database.settings.dialect == "postgresql":
            assert await asyncio.create_task(raw.fetchval(query)) == 1
        else:  # (aiosqlite's execute() is a context manager, not a coroutine, anyway)
            assert await asyncio.create_task(raw.commit()) is None
    await database.dispose()


def test_a_thread_interrupted_while_waiting_passes_its_turn_on(tmp_path: Any) -> None:
    """An exception raised in a waiting thread (a signal handler's, KeyboardInterrupt)
    must not leave the pool owing it a connection."""
    import signal

    database = Database(
        f"sqlite:///{tmp_path / 'w.db'}", sync_pool_size=1, sync_max_overflow=0, pool_timeout=5
    )
    engine = database.sync_engine
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with engine.connect():
            holding.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait()

    class Interrupted(Exception):
        pass

    def interrupt(*_: object) -> None:
        release.set()  # the connection comes back while this thread still waits, or after
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        with pytest.raises(Interrupted), engine.connect():
            pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    holder.join()
    with engine.connect() as connection:  # the one connection is free again, at once
        assert connection.exec_driver_sql("select 1").scalar() == 1
    assert engine.pool.checkedout() == 0
    database.dispose_sync_engine()


async def test_the_pools_own_messages_go_where_sqlalchemys_pools_do(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # An application that turns atom_async_db's logger up (for the leak reports' INFO
    # lines) does not get every checkout and return; sqlalchemy.pool's does.
    database = Database(f"sqlite:///{tmp_path / 'x.db'}", echo=False)
    with (
        caplog.at_level(logging.DEBUG, logger="atom_async_db"),
        caplog.at_level(logging.DEBUG, logger="sqlalchemy.pool"),
    ):
        async with database.get_async_db_session() as session:
            await session.execute(text("select 1"))
        await database.dispose()
    pool_messages = [r for r in caplog.records if "returned to pool" in r.getMessage()]
    assert pool_messages
    assert {r.name for r in pool_messages} == {"sqlalchemy.pool.impl.FairAsyncPool"}
