"""The nesting rule: a session opened inside another of the same task joins it through a
SAVEPOINT; other tasks and ``independent=True`` get connections of their own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import func, select

from atom_async_db import Database, UncommittedChangesWarning, get_async_db, get_async_db_session
from tests.helpers import APP_NAME, emails
from tests.models import User


@pytest.fixture
async def one_connection(make_default: Callable[..., Awaitable[Database]]) -> Database:
    """The default database with a pool of exactly one connection."""
    return await make_default(pool_size=1, max_overflow=0, pool_timeout=5)


async def test_nested_block_shares_the_connection_so_one_connection_is_enough(
    one_connection: Database,
) -> None:
    # With a second checkout this would wait pool_timeout and fail: the classic deadlock.
    async with get_async_db_session() as outer:
        outer.add(User(email="outer@example.com"))
        async with get_async_db_session() as inner:
            assert inner is not outer
            assert await inner.connection() is await outer.connection()
            # The inner block sees the outer's unflushed work.
            assert (await inner.execute(select(func.count()).select_from(User))).scalar() == 1
            inner.add(User(email="inner@example.com"))
        assert one_connection.engine.pool.checkedout() == 1
    assert one_connection.engine.pool.checkedout() == 0
    assert await emails() == {"outer@example.com", "inner@example.com"}


async def test_inner_failure_rolls_back_only_the_inner_block(db: Database) -> None:
    async with get_async_db_session() as outer:
        outer.add(User(email="outer@example.com"))
        with pytest.raises(ValueError):
            async with get_async_db_session() as inner:
                inner.add(User(email="inner@example.com"))
                await inner.flush()
                raise ValueError("inner failed")
        outer.add(User(email="after@example.com"))
    assert await emails() == {"outer@example.com", "after@example.com"}


async def test_inner_commit_is_made_durable_by_the_outermost_block(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with get_async_db_session():
            async with get_async_db_session() as inner:
                inner.add(User(email="inner@example.com"))
                await inner.commit()  # releases the savepoint only
            raise RuntimeError("outer failed")
    assert await emails() == set()


async def test_independent_session_commits_on_its_own(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with get_async_db_session() as outer:
            outer.add(User(email="outer@example.com"))
            async with get_async_db_session(independent=True) as audit:
                assert audit.bind is db.engine  # a connection of its own, not outer's
                audit.add(User(email="audit@example.com"))
            await outer.flush()
            raise RuntimeError("outer failed")
    assert await emails() == {"audit@example.com"}


async def test_tasks_started_inside_a_session_get_their_own(db: Database) -> None:
    binds = []

    async def child(i: int) -> None:
        async with get_async_db_session() as session:
            binds.append(session.bind)
            session.add(User(email=f"child{i}@example.com"))

    async with get_async_db_session() as outer:
        # Concurrent children inherit the context; joining outer's connection would make
        # them interleave statements on it.
        await asyncio.gather(*(child(i) for i in range(5)))
        outer.add(User(email="outer@example.com"))
    assert binds == [db.engine] * 5
    assert await emails() == {"outer@example.com"} | {f"child{i}@example.com" for i in range(5)}


async def test_request_session_warns_when_nested_work_is_never_committed(db: Database) -> None:
    request_session = asynccontextmanager(get_async_db)
    with pytest.warns(UncommittedChangesWarning, match="nested"):
        async with request_session() as request_db:
            await request_db.execute(select(1))
            async with get_async_db_session() as service_db:  # a service called by the route
                service_db.add(User(email="service@example.com"))
            # the route returns without await request_db.commit()
    assert await emails() == set()


async def test_request_session_commit_makes_nested_work_durable(db: Database) -> None:
    async with asynccontextmanager(get_async_db)() as request_db:
        async with get_async_db_session() as service_db:
            service_db.add(User(email="service@example.com"))
        await request_db.commit()
    assert await emails() == {"service@example.com"}


async def test_nesting_is_per_database(db: Database) -> None:
    other = Database("sqlite://", application_name=APP_NAME)
    async with get_async_db_session() as outer, other.get_async_db_session() as elsewhere:
        assert elsewhere.bind is other.engine
        assert outer.bind is db.engine
    await other.dispose()


async def test_three_levels_deep_commit_once_at_the_top(one_connection: Database) -> None:
    async with get_async_db_session() as top:
        top.add(User(email="top@example.com"))
        async with get_async_db_session() as middle:
            middle.add(User(email="middle@example.com"))
            with pytest.raises(KeyError):
                async with get_async_db_session() as bottom:
                    bottom.add(User(email="bottom@example.com"))
                    await bottom.flush()
                    raise KeyError("bottom failed")
            async with get_async_db_session() as sibling:
                sibling.add(User(email="sibling@example.com"))
    assert await emails() == {"top@example.com", "middle@example.com", "sibling@example.com"}


async def test_cancellation_inside_a_nested_block_releases_the_shared_connection(
    db: Database,
) -> None:
    inside = asyncio.Event()

    async def worker() -> None:
        async with get_async_db_session() as outer:
            outer.add(User(email="outer@example.com"))
            async with get_async_db_session() as inner:
                inner.add(User(email="inner@example.com"))
                await inner.flush()
                inside.set()
                await asyncio.Event().wait()

    task = asyncio.create_task(worker())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert db.engine.pool.checkedout() == 0
    assert await emails() == set()


async def test_outer_objects_reflect_what_the_inner_block_wrote(db: Database) -> None:
    async with get_async_db_session() as session:
        session.add_all([User(email="a@example.com", data_count=1), User(email="b@example.com")])
    async with get_async_db_session() as outer:
        a = (await outer.execute(select(User).filter_by(email="a@example.com"))).scalar_one()
        b = (await outer.execute(select(User).filter_by(email="b@example.com"))).scalar_one()
        async with get_async_db_session() as inner:
            inner_a = await inner.get(User, a.id)
            assert inner_a is not None
            inner_a.data_count += 1
            await inner.delete(await inner.get(User, b.id))
        assert a.data_count == 2  # not the stale 1
        assert b not in outer
        a.data_count += 10  # no lost update: 1 + 1 + 10
    async with get_async_db_session() as session:
        counts = (await session.execute(select(User.email, User.data_count))).all()
    assert counts == [("a@example.com", 12)]


async def test_no_lost_update_when_the_inner_code_dropped_its_objects(db: Database) -> None:
    async with get_async_db_session() as session:
        session.add(User(email="a@example.com", data_count=1))

    async def bump(user_id: int) -> None:  # keeps no reference to what it changed
        async with get_async_db_session() as inner:
            user = await inner.get(User, user_id)
            assert user is not None
            user.data_count += 1

    async with get_async_db_session() as outer:
        a = (await outer.execute(select(User))).scalar_one()
        await bump(a.id)
        assert a.data_count == 2
        a.data_count += 10
    async with get_async_db_session() as session:
        assert (await session.execute(select(User.data_count))).scalar_one() == 12
