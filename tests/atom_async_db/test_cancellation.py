"""Cancellation storms: tasks cancelled at seeded random points of their unit of work (waiting
for a connection, inside a statement, during COMMIT, while closing), by ``task.cancel()``,
``asyncio.timeout`` and an anyio task group, lose nothing, leak nothing, log nothing and
cost no connection. The storm itself is ``benchmarks/cancel_storm.py``, which also runs it
against plain SQLAlchemy for comparison."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import bindparam, event, exc, text

from atom_async_db import ConcurrentSessionUseError, Database
from atom_async_db._cancel import COMMIT_ABANDONED_NOTE, ConnectionGuard
from atom_async_db._classify import CONNECTION_LOST_NOTE
from atom_async_db._session import COMMITTED_BEFORE_CANCEL_NOTE
from benchmarks.cancel_storm import MECHANISMS, PHASES, StormReport, run_storm
from tests.helpers import APP_NAME, assert_no_leaks, create_slow_commit_table

SLOW = {
    "postgresql": "select pg_sleep(0.1)",
    "sqlite": "with recursive c(x) as (select 1 union all select x + 1 from c "
    "where x < 400000) select count(*) from c",
}


def assert_clean(report: StormReport) -> None:
    summary = f"{report}"
    # A committed session's close does no I/O (nothing is left to roll back), so a cancel
    # aimed at it arrives once the block is over and counts as "finished".
    for phase in PHASES:
        if phase != "close":
            assert report.landed[phase] > 0, f"no cancel landed in {phase}: {summary}"
    # Every task the cancel reached saw it; one it reached too late (under load, after the
    # unit had finished) committed normally.
    late = report.landed["finished"]
    assert report.outcomes["cancelled"] == report.tasks - late, summary
    assert report.outcomes["committed"] == late, summary
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
    # SQLite's default pool: one connection per loop. With more, connections wait for the
    # write lock in SQLite's busy handler, which a cancellation cannot interrupt, so a
    # connection can be discarded there (the documented limit), depending on timing.
    report = await run_storm(
        f"sqlite:///{tmp_path / 'storm.db'}", mechanism=mechanism, tasks=250, pool_size=1
    )
    assert_clean(report)
    for thread in set(threading.enumerate()) - threads_before:  # aiosqlite's, after dispose
        await asyncio.to_thread(thread.join, 5)
        assert not thread.is_alive(), f"{thread} still runs after dispose"


async def test_the_storm_catches_a_session_that_only_closes_in_finally(postgres_url: str) -> None:
    # Control: plain SQLAlchemy's `async with sessionmaker() as s` (try/finally close) is
    # the naive version; the same storm shows what it costs, so the checks above can fail.
    report = await run_storm(postgres_url, stack="plain", tasks=200, seed=5)
    assert report.discarded > 0 and report.connects > 0


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


# A statement that finishes within the grace period must not move the cancellation out of
# the scope that asked for it (found by review: the timeout then never fired inside).


@pytest.mark.parametrize("backend", ["postgres", "sqlite_file"], indirect=True)
async def test_a_timeout_around_a_statement_still_raises_inside_its_scope(db: Database) -> None:
    slow = SLOW[db.settings.dialect]
    task = asyncio.current_task()
    assert task is not None
    async with db.get_async_db_session() as session:
        for _ in range(3):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.01):
                    await session.execute(text(slow))
            assert task.cancelling() == 0
        await session.rollback()  # the session and its connection carry on
        assert await session.scalar(text("select 1")) == 1
    await assert_no_leaks(db)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_anyio_scopes_and_task_groups_see_their_own_cancellation(db: Database) -> None:
    slow = text(SLOW["postgresql"])
    async with db.get_async_db_session() as session:
        with anyio.move_on_after(0.01) as scope:
            await session.execute(slow)
        assert scope.cancelled_caught
        await session.rollback()
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.01):
                await session.execute(slow)
        await session.rollback()
        assert await session.scalar(text("select 1")) == 1

    async def query() -> None:
        async with db.get_async_db_session() as own:
            await own.execute(slow)

    async def fail() -> None:
        raise ValueError("sibling failed")

    with pytest.raises(ExceptionGroup):
        async with asyncio.TaskGroup() as group:
            group.create_task(query())
            group.create_task(fail())
    async with db.get_async_db_session() as session:  # no stray cancellation lands here
        assert await session.scalar(text("select 1")) == 1
    await assert_no_leaks(db)


@pytest.mark.parametrize("backend", ["postgres", "sqlite_file"], indirect=True)
async def test_gathered_operations_on_one_session_leak_nothing(db: Database) -> None:
    slow = text(SLOW[db.settings.dialect])
    with pytest.raises(ConcurrentSessionUseError):
        async with db.get_async_db_session() as session:
            await asyncio.gather(session.execute(slow), session.execute(slow))
    # The block ended while the first statement still ran: cleanup waited for it.
    await assert_no_leaks(db)
    async with db.get_async_db_session() as session:
        assert await session.scalar(text("select 1")) == 1


# A statement still running after the grace is stopped: cancelled on the PostgreSQL server
# (that connection is discarded), interrupted in SQLite (the connection is kept). Each
# bound is timeout + grace + the stop, not the statement's own run time.
ENDLESS = {
    "postgresql": ("select pg_sleep(30)", 5),
    "sqlite": (
        "with recursive c(x) as (select 1 union all select x + 1 from c) select max(x) from c",
        3,
    ),
}


@pytest.mark.parametrize("backend", ["postgres", "sqlite_file"], indirect=True)
async def test_a_long_statement_is_stopped_after_the_grace(make_default: Any) -> None:
    database = await make_default(pool_size=1, cancel_grace=0.1)
    statement, bound = ENDLESS[database.settings.dialect]
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1), database.get_async_db_session() as session:
            await session.execute(text(statement))
    assert asyncio.get_running_loop().time() - started < bound
    async with database.get_async_db_session() as session:
        assert await session.scalar(text("select 1")) == 1
    await assert_no_leaks(database)


async def test_a_commit_stopped_after_the_grace_says_its_outcome_is_unknown(
    postgres_url: str,
) -> None:
    database = Database(postgres_url, application_name=APP_NAME, pool_size=1, cancel_grace=0.1)
    await create_slow_commit_table(database, "slow_commit", seconds=2)
    task = asyncio.current_task()
    assert task is not None
    with pytest.raises(asyncio.CancelledError) as raised:
        async with database.get_async_db_session() as session:
            await session.execute(text("insert into slow_commit values (1)"))
            event.listen(
                session.sync_session,
                "before_commit",
                lambda _s: asyncio.get_running_loop().call_soon(task.cancel),
            )
    task.uncancel()
    assert COMMIT_ABANDONED_NOTE in getattr(raised.value, "__notes__", [])
    await assert_no_leaks(database)
    await database.dispose()


async def test_a_misused_query_is_not_mistaken_for_a_lost_connection(postgres_url: str) -> None:
    database = Database(postgres_url, application_name=APP_NAME, pool_size=1)
    discarded: list[object] = []
    event.listen(database.engine.sync_engine.pool, "invalidate", lambda *a: discarded.append(a))
    with pytest.raises(exc.DBAPIError) as raised:
        async with database.get_async_db_session() as session:
            ids = list(range(40_000))  # more parameters than the protocol allows
            await session.execute(text("select 1 where 1 in :ids").bindparams(
                bindparam("ids", expanding=True)), {"ids": ids})  # fmt: skip
    assert CONNECTION_LOST_NOTE not in "".join(getattr(raised.value, "__notes__", []))
    assert discarded == []
    await database.dispose()


async def test_dispose_from_inside_a_session_does_not_wait_for_itself(db: Database) -> None:
    async with db.get_async_db_session() as session:
        await session.execute(text("select 1"))
        async with asyncio.timeout(db.settings.cleanup_timeout / 2):
            await db.dispose()
        assert await session.scalar(text("select 2")) == 2  # still works
    gc.collect()  # and its connection was closed when it ended (no ResourceWarning)


# The guard's wait (``_Shielded``) at the edges of a driver call, on a future that stands
# for the driver's: the cases a storm hits only by chance.


def _guarded_wait() -> tuple[asyncio.Future[int], ConnectionGuard, Any, asyncio.Event]:
    loop = asyncio.get_running_loop()
    driver_future: asyncio.Future[int] = loop.create_future()
    waiting = asyncio.Event()

    async def driver_call() -> int:
        waiting.set()  # (the task waits on the future before anyone sees this)
        return await driver_future

    return driver_future, ConnectionGuard(grace=5.0, interrupt=None), driver_call(), waiting


async def _run_then_await(guard: ConnectionGuard, call: Any, results: list[int]) -> None:
    results.append(await guard.run(call))
    await asyncio.sleep(0)  # the re-armed cancellation lands here


async def test_a_cancel_as_the_call_finishes_keeps_its_result_and_lands_after() -> None:
    # The driver's future is done and the task's wake-up queued when the cancel comes: the
    # task must be woken once, with the call's result, and take the cancellation next.
    driver_future, guard, call, waiting = _guarded_wait()
    results: list[int] = []
    task = asyncio.create_task(_run_then_await(guard, call, results))
    await waiting.wait()
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: loop_errors.append(context))
    driver_future.set_result(42)
    task.cancel()
    task.cancel()  # (anyio delivers a scope's cancellation again until it lands)
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)  # (a second wake-up would fail on the finished task here)
    assert loop_errors == []
    assert results == [42] and not guard.tainted and not driver_future.cancelled()


async def test_a_cancel_while_the_call_runs_lets_it_finish_within_the_grace() -> None:
    driver_future, guard, call, waiting = _guarded_wait()
    results: list[int] = []
    task = asyncio.create_task(_run_then_await(guard, call, results))
    await waiting.wait()
    task.cancel()
    await asyncio.sleep(0)  # the task takes the cancellation and goes on waiting
    assert not driver_future.cancelled() and not task.done()
    driver_future.set_result(7)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert results == [7] and not guard.tainted


async def test_a_call_that_outlives_the_grace_is_stopped_and_taints_the_connection() -> None:
    driver_future, guard, call, waiting = _guarded_wait()
    guard.grace = 0.01
    results: list[int] = []
    task = asyncio.create_task(_run_then_await(guard, call, results))
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert results == [] and guard.tainted and driver_future.cancelled()


@pytest.mark.parametrize("backend", ["postgres", "sqlite_file"], indirect=True)
async def test_driver_method_wrappers_are_made_once_per_driver_class(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A transaction (asyncpg) or cursor (aiosqlite) is a new driver object per session: its
    # wrappers must not be made again for each (a cost per session, found by profiling).
    from atom_async_db import _proxies

    made: list[str] = []
    make = _proxies._guarded_method

    def counted(name: str, method: Any) -> Any:
        made.append(name)
        return make(name, method)

    async def sessions() -> None:
        for _ in range(3):
            async with db.get_async_db_session() as session:
                await session.execute(text("select 1"))

    await sessions()
    monkeypatch.setattr(_proxies, "_guarded_method", counted)
    await sessions()
    assert made == []


@pytest.mark.parametrize("backend", ["sqlite_file"], indirect=True)
async def test_a_driver_method_can_be_wrapped_and_patched_on_a_guarded_connection(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Instrumentation saves a method and puts a wrapper in its place; monkeypatch undoes by
    # deleting. The saved method must call the driver's own (not recurse through the
    # wrapper), and the undo must bring it back (found by review of the per-class
    # wrappers). aiosqlite's; asyncpg's Connection has no room for either.
    async with db.engine.connect() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        calls: list[str] = []
        original = raw.execute

        async def counted(sql: str) -> Any:
            calls.append(sql)
            return await original(sql)

        raw.execute = counted
        cursor = await raw.execute("select 1")
        assert await cursor.fetchall() == [(1,)] and calls == ["select 1"]
        await cursor.close()
        del raw.execute  # the driver's own method again

        async def failing(sql: str) -> Any:
            raise OSError("injected")

        monkeypatch.setattr(raw, "execute", failing)
        with pytest.raises(OSError, match="injected"):
            await raw.execute("select 1")
        monkeypatch.undo()
        cursor = await raw.execute("select 2")
        assert await cursor.fetchall() == [(2,)] and calls == ["select 1"]
        await cursor.close()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_cancelled_driver_call_leaves_no_reference_cycle(db: Database) -> None:
    # Without the cyclic GC, a task cancelled in a driver call must be freed when its last
    # reference goes: the guard's wait once kept the CancelledError, whose traceback held
    # the wait, which held the task (found by review). (PostgreSQL only: on SQLite the
    # cancellation lands in the statement's next driver call, inside SQLAlchemy's
    # execute, whose error handling keeps a cycle of its own: a frame holding
    # sys.exc_info() of the error it re-raises. A plain AsyncSession has that one too.)
    statement = SLOW[db.settings.dialect]
    in_statement = asyncio.Event()
    event.listen(db.engine.sync_engine, "before_cursor_execute", lambda *_: in_statement.set())

    async def unit() -> None:
        async with db.get_async_db_session() as session:
            await session.execute(text(statement))

    await unit()  # (connected, statement prepared)
    in_statement.clear()
    gc.collect()
    gc.disable()
    try:
        task = asyncio.create_task(unit())
        await in_statement.wait()  # the task now waits for the driver
        task.cancel()
        try:
            await task  # (which takes the cancellation the task keeps, as awaiting does)
        except asyncio.CancelledError:
            pass
        else:
            pytest.fail("the task was not cancelled")
        freed = weakref.ref(task)
        del task
        for _ in range(10):  # (callbacks already scheduled may still hold it for a turn)
            if freed() is None:
                break
            await asyncio.sleep(0)
        assert freed() is None, "the cancelled task is kept alive by a reference cycle"
    finally:
        gc.enable()
    await assert_no_leaks(db)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_asyncpgs_own_error_handling_still_runs_under_the_guard(db: Database) -> None:
    # asyncpg re-prepares a cached statement that a schema change invalidated by catching
    # the error of its own await: the guard must wake the driver's coroutine to read its
    # future's outcome itself, not throw that outcome past it (found by review).
    from atom_async_db._cancel import guard_of

    async with db.engine.begin() as connection:
        await connection.execute(text("drop table if exists guard_recache"))
        await connection.execute(text("create table guard_recache (a int)"))
        await connection.execute(text("insert into guard_recache values (1)"))
    async with db.engine.connect() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        assert guard_of(raw) is not None
        assert [tuple(row) for row in await raw.fetch("select * from guard_recache")] == [(1,)]
        async with db.engine.begin() as other:
            await other.execute(text("alter table guard_recache add column b int default 0"))
        rows = await raw.fetch("select * from guard_recache")
        assert [tuple(row) for row in rows] == [(1, 0)]


@pytest.mark.parametrize("mechanism", ["task.cancel", "anyio"])
async def test_a_cancel_during_a_request_sessions_rollback_keeps_the_connection(
    db: Database, mechanism: str
) -> None:
    # A route's session (commit=False) ends with a ROLLBACK, run inline, without a cleanup
    # task: a cancellation that arrives during it must still let it finish, return the
    # connection healthy, and then land.
    engine = db.engine.sync_engine
    opened: list[object] = []
    event.listen(engine, "connect", lambda *_: opened.append(1))
    async with db.get_async_db_session(commit=False) as warm:  # one connection, open now
        await warm.execute(text("select 1"))
    opened.clear()
    cancel: list[Any] = []

    def on_rollback(connection: Any) -> None:
        if cancel:
            cancel.pop()()  # the task is cancelled as the ROLLBACK is sent

    event.listen(engine, "rollback", on_rollback)
    try:

        async def request() -> None:
            async with db.get_async_db_session(commit=False) as session:
                await session.execute(text("select 1"))

        if mechanism == "task.cancel":
            task = asyncio.create_task(request())
            cancel.append(task.cancel)
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            async with anyio.create_task_group() as group:
                cancel.append(group.cancel_scope.cancel)
                group.start_soon(request)
            assert group.cancel_scope.cancelled_caught or group.cancel_scope.cancel_called
        assert cancel == []  # the cancel really came during the ROLLBACK
    finally:
        event.remove(engine, "rollback", on_rollback)
    async with db.get_async_db_session() as session:
        assert await session.scalar(text("select 1")) == 1
    assert opened == []  # the connection was kept, not discarded and reopened
    await assert_no_leaks(db)
