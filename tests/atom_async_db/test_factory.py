"""``AsyncSessionFactory``: made at import time, before any loop or database exists, it
binds each session to the running loop's engine of its database when called."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

import atom_async_db
from atom_async_db import (
    AsyncSessionFactory,
    ConfigurationError,
    Database,
    DatabaseDisposedError,
    SessionNestingError,
)
from atom_async_db.testing import rollback_transaction
from sync_compat import SessionLocal, run_legacy
from tests.models import User

# As applications write `AsyncSessionLocal = async_sessionmaker(engine)`: at import time.
AsyncSessionLocal = AsyncSessionFactory()


async def count_users() -> int:
    async with atom_async_db.get_async_db_session(independent=True) as session:
        return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def test_the_caller_commits_and_closes(db: Database) -> None:
    async with AsyncSessionLocal() as session:
        session.add(User(email="dropped@example.com"))  # never committed: closing drops it
    async with AsyncSessionLocal() as session:
        session.add(User(email="kept@example.com"))
        await session.commit()
        assert session.sync_session.expire_on_commit is False
    assert await count_users() == 1


async def test_begin_commits_rolls_back_and_joins_the_tasks_session(db: Database) -> None:
    async with AsyncSessionLocal.begin() as session:
        session.add(User(email="ada@example.com"))
    with pytest.raises(RuntimeError):
        async with AsyncSessionLocal.begin() as session:
            session.add(User(email="lost@example.com"))
            raise RuntimeError("rolled back")
    assert await count_users() == 1
    if db.settings.dialect == "postgresql":
        async with atom_async_db.get_async_db_session() as outer:
            pid = await outer.scalar(text("select pg_backend_pid()"))
            async with AsyncSessionLocal.begin() as inner:  # the nesting rule: it joins
                assert await inner.scalar(text("select pg_backend_pid()")) == pid


async def test_configure_and_call_keywords(db: Database) -> None:
    factory = AsyncSessionFactory(db)
    async with factory() as session:
        assert session.autoflush is True
    factory.configure(autoflush=False, expire_on_commit=True)
    async with factory() as session, factory(autoflush=True) as local:
        assert (session.autoflush, session.sync_session.expire_on_commit) == (False, True)
        assert local.autoflush is True
    async with factory.begin() as session:
        assert session.autoflush is False
    with pytest.raises(TypeError, match="no_such_keyword"):
        factory(no_such_keyword=1)
    assert "autoflush" in repr(factory)


async def test_in_a_test_transaction_it_joins_it(db: Database) -> None:
    async with rollback_transaction(db) as test_session:
        async with AsyncSessionLocal() as session:
            session.add(User(email="ada@example.com"))
            await session.commit()  # releases a savepoint of the test's transaction
        assert await test_session.scalar(select(func.count()).select_from(User)) == 1
    assert await count_users() == 0  # rolled back with the test


async def test_another_database_and_a_disposed_one(
    db: Database, make_default: Callable[..., Awaitable[Database]]
) -> None:
    other = Database(db.settings.url)
    try:
        async with AsyncSessionFactory(other)() as session:
            assert session.bind is other.engine
    finally:
        await other.dispose()
    with pytest.raises(DatabaseDisposedError, match="configure it anew"):
        AsyncSessionFactory(other)()


async def test_info_is_merged_with_the_librarys_own(db: Database) -> None:
    factory = AsyncSessionFactory(info={"tenant": 7})
    async with factory() as session:
        assert session.info["tenant"] == 7
    async with atom_async_db.get_async_db_session(), factory.begin() as nested:
        assert nested.info["tenant"] == 7  # joined: the nesting role added, ours kept
    async with rollback_transaction(db), factory() as session, factory.begin() as block:
        assert session.info["tenant"] == block.info["tenant"] == 7


def test_wrong_arguments_are_named() -> None:
    with pytest.raises(TypeError, match=r"takes a Database .* not AsyncEngine"):
        AsyncSessionFactory(create_async_engine("sqlite+aiosqlite://"))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="async_session_class"):
        AsyncSessionFactory(class_=AsyncSession)
    with pytest.raises(ConfigurationError, match="async_session_class"):
        AsyncSessionFactory().configure(class_=AsyncSession)


@pytest.mark.parametrize("backend", ["sqlite_file", "postgres"], indirect=True)
async def test_a_second_connection_of_the_same_task_on_sqlite_is_refused_at_once(
    db: Database,
) -> None:
    def seed_style_service() -> int:
        session = SessionLocal()
        try:
            return int(session.execute(text("select 1")).scalar_one())
        finally:
            session.close()

    async with atom_async_db.get_async_db_session() as outer:
        await outer.execute(text("select 1"))
        if db.settings.dialect == "sqlite":  # it would wait for the task's own write lock
            with pytest.raises(SessionNestingError, match="join the open session"):
                AsyncSessionLocal()
            with pytest.raises(SessionNestingError, match="SessionLocal"):
                await run_legacy(seed_style_service)
        else:  # a second connection, as with plain SQLAlchemy
            async with AsyncSessionLocal() as session:
                assert await session.scalar(text("select 1")) == 1
            assert await run_legacy(seed_style_service) == 1
