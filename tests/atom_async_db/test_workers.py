"""``run_each`` and ``stream_each``: many items, one session each, never more connections
than their bound; outcomes streamed in bounded memory, and a clean stop."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from typing import Any

import anyio
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from atom_async_db import Database, run_each, stream_each
from tests.helpers import assert_no_leaks
from tests.models import User

MakeDefault = Any


@contextmanager
def peak_checked_out(db: Database) -> Iterator[list[int]]:
    """The most connections checked out of ``db``'s pool at once during the block
    (``[peak]``, read after the block)."""
    pool: Any = db.engine.sync_engine.pool
    peak = [0]

    def checked_out(*_: Any) -> None:
        peak[0] = max(peak[0], pool.checkedout())

    event.listen(pool, "checkout", checked_out)
    try:
        yield peak
    finally:
        event.remove(pool, "checkout", checked_out)


async def add_user(session: AsyncSession, i: int) -> int:
    if i == 500:
        raise ValueError("item 500 is bad")
    session.add(User(email=f"w{i}@example.com"))
    await session.flush()
    return i


@pytest.mark.parametrize("backend", ["postgres", "sqlite_file"], indirect=True)
async def test_1000_items_on_a_pool_of_5_never_hold_more_than_5(make_default: MakeDefault) -> None:
    db = await make_default(pool_size=5, max_overflow=0)
    with peak_checked_out(db) as peak:
        outcomes = await run_each(range(1000), add_user, limit=5)
    assert peak[0] <= 5
    assert [o.item for o in outcomes] == list(range(1000))  # in the items' order
    failed = [o for o in outcomes if not o.ok]
    assert len(failed) == 1 and failed[0].item == 500
    assert isinstance(failed[0].error, ValueError) and "item 500" in str(failed[0].error)
    assert all(o.result == o.item for o in outcomes if o.ok)
    async with db.get_async_db_session() as session:
        assert await session.scalar(select(func.count(User.id))) == 999
    await assert_no_leaks(db)


async def test_the_default_bound_leaves_half_the_pool_free(make_default: MakeDefault) -> None:
    db = await make_default(pool_size=4, max_overflow=0)

    async def items() -> AsyncIterator[int]:  # an async source works too
        for i in range(40):
            yield i

    with peak_checked_out(db) as peak:
        outcomes = await run_each(items(), add_user)
    assert all(o.ok for o in outcomes) and len(outcomes) == 40
    assert peak[0] <= 2  # pool_size // 2
    await assert_no_leaks(db)


async def test_an_endless_source_streams_outcomes_in_bounded_memory(db: Database) -> None:
    limit = 3
    pulled = 0
    most_unread = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    read = 0
    async with aclosing(stream_each(endless(), add_user, limit=limit)) as outcomes:
        async for outcome in outcomes:
            read += 1
            most_unread = max(most_unread, pulled - read)
            assert outcome.ok
            if read == 60:
                break
    assert most_unread < limit  # in flight plus finished and unread stays within limit
    async with db.get_async_db_session() as session:  # read ones and finished unread ones
        assert read <= await session.scalar(select(func.count(User.id))) <= pulled
    await assert_no_leaks(db)


async def test_stopping_a_stream_leaves_no_item_half_done(db: Database) -> None:
    limit = 3
    halfway = asyncio.Semaphore(0)

    async def two_rows(session: AsyncSession, i: int) -> int:
        session.add(User(email=f"{i}-first@example.com"))
        await session.flush()
        if i >= 5:  # items 5 and after stop halfway, until they are cancelled
            halfway.release()
            await asyncio.Event().wait()
        session.add(User(email=f"{i}-second@example.com"))
        return i

    read: list[int] = []

    async def consume() -> None:
        async for outcome in stream_each(range(100), two_rows, limit=limit):
            read.append(outcome.item)

    consumer = asyncio.create_task(consume())
    # One item holds its first row; the others are halfway too or wait for a connection
    # (SQLite: for the one connection, or its write lock).
    await halfway.acquire()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert read and set(read) <= {0, 1, 2, 3, 4}
    async with db.get_async_db_session() as session:
        emails = set((await session.execute(select(User.email))).scalars())
    rows_per_item = Counter(int(email.split("-")[0]) for email in emails)
    assert set(rows_per_item.values()) == {2}  # each item whole, or not there at all
    assert set(read) <= set(rows_per_item) <= {0, 1, 2, 3, 4}
    await assert_no_leaks(db)


async def test_a_failing_source_stops_the_stream_with_its_error(db: Database) -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise OSError("the queue went away")

    with pytest.raises(OSError, match="the queue went away"):
        await run_each(broken(), add_user, limit=2)
    await assert_no_leaks(db)


async def test_an_anyio_cancel_scope_stops_the_stream_and_closes_its_source(db: Database) -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[int]:
        try:
            for i in itertools.count():
                yield i
        finally:
            closed.set()

    async def slow(session: AsyncSession, item: int) -> int:
        await session.execute(select(1))
        await asyncio.Event().wait()  # until cancelled
        return item

    with anyio.move_on_after(0.3):  # cancels again at every await (anyio's way)
        async with aclosing(stream_each(endless(), slow, limit=3)) as outcomes:
            async for _ in outcomes:
                pass
    assert closed.is_set()
    await assert_no_leaks(db)
