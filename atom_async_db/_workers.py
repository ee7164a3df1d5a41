"""Background workers: many items processed concurrently, one session per item, with a bound
on concurrency that keeps the pool free for everything else."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from ._database import Database
from ._default import get_database

__all__ = ["ItemOutcome", "run_each"]

logger = logging.getLogger("atom_async_db")

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


@dataclass(frozen=True)
class ItemOutcome(Generic[_Item, _Result]):
    """What :func:`run_each` did with one item: its result, or the error that rolled back
    its session."""

    item: _Item
    result: _Result | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def run_each(
    items: Iterable[_Item] | AsyncIterable[_Item],
    fn: Callable[[AsyncSession, _Item], Awaitable[_Result]],
    *,
    limit: int | None = None,
    database: Database | None = None,
) -> list[ItemOutcome[_Item, _Result]]:
    """Run ``await fn(session, item)`` for every item, each in a session of its own that
    commits when ``fn`` returns and rolls back when it raises, at most ``limit`` at a time.

    ``limit`` defaults to half the pool (``pool_size // 2``, at least 1), so a worker never
    takes every connection from the web routes sharing the process. A failing item rolls
    back only its own session, is logged and reported in its :class:`ItemOutcome`; the
    others go on. Outcomes come back in the order of ``items``. Items are pulled as
    workers free up, so ``items`` may be a large or endless (async) iterator::

        async def send_invoice(db: AsyncSession, order_id: int) -> None:
            order = await db.get(Order, order_id)
            order.invoiced = True

        outcomes = await run_each(order_ids, send_invoice)
        failed = [o for o in outcomes if not o.ok]

    Cancelling ``run_each`` cancels the items in flight; their sessions roll back.
    """
    database = database or get_database()
    if limit is None:
        limit = max(1, database.settings.pool_size // 2)
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    outcomes: dict[int, ItemOutcome[_Item, _Result]] = {}
    source = _numbered(items)
    pulling = asyncio.Lock()  # one worker at a time pulls the next item

    async def worker() -> None:
        while True:
            async with pulling:
                numbered = await anext(source, None)
            if numbered is None:
                return
            index, item = numbered
            try:
                async with database.get_async_db_session() as session:
                    result = await fn(session, item)
            except Exception as error:
                logger.warning("run_each: item %r failed and was rolled back: %r", item, error)
                outcomes[index] = ItemOutcome(item, error=error)
            else:
                outcomes[index] = ItemOutcome(item, result=result)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(limit):
                group.create_task(worker())
    finally:
        await source.aclose()
    return [outcomes[index] for index in sorted(outcomes)]


async def _numbered(
    items: Iterable[_Item] | AsyncIterable[_Item],
) -> AsyncGenerator[tuple[int, _Item], None]:
    index = 0
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield index, item
            index += 1
    else:
        for item in items:
            yield index, item
            index += 1
