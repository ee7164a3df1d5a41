"""The public entry points' types, as a type checker sees them: mypy checks this file in
CI (``make lint``), and pytest runs it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import assert_type

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

import atom_async_db
from atom_async_db import (
    AsyncSessionFactory,
    ConfigurationError,
    Database,
    ItemOutcome,
    get_async_db,
    get_async_db_session,
    run_each,
    stream_each,
    transaction_dependency,
)
from sync_compat import get_db, get_db_for, get_db_session


async def double(session: AsyncSession, item: int) -> str:
    return str(item * 2)


async def test_entry_points_have_the_types_users_rely_on(db: Database) -> None:
    assert_type(get_async_db_session(), AbstractAsyncContextManager[AsyncSession])
    assert_type(get_async_db_session(isolation_level="SERIALIZABLE"),
                AbstractAsyncContextManager[AsyncSession])  # fmt: skip
    assert_type(get_async_db(), AsyncIterator[AsyncSession])
    assert_type(transaction_dependency(read_only=False), Callable[[], AsyncIterator[AsyncSession]])
    assert_type(db.engine, AsyncEngine)
    assert_type(get_db_session(), AbstractContextManager[Session])
    assert_type(atom_async_db.get_database(), Database)
    outcomes = await run_each([1, 2], double)
    assert_type(outcomes, list[ItemOutcome[int, str]])
    assert [o.result for o in outcomes] == ["2", "4"]
    async for outcome in stream_each([3], double):
        assert_type(outcome, ItemOutcome[int, str])
        assert outcome.result == "6"
    assert_type(get_db(), Iterator[Session])
    assert_type(get_db_for(db), Callable[[], Iterator[Session]])
    assert_type(get_db_session(commit=False, database=db, read_only=False),
                AbstractContextManager[Session])  # fmt: skip
    assert_type(get_async_db_session(commit=False), AbstractAsyncContextManager[AsyncSession])
    factory = AsyncSessionFactory(db, autoflush=False)
    assert_type(factory.begin(), AbstractAsyncContextManager[AsyncSession])
    async with factory() as session:
        assert_type(session, AsyncSession)


def test_retry_on_conflict_keeps_the_functions_type() -> None:
    @atom_async_db.retry_on_conflict()
    async def job(x: int) -> str:
        return str(x)

    @atom_async_db.retry_on_conflict()
    def legacy_job(x: int) -> str:
        return str(x)

    # asyncio.run() and create_task() take only a Coroutine, not any Awaitable
    assert assert_type(asyncio.run(job(2)), str) == "2"
    assert_type(legacy_job(3), str)


def test_an_unknown_session_option_is_named() -> None:
    with pytest.raises(ConfigurationError, match="unknown session option 'read_olny'"):
        get_async_db_session(read_olny=True)  # type: ignore[call-arg]


def test_operations_entry_points_have_their_types() -> None:
    from fastapi import APIRouter, FastAPI

    from atom_async_db import HistogramStats, PoolStats
    from atom_async_db.fastapi import health_router, lifespan

    stats = Database("sqlite:///unused.db").pool_stats()
    assert_type(stats, PoolStats)
    assert_type(stats.wait_time, HistogramStats)
    assert_type(stats.pools, tuple[PoolStats, ...])
    assert_type(health_router(), APIRouter)
    FastAPI(lifespan=lifespan)
    FastAPI(lifespan=lifespan(check=True, check_timeout=3))
