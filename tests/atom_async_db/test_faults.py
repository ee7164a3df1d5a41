"""Real faults on PostgreSQL: killed backends, server-side timeouts, a connection lost while
COMMIT is in flight, an exhausted pool, and one session used by two tasks at once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import event, exc, text

from atom_async_db import (
    CommitOutcomeUnknownError,
    ConcurrentSessionUseError,
    Database,
    PoolTimeoutError,
)
from tests.helpers import (
    APP_NAME,
    assert_no_leaks,
    asyncpg_dsn,
    create_deferred_child_table,
    create_slow_commit_table,
    hold_a_session,
)


async def terminate_our_backends(url: str) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await connection.fetch(
            "select pg_terminate_backend(pid) from pg_stat_activity where application_name = $1",
            APP_NAME,
        )
    finally:
        await connection.close()
    return len(rows)


async def test_every_pooled_connection_killed_then_50_sessions_succeed(postgres_url: str) -> None:
    database = Database(postgres_url, application_name=APP_NAME, pool_size=5, max_overflow=0)

    async def hold() -> None:
        async with database.get_async_db_session() as session:
            await session.execute(text("select pg_sleep(0.05)"))

    await asyncio.gather(*(hold() for _ in range(5)))  # five pooled connections
    assert await terminate_our_backends(postgres_url) == 5
    for _ in range(50):
        async with database.get_async_db_session() as session:
            assert await session.scalar(text("select 1")) == 1
    await assert_no_leaks(database)
    await database.dispose()


@pytest.mark.parametrize("setting", ["statement_timeout", "idle_in_transaction_session_timeout"])
async def test_a_session_killed_by_a_server_timeout_is_a_clear_error(
    postgres_url: str, setting: str
) -> None:
    database = Database(
        postgres_url,
        application_name=APP_NAME,
        pool_size=2,
        max_overflow=0,
        engine_options={"connect_args": {"server_settings": {setting: "200"}}},
    )
    for _ in range(5):
        with pytest.raises(exc.DBAPIError) as raised:
            async with database.get_async_db_session() as session:
                if setting == "statement_timeout":
                    await session.execute(text("select pg_sleep(1)"))
                else:
                    await session.execute(text("select 1"))
                    await asyncio.sleep(0.5)  # idle in the transaction: the fault itself
                    await session.execute(text("select 1"))
        if setting == "statement_timeout":
            assert "canceling statement due to statement timeout" in str(raised.value)
        else:
            assert "idle_in_transaction_session_timeout" in "".join(raised.value.__notes__)
    results = await asyncio.gather(*(_select_one(database) for _ in range(200)))
    assert results == [1] * 200
    await assert_no_leaks(database)
    await database.dispose()


async def _select_one(database: Database) -> int:
    async with database.get_async_db_session() as session:
        return int(await session.scalar(text("select 1")))


async def test_connection_lost_during_commit_is_an_unknown_outcome(postgres_url: str) -> None:
    database = Database(postgres_url, application_name=APP_NAME, pool_size=1, max_overflow=0)
    await create_slow_commit_table(database, "commit_probe", seconds=5)

    committing = asyncio.Event()

    async def kill_when_committing() -> None:
        # The deferred trigger holds COMMIT open for 5 s; the kill lands inside it.
        await committing.wait()
        assert await terminate_our_backends(postgres_url) == 1

    killer = asyncio.create_task(kill_when_committing())
    with pytest.raises(CommitOutcomeUnknownError) as raised:
        async with asyncio.timeout(30), database.get_async_db_session() as session:
            await session.execute(text("insert into commit_probe values (1)"))
            event.listen(session.sync_session, "before_commit", lambda _s: committing.set())
    await killer
    assert isinstance(raised.value, exc.OperationalError)  # existing handlers still catch it
    assert any("may or may not have been committed" in n for n in raised.value.__notes__)
    async with database.get_async_db_session() as session:  # the pool recovered
        assert await session.scalar(text("select count(*) from commit_probe")) == 0
    await assert_no_leaks(database)
    await database.dispose()


async def test_a_failing_commit_with_a_known_outcome_is_not_unknown(postgres_url: str) -> None:
    database = Database(postgres_url, application_name=APP_NAME, pool_size=1)
    child = await create_deferred_child_table(database, "commit")
    with pytest.raises(exc.IntegrityError) as raised:
        async with database.get_async_db_session() as session:
            await session.execute(text(f"insert into {child} values (42)"))
    assert not isinstance(raised.value, CommitOutcomeUnknownError)
    await assert_no_leaks(database)
    await database.dispose()


@pytest.mark.parametrize("backend", ["sqlite_file", "postgres"], indirect=True)
async def test_exhausted_pool_names_its_size_and_the_settings(backend_url: str) -> None:
    database = Database(
        backend_url, application_name=APP_NAME, pool_size=1, max_overflow=0, pool_timeout=0.2
    )
    holder = await hold_a_session(database)
    with pytest.raises(PoolTimeoutError) as raised:
        async with database.get_async_db_session() as second:
            await second.execute(text("select 1"))
    await holder.end()
    message = str(raised.value)
    assert isinstance(raised.value, exc.TimeoutError)
    for fact in ("pool_timeout=0.2", "checked out: 1", "pool_size=1",
                 "max_overflow=0"):  # fmt: skip
        assert fact in message, message
    async with database.get_async_db_session() as session:  # no hang, no deadlock after
        assert await session.scalar(text("select 1")) == 1
    await assert_no_leaks(database)
    await database.dispose()


async def test_one_session_used_by_two_tasks_at_once_is_explained(backend_url: str) -> None:
    # (sqlite_loop_limit=0: reads on SQLite overlap as on PostgreSQL, see test_sqlite_here)
    db = Database(backend_url, application_name=APP_NAME, sqlite_loop_limit=0)
    async with db.get_async_db_session() as session:
        results = await asyncio.gather(
            *(session.scalar(text("select 1")) for _ in range(10)), return_exceptions=True
        )
        assert results[0] == 1
        for refused in results[1:]:
            assert isinstance(refused, ConcurrentSessionUseError)
            assert "one session per task" in str(refused)
        assert await session.scalar(text("select 1")) == 1  # the session still works
    await db.dispose()


async def test_a_session_handed_to_another_task_after_use_is_fine(db: Database) -> None:
    async with db.get_async_db_session() as session:
        await session.execute(text("select 1"))
        # e.g. a streaming body or a background task, run after the route is done with it
        assert await asyncio.create_task(session.scalar(text("select 2"))) == 2
