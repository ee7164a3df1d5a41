"""The three places legacy code runs: worker threads and scripts (the sync engine),
``run_legacy`` (the async pool, through the greenlet bridge) and the event loop's own
thread (works, warns, never waits for what only the loop can release)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import OperationalError

import atom_async_db
from atom_async_db import (
    Database,
    PoolTimeoutError,
    SessionNestingError,
    SyncSessionContextError,
    SyncSessionOnEventLoopError,
    SyncSessionOnEventLoopWarning,
)
from atom_async_db._engine import LOOP_THREAD_LOCK_NOTE, MEMORY_CONCURRENCY_NOTE
from sync_compat import SessionLocal, get_db_session, run_legacy
from tests.helpers import APP_NAME, emails, our_backends, run_python
from tests.models import User
from tests.sync_compat.conftest import add_users

MakeDefault = Callable[..., Awaitable[Database]]


def create_user(email: str) -> int:
    with get_db_session() as db:
        user = User(email=email)
        db.add(user)
        db.flush()
        return user.id


def count_users() -> int:
    with get_db_session() as db:
        return int(db.scalar(select(func.count(User.id))) or 0)


# --------------------------------------------------------------------------- threads


# (An in-memory database takes one writer at a time and cannot make others wait: concurrent
# writing threads get a clear error there, see the memory test below.)
@pytest.mark.parametrize("backend", ["sqlite_file", "postgres"], indirect=True)
async def test_threads_share_the_sync_pool(db: Database) -> None:
    ids = await asyncio.gather(
        *(asyncio.to_thread(create_user, f"t{i}@example.com") for i in range(40))
    )
    assert len(set(ids)) == 40
    assert len(await emails()) == 40
    pool = db.sync_engine.pool
    assert pool.size() == db.settings.sync_pool_size  # type: ignore[attr-defined]


async def test_nested_blocks_in_a_thread_join_the_outer_transaction(
    make_default: MakeDefault,
) -> None:
    # One connection in the sync pool: a nested block that took a second one would wait
    # for itself until pool_timeout.
    await make_default(sync_pool_size=1, sync_max_overflow=0, pool_timeout=5)

    def outer_with_failing_inner() -> None:
        with get_db_session() as db:
            db.add(User(email="outer@example.com"))
            try:
                with get_db_session():
                    create_user("inner-failed@example.com")
                    raise RuntimeError("inner fails")
            except RuntimeError:
                pass
            create_user("inner-ok@example.com")

    await asyncio.to_thread(outer_with_failing_inner)
    assert await emails() == {"outer@example.com", "inner-ok@example.com"}


async def test_no_lost_update_between_nested_blocks_in_a_thread(db: Database) -> None:
    [user_id] = await add_users("a@example.com", data_count=1)

    def bump() -> None:  # a service that keeps no reference to what it changed
        with get_db_session() as db:
            db.get(User, user_id).data_count += 1  # type: ignore[union-attr]

    def outer() -> None:
        with get_db_session() as db:
            user = db.get(User, user_id)
            assert user is not None
            bump()
            assert user.data_count == 2
            user.data_count += 10

    await asyncio.to_thread(outer)
    assert await asyncio.to_thread(lambda: get_user_count(user_id)) == 12


def get_user_count(user_id: int) -> int:
    with get_db_session() as db:
        user = db.get(User, user_id)
        assert user is not None
        return user.data_count


async def test_sync_connections_follow_the_engine_rules(db: Database) -> None:
    def settings_seen() -> Any:
        with get_db_session() as session:
            if db.settings.dialect == "postgresql":
                return session.scalar(text("show application_name"))
            return (
                session.scalar(text("pragma foreign_keys")),
                session.scalar(text("pragma busy_timeout")),
            )

    seen = await asyncio.to_thread(settings_seen)
    if db.settings.dialect == "postgresql":
        assert seen == APP_NAME
        assert db.sync_engine.dialect.driver == "psycopg"
    else:
        assert seen == (1, int(db.settings.sqlite_busy_timeout * 1000))


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_named_sync_driver_is_used_when_installed_else_psycopg(backend_url: str) -> None:
    database = Database(backend_url.replace("+asyncpg", "+psycopg2"), application_name=APP_NAME)
    try:
        with database.sync_engine.connect() as connection:
            assert connection.scalar(text("select 1")) == 1
        expected = "psycopg2" if importlib.util.find_spec("psycopg2") else "psycopg"
        assert database.sync_engine.dialect.driver == expected
    finally:
        await database.dispose()


@pytest.mark.parametrize("backend", ["sqlite_memory"], indirect=True)
async def test_memory_database_threads_see_the_async_data_or_get_a_clear_error(
    db: Database,
) -> None:
    await add_users("async@example.com")
    assert await asyncio.to_thread(count_users) == 1
    async with atom_async_db.get_async_db_session() as session:
        session.add(User(email="held@example.com"))
        await session.flush()  # this loop's transaction now holds the write lock
        with pytest.raises(OperationalError) as caught:
            await asyncio.to_thread(create_user, "thread@example.com")
    assert MEMORY_CONCURRENCY_NOTE in caught.value.__notes__


# --------------------------------------------------------------------------- run_legacy


async def test_run_legacy_shares_the_async_pool_and_never_exceeds_it(
    make_default: MakeDefault, backend: str
) -> None:
    database = await make_default(pool_size=5, max_overflow=0)
    pool: Any = database.engine.pool
    opened = pool.checkedin() + pool.checkedout()  # count every connection the pool opens

    @event.listens_for(database.engine.sync_engine, "connect")
    def _count(*_: Any) -> None:
        nonlocal opened
        opened += 1

    seen: list[int] = []
    done = asyncio.Event()

    async def watch_server() -> None:
        while not done.is_set():
            seen.append(len(await our_backends(database.url)))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch_server()) if backend == "postgres" else None
    ids = await asyncio.gather(*(run_legacy(create_user, f"r{i}@example.com") for i in range(200)))
    done.set()
    if watcher is not None:
        await watcher
        assert seen and max(seen) <= 5
    assert len(set(ids)) == 200
    assert 1 <= opened <= pool.size()
    assert database._sync_engine is None  # no thread, no second pool
    assert len(await emails()) == 200


async def test_run_legacy_joins_the_calling_tasks_session(db: Database) -> None:
    async with atom_async_db.get_async_db_session() as outer:
        outer.add(User(email="outer@example.com"))
        await outer.flush()
        # The legacy code sees the outer block's uncommitted row: same transaction.
        assert await run_legacy(count_users) == 1
        await run_legacy(create_user, "legacy@example.com")
        await outer.rollback()  # ...and the outer block decides about its writes too
    assert await emails() == set()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_run_legacy_does_not_block_the_loop(make_default: MakeDefault) -> None:
    await make_default(pool_size=5, max_overflow=0)

    def slow_legacy_call() -> None:
        with get_db_session() as db:
            db.execute(text("select pg_sleep(0.5)"))

    async def longest_stall(work: Callable[[], Awaitable[object]]) -> float:
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()
        longest = 0.0

        async def tick() -> None:
            nonlocal longest
            while not finished.is_set():
                before = loop.time()
                await asyncio.sleep(0.005)
                longest = max(longest, loop.time() - before)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)  # let the ticker start before the work
        try:
            await work()
        finally:
            finished.set()
            await ticker
        return longest

    async def through_run_legacy() -> None:
        await asyncio.gather(*(run_legacy(slow_legacy_call) for _ in range(10)))

    async def on_the_loop_thread() -> None:
        slow_legacy_call()

    assert await longest_stall(through_run_legacy) < 0.25
    with pytest.warns(SyncSessionOnEventLoopWarning):
        assert await longest_stall(on_the_loop_thread) >= 0.5  # the control: a real stall


async def test_session_local_inside_run_legacy_uses_the_async_pool(db: Database) -> None:
    def manual_session() -> int:
        session = SessionLocal()
        try:
            session.add(User(email="manual@example.com"))
            session.commit()
            return int(session.scalar(select(func.count(User.id))) or 0)
        finally:
            session.close()

    assert await run_legacy(manual_session) == 1
    assert db._sync_engine is None


# --------------------------------------------------------------------------- on the loop thread


async def test_loop_thread_use_warns_at_the_callers_line(db: Database) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with get_db_session() as session:
            line = _line() + 1
            session.execute(text("select 1"))
    [warning] = caught
    assert warning.category is SyncSessionOnEventLoopWarning
    assert (warning.filename, warning.lineno) == (__file__, line)
    assert "run_legacy" in str(warning.message)


def _line() -> int:
    import inspect

    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


async def test_strict_mode_raises_before_taking_a_connection(make_default: MakeDefault) -> None:
    database = await make_default(sync_on_event_loop="error")
    with pytest.raises(SyncSessionOnEventLoopError, match="sync_on_event_loop='error'"):
        create_user("strict@example.com")
    assert database.sync_engine.pool.checkedout() == 0
    assert await run_legacy(create_user, "fine@example.com") == 1  # the suggested fix works
    assert await asyncio.to_thread(count_users) == 1  # threads are unaffected


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_loop_thread_never_waits_for_an_exhausted_sync_pool(
    make_default: MakeDefault, caplog: pytest.LogCaptureFixture
) -> None:
    database = await make_default(sync_pool_size=1, sync_max_overflow=0, pool_timeout=30)
    holding, release = threading.Event(), threading.Event()

    def hold_the_only_connection() -> None:
        with get_db_session() as db:
            db.execute(text("select 1"))
            holding.set()
            release.wait(30)

    holder = asyncio.create_task(asyncio.to_thread(hold_the_only_connection))
    await asyncio.to_thread(holding.wait, 30)
    caplog.set_level(logging.WARNING, logger="atom_async_db")
    with pytest.warns(SyncSessionOnEventLoopWarning):
        user_id = create_user("loop@example.com")  # would freeze the loop for 30 s
    release.set()
    await holder
    assert user_id == 1
    assert "sync pool" in caplog.text and "exhausted" in caplog.text
    assert database.sync_engine.pool.checkedout() == 0


@pytest.mark.parametrize("backend", ["sqlite_file"], indirect=True)
async def test_loop_thread_never_waits_for_the_sqlite_write_lock(db: Database) -> None:
    holding, release = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:
        with get_db_session() as session:
            session.add(User(email="holder@example.com"))
            session.flush()
            holding.set()
            release.wait(30)

    holder = asyncio.create_task(asyncio.to_thread(hold_the_write_lock))
    await asyncio.to_thread(holding.wait, 30)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.warns(SyncSessionOnEventLoopWarning), pytest.raises(OperationalError) as caught:
            create_user("loop@example.com")
    finally:
        release.set()
        await holder
    assert loop.time() - started < db.settings.sqlite_busy_timeout / 2  # failed, not waited
    assert "database is locked" in str(caught.value)
    assert LOOP_THREAD_LOCK_NOTE in caught.value.__notes__
    assert await asyncio.to_thread(create_user, "thread@example.com") == 2  # threads wait


SYNC_FORK = """
import os, sys
from sqlalchemy import text
import atom_async_db, sync_compat
from sync_compat import get_db_session

atom_async_db.configure(sys.argv[1], application_name=sys.argv[2])

def backend_pids(n):
    pids = set()
    for _ in range(n):
        with get_db_session() as db:
            pids.add(db.scalar(text("select pg_backend_pid()")))
    return pids

before = backend_pids(5)
child = os.fork()
if child == 0:
    code = 3 if backend_pids(20) & before else 0
    sync_compat.dispose()
    os._exit(code)
after = backend_pids(20)
_, status = os.waitpid(child, 0)
print("child exit", os.waitstatus_to_exitcode(status), "parent reused", after <= before)
sync_compat.dispose()
"""


def test_fork_child_never_reuses_the_parents_sync_connections(postgres_url: str) -> None:
    output = run_python(SYNC_FORK, postgres_url, APP_NAME)
    assert "child exit 0 parent reused True" in output


# --------------------------------------------------------------------------- misuse, made clear


async def test_a_transaction_begun_in_run_legacy_cannot_continue_outside_it(
    db: Database,
) -> None:
    session = SessionLocal()
    await run_legacy(session.execute, text("select 1"))
    with pytest.raises(SyncSessionContextError, match="began inside run_legacy"):
        await asyncio.to_thread(session.execute, text("select 1"))
    await run_legacy(session.close)  # finishing it where it began works


async def test_a_transaction_begun_in_a_thread_warns_when_run_legacy_blocks_on_it(
    db: Database,
) -> None:
    session = SessionLocal()
    await asyncio.to_thread(session.execute, text("select 1"))
    with pytest.warns(SyncSessionOnEventLoopWarning):
        await run_legacy(session.execute, text("select 1"))  # the sync driver, on the loop
    await asyncio.to_thread(session.close)


async def test_run_legacy_refuses_async_code() -> None:
    async def coroutine_function() -> None:
        pass

    with pytest.raises(TypeError, match="coroutine function: await it directly"):
        await run_legacy(coroutine_function)
    with pytest.raises(TypeError, match="returned an awaitable: await it directly"):
        await run_legacy(lambda: coroutine_function())  # closed, so no "never awaited" warning


async def test_independent_block_commits_on_its_own(db: Database) -> None:
    def work_that_fails_after_an_audit_record() -> None:
        with get_db_session() as db:
            db.scalar(select(func.count(User.id)))
            with get_db_session(independent=True) as audit:
                audit.add(User(email="audit@example.com"))
            db.add(User(email="work@example.com"))
            raise RuntimeError("work fails")

    with pytest.raises(RuntimeError):
        await asyncio.to_thread(work_that_fails_after_an_audit_record)
    assert await emails() == {"audit@example.com"}


@pytest.mark.parametrize("backend", ["sqlite_file"], indirect=True)
async def test_sqlite_independent_block_after_the_outer_wrote_fails_at_once(db: Database) -> None:
    def independent_after_a_write() -> None:
        with get_db_session() as db:
            db.add(User(email="outer@example.com"))
            db.flush()
            with get_db_session(independent=True):
                pass

    with pytest.raises(SessionNestingError, match="independent=True"):
        await asyncio.to_thread(independent_after_a_write)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_exhausted_sync_pool_names_the_sync_settings(make_default: MakeDefault) -> None:
    await make_default(sync_pool_size=1, sync_max_overflow=0, pool_timeout=0.2)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with get_db_session() as db:
            db.execute(text("select 1"))
            holding.set()
            release.wait(10)

    holder = asyncio.create_task(asyncio.to_thread(hold))
    await asyncio.to_thread(holding.wait, 10)
    try:
        with pytest.raises(PoolTimeoutError) as raised:
            await asyncio.to_thread(count_users)
    finally:
        release.set()
        await holder
    message = str(raised.value)
    assert "sync_pool_size=1" in message and "sync_max_overflow=0" in message, message


# The README's port of a classic core/database.py, used the way such applications do at
# import time (create_all before any event loop runs), then the seed's three entry points.
CLASSIC_DATABASE_PY = """
import sys
from sqlalchemy import Column, Integer, String, func, select
from sqlalchemy.orm import declarative_base

# --- core/database.py, ported ---
from atom_async_db import get_database
from sync_compat import SessionLocal, get_db, get_db_session, run_legacy  # noqa: F401

engine = get_database().sync_engine  # sync: Base.metadata.create_all(bind=engine), scripts
Base = declarative_base()
# --- end ---

class Item(Base):
    __tablename__ = sys.argv[1]
    id = Column(Integer, primary_key=True)
    name = Column(String(50))

Base.metadata.create_all(bind=engine)
with get_db_session() as db:
    db.add(Item(name="from get_db_session"))
dependency = get_db()
db = next(dependency)
db.add(Item(name="from get_db"))
db.commit()
dependency.close()
session = SessionLocal()
print("items", session.scalar(select(func.count(Item.id))))
session.close()
Base.metadata.drop_all(bind=engine)
import sync_compat
sync_compat.dispose()
"""


@pytest.mark.parametrize("backend", ["sqlite_file", "postgres"], indirect=True)
def test_a_classic_database_py_ports_in_one_line(backend_url: str) -> None:
    table = f"classic_items_{os.getpid()}"
    output = run_python(CLASSIC_DATABASE_PY, table, env={"DATABASE_URL": backend_url})
    assert "items 2" in output
