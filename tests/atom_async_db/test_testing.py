"""The rolled-back test transaction (``atom_async_db.testing``) on every backend: every
entry point joins it, nothing survives it, concurrent tasks take turns on it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sqlalchemy import func, select

from atom_async_db import Database, PoolTimeoutError, TestIsolationError
from atom_async_db.testing import rollback_transaction, rollback_transaction_sync
from sync_compat import SessionLocal, get_db_session, run_legacy
from tests.helpers import assert_no_leaks
from tests.models import User


async def count_users(session: Any) -> int:
    return int(await session.scalar(select(func.count(User.id))))


def add_user_legacy(email: str) -> None:
    with get_db_session() as db:
        db.add(User(email=email))


async def test_every_entry_point_joins_and_nothing_survives(db: Database) -> None:
    async with rollback_transaction(db) as test_session:
        async with db.get_async_db_session() as session:
            session.add(User(email="service@example.com"))
        async with db.get_async_db_session(independent=True) as session:
            session.add(User(email="independent@example.com"))
        generator = db.get_async_db()
        route_session = await anext(generator)
        route_session.add(User(email="route@example.com"))
        await route_session.commit()
        await generator.aclose()
        await run_legacy(add_user_legacy, "legacy@example.com")
        assert await count_users(test_session) == 4
    async with db.get_async_db_session() as session:
        assert await count_users(session) == 0
    await assert_no_leaks(db)


async def test_concurrent_tasks_take_turns_on_the_test_connection(db: Database) -> None:
    async def add(i: int) -> None:
        async with db.get_async_db_session() as session:
            session.add(User(email=f"u{i}@example.com"))
            await session.flush()
            await asyncio.sleep(0)  # let the others try to interleave

    async with rollback_transaction(db) as test_session:
        await asyncio.gather(*(add(i) for i in range(10)))
        assert await count_users(test_session) == 10
    await assert_no_leaks(db)


async def test_waiting_for_another_task_while_holding_a_session_is_explained(
    make_default: Any,
) -> None:
    db = await make_default(pool_timeout=0.2)
    async with rollback_transaction(db), db.get_async_db_session() as session:
        await session.execute(select(1))

        async def other() -> None:
            async with db.get_async_db_session():
                pass

        with pytest.raises(PoolTimeoutError, match="test transaction"):
            await asyncio.create_task(other())
    await assert_no_leaks(db)


@pytest.mark.parametrize("backend", ["sqlite_file", "postgres"], indirect=True)
async def test_the_sync_test_transaction_is_joined_by_threads(db: Database) -> None:
    def sync_test() -> int:
        with rollback_transaction_sync(db, session_factory=SessionLocal) as session:
            add_user_legacy("thread@example.com")  # this thread
            thread = threading.Thread(target=add_user_legacy, args=("other@example.com",))
            thread.start()
            thread.join()
            return int(session.scalar(select(func.count(User.id))) or 0)

    assert await asyncio.to_thread(sync_test) == 2
    async with db.get_async_db_session() as session:
        assert await count_users(session) == 0
    await assert_no_leaks(db)


@pytest.mark.parametrize("backend", ["sqlite_file", "postgres"], indirect=True)
async def test_concurrent_threads_take_turns_in_a_sync_test(db: Database) -> None:
    def sync_test() -> int:
        with rollback_transaction_sync(db, session_factory=SessionLocal) as session:
            threads = [
                threading.Thread(target=add_user_legacy, args=(f"t{i}@example.com",))
                for i in range(8)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return int(session.scalar(select(func.count(User.id))) or 0)

    assert await asyncio.to_thread(sync_test) == 8
    await assert_no_leaks(db)


async def test_code_that_cannot_join_fails_loudly_instead_of_writing(db: Database) -> None:
    async with rollback_transaction(db):
        # legacy code in a worker thread during an async test
        with pytest.raises(TestIsolationError, match="run_legacy"):
            await asyncio.to_thread(add_user_legacy, "thread@example.com")

    def sync_test() -> None:
        with rollback_transaction_sync(db, session_factory=SessionLocal):
            asyncio.run(async_code())  # async code during a sync test

    async def async_code() -> None:
        async with db.get_async_db_session() as session:
            session.add(User(email="async@example.com"))

    with pytest.raises(TestIsolationError, match="async_db_session"):
        await asyncio.to_thread(sync_test)
    async with db.get_async_db_session() as session:
        assert await count_users(session) == 0
    await assert_no_leaks(db)
