"""``AsyncSessionFactory``: made at import time, before any loop or database exists, it
binds each session to the running loop's engine of its database when called."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import func, select, text

import atom_async_db
from atom_async_db import AsyncSessionFactory, Database, DatabaseDisposedError
from atom_async_db.testing import rollback_transaction
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
