"""Engine rules per dialect: pool settings, application_name, the SQLite profile."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from atom_async_db import Database, SessionNestingError
from atom_async_db._engine import MEMORY_CONCURRENCY_NOTE
from tests.helpers import APP_NAME, assert_no_leaks, our_backends, reset_schema, run_python
from tests.models import Post, User


async def test_pool_settings_follow_the_seed_and_the_options(postgres_url: str) -> None:
    default = Database(postgres_url, application_name=APP_NAME)
    tuned = Database(
        postgres_url,
        application_name=APP_NAME,
        pool_size=3,
        max_overflow=2,
        pool_timeout=7,
        pool_recycle=60,
    )
    assert (default.engine.pool.size(), default.engine.pool._max_overflow) == (20, 30)  # type: ignore[attr-defined]
    pool = tuned.engine.pool
    assert (pool.size(), pool._max_overflow, pool._timeout, pool._recycle) == (3, 2, 7, 60)  # type: ignore[attr-defined]
    await default.dispose()
    await tuned.dispose()


async def test_libpq_connect_timeout_in_the_url_works_on_both_engines(postgres_url: str) -> None:
    database = Database(f"{postgres_url}?connect_timeout=3", application_name=APP_NAME)
    try:
        async with database.get_async_db_session() as session:
            assert (await session.execute(text("select 1"))).scalar() == 1
        with database.sync_engine.connect() as connection:
            assert connection.scalar(text("select 1")) == 1
    finally:
        await database.dispose()


async def test_connections_carry_the_application_name(db: Database, backend: str) -> None:
    if backend != "postgres":
        assert db.settings.application_name == APP_NAME  # SQLite has no sessions to label
        return
    async with db.get_async_db_session() as session:
        name = (await session.execute(text("select current_setting('application_name')"))).scalar()
        assert name == APP_NAME
        assert await our_backends(db.url, state="idle in transaction") == ["idle in transaction"]


# --------------------------------------------------------------------------- SQLite profile


@pytest.fixture
async def sqlite_file(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'rules.db'}", pool_size=5, sqlite_busy_timeout=10)
    await reset_schema(database)
    yield database  # type: ignore[misc]
    await assert_no_leaks(database)
    await database.dispose()


async def test_every_pooled_sqlite_connection_gets_the_pragmas(sqlite_file: Database) -> None:
    async def pragmas(all_connected: asyncio.Barrier) -> tuple[object, ...]:
        async with sqlite_file.engine.connect() as connection:
            await all_connected.wait()  # five connections out of the pool at once
            rows = [
                await connection.exec_driver_sql(f"pragma {p}")
                for p in ("journal_mode", "foreign_keys", "busy_timeout")
            ]
            return tuple(row.scalar() for row in rows)

    # busy_timeout 0: nothing on the loop's thread waits for the lock; what may wait is sent
    # to the connection's thread with sqlite_busy_timeout (see test_sqlite_here)
    five = asyncio.Barrier(5)
    assert await asyncio.gather(*(pragmas(five) for _ in range(5))) == [("wal", 1, 0)] * 5
    await sqlite_file.engine.dispose()  # new pool, new connections: same rules
    assert await pragmas(asyncio.Barrier(1)) == ("wal", 1, 0)


async def test_sqlite_foreign_keys_are_enforced_and_cascade(sqlite_file: Database) -> None:
    async with sqlite_file.get_async_db_session() as session:
        session.add(User(email="a@example.com", posts=[Post(title="one"), Post(title="two")]))
    async with sqlite_file.get_async_db_session() as session:
        await session.execute(text("delete from atom_t_users"))
    async with sqlite_file.get_async_db_session() as session:
        assert (await session.execute(select(func.count()).select_from(Post))).scalar() == 0
    with pytest.raises(IntegrityError, match="FOREIGN KEY"):
        async with sqlite_file.get_async_db_session() as session:
            session.add(Post(user_id=12345, title="orphan"))


async def test_sqlite_read_then_write_writers_lose_nothing(sqlite_file: Database) -> None:
    # A deferred BEGIN loses most of these to "database is locked"; BEGIN IMMEDIATE none.
    async with sqlite_file.get_async_db_session() as session:
        session.add(User(email="counter@example.com", data_count=0))

    async def writer() -> None:
        for _ in range(50):
            async with sqlite_file.get_async_db_session() as session:
                user = (await session.execute(select(User))).scalar_one()
                await session.execute(
                    update(User).where(User.id == user.id).values(data_count=user.data_count + 1)
                )

    await asyncio.gather(*(writer() for _ in range(20)))
    async with sqlite_file.get_async_db_session() as session:
        assert (await session.execute(select(User.data_count))).scalar() == 1000


async def test_sqlite_savepoints_roll_back_only_their_part(sqlite_file: Database) -> None:
    async with sqlite_file.get_async_db_session() as session:
        session.add(User(email="kept@example.com"))
        savepoint = await session.begin_nested()
        session.add(User(email="undone@example.com"))
        await session.flush()
        await savepoint.rollback()
    async with sqlite_file.get_async_db_session() as session:
        assert set((await session.execute(select(User.email))).scalars()) == {"kept@example.com"}


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///{tmp_path}/busy.db"])
async def test_sqlite_independent_session_inside_a_transaction_fails_at_once(
    url: str, tmp_path: Path
) -> None:
    database = Database(url.format(tmp_path=tmp_path), pool_size=2)
    await reset_schema(database)
    async with database.get_async_db_session() as outer:
        await outer.execute(select(1))  # outer holds a transaction: SQLite's one at a time
        with pytest.raises(SessionNestingError, match="drop independent=True"):
            async with database.get_async_db_session(independent=True):
                pass
    await database.dispose()


async def test_sqlite_second_writer_waits_for_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    holder = Database(f"sqlite:///{path}")
    other = Database(f"sqlite:///{path}", sqlite_busy_timeout=0.2)  # another process, say
    await reset_schema(holder)
    async with holder.get_async_db_session() as session:
        session.add(User(email="holder@example.com"))
        await session.flush()  # holder holds the write lock
        with pytest.raises(OperationalError, match="database is locked"):
            async with other.get_async_db_session() as blocked:
                await blocked.execute(select(1))
    await holder.dispose()
    await other.dispose()


async def test_memory_sessions_take_turns_and_never_undo_each_other() -> None:
    # With one connection shared by interleaved sessions, B's rollback would undo A's commit.
    database = Database("sqlite://")
    await reset_schema(database)
    a_committed = asyncio.Event()

    async def a() -> None:
        async with database.get_async_db_session() as session:
            session.add(User(email="a@example.com"))
        a_committed.set()

    async def b() -> None:
        with pytest.raises(RuntimeError):
            async with database.get_async_db_session() as session:
                session.add(User(email="b@example.com"))
                await session.flush()
                task_a = asyncio.create_task(a())
                with pytest.raises(TimeoutError):  # a waits for the single connection
                    await asyncio.wait_for(asyncio.shield(a_committed.wait()), 0.2)
                raise RuntimeError("b rolls back")
        await task_a

    await b()
    assert a_committed.is_set()
    async with database.get_async_db_session() as session:
        assert set((await session.execute(select(User.email))).scalars()) == {"a@example.com"}
    await database.dispose()


def test_memory_database_is_shared_by_every_loop_and_outlives_each() -> None:
    database = Database("sqlite:///:memory:")

    async def create() -> None:  # (its loop's engine is disposed as the loop ends)
        await reset_schema(database)
        async with database.get_async_db_session() as session:
            session.add(User(email="first-loop@example.com"))

    async def read() -> set[str]:
        async with database.get_async_db_session() as session:
            return set((await session.execute(select(User.email))).scalars())

    asyncio.run(create())
    assert asyncio.run(read()) == {"first-loop@example.com"}
    other = Database("sqlite://")  # another memory database is another database

    async def tables_of_other() -> list[str]:
        async with other.engine.connect() as connection:
            rows = await connection.exec_driver_sql("select name from sqlite_master")
            names = list(rows.scalars())
        await other.dispose()
        return names

    assert asyncio.run(tables_of_other()) == []


def test_memory_database_written_from_two_loops_at_once_explains_the_fix() -> None:
    database = Database("sqlite://")
    first_holds_lock = threading.Event()
    release_first = threading.Event()

    async def first() -> None:
        await reset_schema(database)
        async with database.get_async_db_session() as session:
            session.add(User(email="first@example.com"))
            await session.flush()
            first_holds_lock.set()
            await asyncio.to_thread(release_first.wait)
        await database.dispose()

    async def second() -> None:
        try:
            async with database.get_async_db_session() as session:
                session.add(User(email="second@example.com"))
        finally:
            await database.dispose()

    holder = threading.Thread(target=asyncio.run, args=(first(),))
    holder.start()
    try:
        assert first_holds_lock.wait(10)
        with pytest.raises(OperationalError, match="table is locked") as raised:
            asyncio.run(second())
        assert MEMORY_CONCURRENCY_NOTE in (raised.value.__notes__ or [])
    finally:
        release_first.set()
        holder.join()


def test_a_program_on_sqlite_exits_promptly_without_disposing(tmp_path: Path) -> None:
    # aiosqlite runs a thread per connection; none of them may keep the process alive.
    code = (
        "import asyncio, sys, time\n"
        "from sqlalchemy import text\n"
        "import atom_async_db\n"
        "atom_async_db.configure(sys.argv[1], pool_size=3)\n"
        "async def main():\n"
        "    async def use():\n"
        "        async with atom_async_db.get_async_db_session() as s:\n"
        "            await s.execute(text('select 1'))\n"
        "    await asyncio.gather(*(use() for _ in range(3)))\n"
        "    task = asyncio.create_task(use())\n"
        "    await asyncio.sleep(0)\n"
        "    task.cancel()\n"
        "asyncio.run(main())\n"
        "print('done', flush=True)\n"
    )
    started = time.monotonic()
    output = run_python(code, f"sqlite:///{tmp_path / 'exit.db'}", timeout=20)
    assert "done" in output
    assert time.monotonic() - started < 10
