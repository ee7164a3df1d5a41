"""The SQLite fast path: what runs on the event loop's thread, what moves off it, and that
every guarantee holds either way."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select, text

from atom_async_db import Database
from tests.helpers import assert_no_leaks, reset_schema
from tests.models import User


def _database(tmp_path: Path, **options: Any) -> Database:
    """A file database whose connections answer ``select thread()`` with the id of the
    thread the statement ran on.
    """
    database = Database(f"sqlite:///{tmp_path / 'here.db'}", **options)

    @event.listens_for(database.engine.sync_engine, "connect")
    def _thread_function(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.create_function("thread", 0, threading.get_ident)

    return database


def _sent_there(database: Database, keyword: str, *setup: str) -> asyncio.Event:
    """An event set when a statement starting with ``keyword`` starts on a connection's
    thread (not the loop's); ``setup``: statements each new connection runs first.
    """
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    sent = asyncio.Event()

    @event.listens_for(database.engine.sync_engine, "connect")
    def _trace(dbapi_connection: Any, _: Any) -> None:
        raw = dbapi_connection.driver_connection._conn
        for statement in setup:
            raw.execute(statement)

        def trace(statement: str) -> None:
            if statement.startswith(keyword) and threading.get_ident() != loop_thread:
                loop.call_soon_threadsafe(sent.set)

        raw.set_trace_callback(trace)

    return sent


async def test_reads_run_on_the_loops_thread_and_writes_on_the_connections(
    tmp_path: Path,
) -> None:
    database = _database(tmp_path)
    await reset_schema(database)
    async with database.get_async_db_session() as session:
        assert await session.scalar(text("select thread()")) == threading.get_ident()
        session.add(User(email=f"{threading.get_ident()}@example.com"))
        await session.flush()
        await session.execute(text("update atom_t_users set email = thread() || '@example.com'"))
        written_on = await session.scalar(select(User.email))
    assert written_on != f"{threading.get_ident()}@example.com"
    await assert_no_leaks(database)
    await database.dispose()


async def test_only_io_makes_a_trip_to_the_connections_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy makes and closes a cursor around every statement, begins and ends every
    session; each trip to aiosqlite's thread costs a thread wake-up and two GIL hand-overs.
    """
    import aiosqlite

    database = _database(tmp_path)
    await reset_schema(database)
    trips: list[str] = []
    real = aiosqlite.Connection._execute

    async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(fn, "__name__", repr(fn)))
        return await real(self, fn, *args, **kwargs)

    async with database.get_async_db_session() as session:  # warm: connection and caches
        await session.execute(text("select 1"))
    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    async with database.get_async_db_session() as session:
        assert (await session.execute(text("select 1"))).scalar() == 1
    # BEGIN IMMEDIATE, the SELECT and its fetch, the COMMIT of nothing: none (was 9, then 4)
    assert trips == []
    async with database.get_async_db_session() as session:
        session.add(User(email="ada@example.com"))
    assert trips == ["execute", "commit"]  # the INSERT, and the COMMIT that reaches the disk
    trips.clear()
    async with database.get_async_db_session(commit=False) as session:
        assert await session.get(User, 1) is not None
    assert trips == []  # a request's session: BEGIN, SELECT, ROLLBACK
    await assert_no_leaks(database)
    await database.dispose()


async def test_a_long_read_moves_off_the_loop_and_the_transaction_is_kept(
    tmp_path: Path,
) -> None:
    database = _database(tmp_path, sqlite_loop_limit=0.001)
    await reset_schema(database)
    async with database.get_async_db_session() as session:
        await session.execute(insert(User), [{"email": f"{n}@example.com"} for n in range(1500)])
    async with database.get_async_db_session() as session:
        session.add(User(email="kept@example.com"))
        await session.flush()  # written before the read that will be stopped and moved
        pairs = text("select thread(), (select count(*) from atom_t_users a, atom_t_users b)")
        ran_on, count = (await session.execute(pairs)).one()
        assert count == 1501**2
        assert ran_on != threading.get_ident()  # stopped here past 1 ms, run there
        assert await session.scalar(select(func.count()).select_from(User)) == 1501
    async with database.get_async_db_session() as session:
        assert await session.scalar(select(User.id).where(User.email == "kept@example.com"))
    await assert_no_leaks(database)
    await database.dispose()


async def test_begin_waits_for_the_write_lock_off_the_loop(tmp_path: Path) -> None:
    database = _database(tmp_path, sqlite_busy_timeout=10)
    waiting_there = _sent_there(database, "BEGIN")
    await reset_schema(database)
    holder = sqlite3.connect(tmp_path / "here.db", isolation_level=None)  # another process, say
    holder.execute("BEGIN IMMEDIATE")

    async def add_a_user() -> None:
        async with database.get_async_db_session() as session:
            session.add(User(email="waited@example.com"))

    adding = asyncio.create_task(add_a_user())
    # The BEGIN found the lock taken here and now waits for it on the connection's thread,
    # while the loop runs on: this task is woken, and ends the holder's transaction.
    async with asyncio.timeout(5):
        await waiting_there.wait()
    holder.commit()
    await adding
    async with database.get_async_db_session() as session:
        assert await session.scalar(select(func.count()).select_from(User)) == 1
    holder.close()
    await assert_no_leaks(database)
    await database.dispose()


async def test_rows_read_here_are_all_delivered_when_streamed(tmp_path: Path) -> None:
    database = _database(tmp_path)
    await reset_schema(database)
    emails = [f"{n}@example.com" for n in range(25)]
    async with database.get_async_db_session() as session:
        await session.execute(insert(User), [{"email": email} for email in emails])
    async with database.get_async_db_session() as session:
        query = select(User.email).order_by(User.id)
        streamed = await session.stream_scalars(query)
        assert [email async for email in streamed] == emails
        result = await session.stream(query)
        partitions = [len(rows) async for rows in result.partitions(10)]
        assert partitions == [10, 10, 5]
        assert (await session.execute(query)).scalars().all() == emails
    await assert_no_leaks(database)
    await database.dispose()


async def test_two_tasks_reading_through_one_session_each_get_their_answer(
    tmp_path: Path,
) -> None:
    # Once the session holds its connection, each read ends before another task can start
    # one, so there is no collision to report (on PostgreSQL, for writes, and while the
    # connection is being opened, ConcurrentSessionUseError explains it).
    database = _database(tmp_path)
    async with database.get_async_db_session() as session:
        await session.execute(text("select 1"))
        answers = await asyncio.gather(*(session.scalar(text(f"select {n}")) for n in range(10)))
    assert answers == list(range(10))
    await database.dispose()


async def test_a_task_that_only_reads_still_lets_other_tasks_run(tmp_path: Path) -> None:
    # Nothing here waits, so without a turn of the loop now and then (after
    # sqlite_loop_limit), a worker's loop of short sessions would stop every other task.
    database = _database(tmp_path)
    other_task_ran = asyncio.Event()

    async def other_task() -> None:
        other_task_ran.set()

    async def reader() -> int:
        for sessions in range(10_000):
            if other_task_ran.is_set():
                return sessions
            async with database.get_async_db_session() as session:
                await session.scalar(text("select 1"))
        return 10_000

    async with database.get_async_db_session() as session:  # (opens the connection)
        await session.scalar(text("select 1"))
    reading = asyncio.create_task(reader())
    await asyncio.sleep(0)  # the reader starts first
    other = asyncio.create_task(other_task())
    assert await reading < 10_000
    await other
    await assert_no_leaks(database)
    await database.dispose()


async def test_a_commit_outside_wal_mode_waits_for_readers_off_the_loop(tmp_path: Path) -> None:
    # In rollback-journal mode (a file system without shared memory, or an application's
    # own journal_mode) a writing COMMIT needs every reader gone; it waits on the thread.
    database = _database(tmp_path, sqlite_busy_timeout=10)
    waiting_there = _sent_there(database, "COMMIT", "PRAGMA journal_mode=DELETE")
    await reset_schema(database)
    reader = sqlite3.connect(tmp_path / "here.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("select count(*) from atom_t_users").fetchall()  # holds a shared lock

    async def add_a_user() -> None:
        async with database.get_async_db_session() as session:
            session.add(User(email="committed@example.com"))

    adding = asyncio.create_task(add_a_user())
    async with asyncio.timeout(5):
        await waiting_there.wait()
    # A COMMIT that does not wait fails at once ("database is locked"); this one must still
    # be waiting half a second later (its busy timeout is 10 s), then go through.
    await asyncio.wait({adding}, timeout=0.5)
    assert not adding.done()
    reader.commit()
    await adding
    async with database.get_async_db_session() as session:
        assert await session.scalar(select(func.count()).select_from(User)) == 1
    reader.close()
    await assert_no_leaks(database)
    await database.dispose()


def test_a_loop_that_stopped_before_its_next_turn_does_not_hold_up_the_next(
    tmp_path: Path,
) -> None:
    # Found by review: the hold of the loop was counted per thread, and a loop that stopped
    # right after a statement here left it running for the next loop, which then waited
    # for turns that could never end it (RecursionError).
    path = tmp_path / "here.db"
    database = Database(f"sqlite:///{path}")
    # (a limit of a nanosecond: any time since the first loop's statement is past it)
    other = Database(f"sqlite:///{path}", sqlite_loop_limit=1e-9)

    async def read(db: Database) -> Any:
        async with db.get_async_db_session() as session:
            return await session.scalar(text("select 1"))

    pending: list[asyncio.Future[Any]] = []

    async def read_in_the_last_turn() -> None:
        pending.append(asyncio.ensure_future(read(database)))  # runs as the loop stops

    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert first.run_until_complete(read(database)) == 1  # (opens the connection)
        first.run_until_complete(read_in_the_last_turn())
        assert pending[0].done()  # its whole session ran here, in the loop's last turn
        assert second.run_until_complete(read(other)) == 1
    finally:
        first.run_until_complete(database.dispose())
        second.run_until_complete(other.dispose())
        first.close()
        second.close()


async def test_a_cursor_forgets_rows_read_here_when_it_runs_something_there(
    tmp_path: Path,
) -> None:
    database = _database(tmp_path)
    async with database.engine.begin() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        cursor = await raw.cursor()
        await cursor.execute("create temp table scratch (x)")
        await cursor.execute("select 1, 'read here'")
        await cursor.executemany("insert into scratch values (?)", [(1,), (2,)])
        assert await cursor.fetchall() == []  # as sqlite3 says after executemany
        await cursor.close()
    await database.dispose()
