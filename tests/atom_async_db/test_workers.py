"""``run_each``: many items, one session each, never more connections than its bound."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from atom_async_db import Database, run_each
from tests.conftest import assert_no_leaks
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
