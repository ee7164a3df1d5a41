"""Contract of ``get_async_db_session()`` and ``get_async_db`` on every backend."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import anyio
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, PendingRollbackError

from atom_async_db import Database, UncommittedChangesWarning, get_async_db, get_async_db_session
from tests.models import User


async def count_users(**filters: object) -> int:
    async with get_async_db_session(independent=True) as db:
        query = select(func.count()).select_from(User).filter_by(**filters)
        return int((await db.execute(query)).scalar_one())


async def test_commit_on_success_is_visible_from_a_new_session(db: Database) -> None:
    async with get_async_db_session() as session:
        session.add(User(email="ada@example.com"))
    async with get_async_db_session() as session:
        user = (await session.execute(select(User))).scalar_one()
    assert user.email == "ada@example.com"


async def test_rollback_on_exception_propagates_the_same_exception(db: Database) -> None:
    error = ValueError("user not found")
    with pytest.raises(ValueError) as raised:
        async with get_async_db_session() as session:
            session.add(User(email="ghost@example.com"))
            await session.flush()
            raise error
    assert raised.value is error
    assert await count_users() == 0


async def test_explicit_commit_inside_is_kept_and_later_work_commits_too(db: Database) -> None:
    async with get_async_db_session() as session:
        session.add(User(email="first@example.com"))
        await session.commit()
        session.add(User(email="second@example.com"))
    assert await count_users() == 2


async def test_work_committed_explicitly_survives_a_later_error(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with get_async_db_session() as session:
            session.add(User(email="kept@example.com"))
            await session.commit()
            session.add(User(email="lost@example.com"))
            raise RuntimeError("after the commit")
    assert await count_users(email="kept@example.com") == 1
    assert await count_users(email="lost@example.com") == 0


async def test_commit_false_leaves_committing_to_the_caller(db: Database) -> None:
    # A fixture written for `async with AsyncSessionLocal() as s:` that expects an
    # IntegrityError and then returns normally: under the default (commit on a clean exit)
    # the block's final COMMIT meets the failed transaction; with commit=False it does not.
    async with get_async_db_session(commit=False) as session:
        session.add(User(email="kept@example.com"))
        await session.commit()
        session.add(User(email="kept@example.com"))
        with pytest.raises(IntegrityError):
            await session.commit()
    with pytest.warns(UncommittedChangesWarning):
        async with get_async_db_session(commit=False) as session:
            session.add(User(email="dropped@example.com"))
    assert await count_users(email="kept@example.com") == 1
    assert await count_users() == 1
    with pytest.raises(PendingRollbackError):  # what commit=False spares that fixture
        async with get_async_db_session() as session:
            session.add(User(email="kept@example.com"))
            with pytest.raises(IntegrityError):
                await session.flush()


async def test_objects_stay_readable_after_the_block(db: Database) -> None:
    async with get_async_db_session() as session:
        user = User(email="ada@example.com", first_name="Ada")
        session.add(user)
    # expire_on_commit=False: no lazy refresh, so no MissingGreenlet outside the session.
    assert (user.id, user.email, user.first_name, user.status, user.version) == (
        user.id,
        "ada@example.com",
        "Ada",
        "active",
        1,
    )
    assert isinstance(user.id, int)


async def test_failing_commit_raises_and_leaves_the_pool_clean(db: Database) -> None:
    async with get_async_db_session() as session:
        session.add(User(email="dup@example.com"))
    with pytest.raises(IntegrityError):
        async with get_async_db_session() as session:
            session.add(User(email="dup@example.com"))
    assert db.engine.pool.checkedout() == 0
    assert await count_users() == 1  # the pool still serves working connections


async def test_cancelled_block_rolls_back_and_reraises(db: Database) -> None:
    entered = asyncio.Event()

    async def unit_of_work() -> None:
        async with get_async_db_session() as session:
            session.add(User(email="cancelled@example.com"))
            await session.flush()
            entered.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(unit_of_work())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert db.engine.pool.checkedout() == 0
    assert await count_users() == 0


async def test_timeout_inside_the_block_rolls_back(db: Database) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05), get_async_db_session() as session:
            session.add(User(email="slow@example.com"))
            await session.flush()
            await asyncio.Event().wait()
    assert await count_users() == 0


@pytest.mark.many_connections
async def test_500_concurrent_sessions_on_the_default_pool_all_succeed(db: Database) -> None:
    async def work(i: int) -> int:
        async with get_async_db_session() as session:
            user = User(email=f"user{i}@example.com")
            session.add(user)
            await session.flush()
            return user.id

    ids = await asyncio.gather(*(work(i) for i in range(500)))
    assert len(set(ids)) == 500
    assert await count_users() == 500


# --------------------------------------------------------------------------- get_async_db


# FastAPI drives a yield dependency as an async context manager; so do these tests.
request_session = asynccontextmanager(get_async_db)


async def test_dependency_never_commits_and_warns_about_dropped_changes(db: Database) -> None:
    with pytest.warns(UncommittedChangesWarning, match="await db.commit"):
        async with request_session() as session:
            session.add(User(email="forgotten@example.com"))
    assert await count_users() == 0


async def test_dependency_with_commit_persists_without_warning(db: Database) -> None:
    async with request_session() as session:  # no warning: warnings are errors in this suite
        session.add(User(email="saved@example.com"))
        await session.commit()
    assert await count_users() == 1


async def test_dependency_rolls_back_when_the_route_raises(db: Database) -> None:
    with pytest.raises(LookupError):
        async with request_session() as session:
            session.add(User(email="failed@example.com"))
            await session.flush()
            raise LookupError("404")
    assert await count_users() == 0
    assert db.engine.pool.checkedout() == 0


async def test_read_only_request_session_does_not_warn(db: Database) -> None:
    async with request_session() as session:
        await session.execute(text("select 1"))


async def test_dependency_closed_early_rolls_back_quietly(db: Database) -> None:
    dependency = get_async_db()
    session = await anext(dependency)
    session.add(User(email="abandoned@example.com"))
    await session.flush()
    await dependency.aclose()  # GeneratorExit: rolled back, connection returned, no warning
    assert db.engine.pool.checkedout() == 0
    assert await count_users() == 0


async def test_cancelled_request_session_is_released(db: Database) -> None:
    entered = asyncio.Event()

    async def route() -> None:
        async with request_session() as session:
            session.add(User(email="cancelled@example.com"))
            await session.flush()
            entered.set()
            await asyncio.Event().wait()  # the client went away

    task = asyncio.create_task(route())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert db.engine.pool.checkedout() == 0
    assert await count_users() == 0


async def test_anyio_cancel_scope_cannot_interrupt_the_cleanup(db: Database) -> None:
    # anyio cancels every await inside a cancelled scope again and again, the cleanup's
    # ROLLBACK included, unless the cleanup is shielded from it.
    with anyio.move_on_after(0.05) as scope:
        async with get_async_db_session() as session:
            session.add(User(email="scoped@example.com"))
            await session.flush()
            await asyncio.Event().wait()
    assert scope.cancelled_caught
    assert db.engine.pool.checkedout() == 0
    assert await count_users() == 0
