"""Background workers: many items processed concurrently, one session per item, with a bound
on concurrency that keeps the pool free for everything else; outcomes as a list (finite
sources) or as a stream (endless ones, in bounded memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
from sqlalchemy.ext.asyncio import AsyncSession

from ._database import Database
from ._default import get_database
from .exceptions import DatabaseDisposedError

__all__ = ["ItemOutcome", "run_each", "stream_each"]

logger = logging.getLogger("atom_async_db")

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


@dataclass(frozen=True)
class ItemOutcome(Generic[_Item, _Result]):
    """What :func:`run_each` (or :func:`stream_each`) did with one item: its result, or the
    error that rolled back its session.
    """

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
    """Run ``await fn(session, item)`` for every item of a finite ``items``, each in a
    session of its own that commits when ``fn`` returns and rolls back when it raises, at
    most ``limit`` at a time; return every outcome, in the order of ``items``.

    ``limit`` defaults to half the pool (``pool_size // 2``, at least 1), so a worker never
    takes every connection from the web routes sharing the process. A failing item rolls
    back only its own session, is logged and reported in its :class:`ItemOutcome`; the
    others go on. Items are pulled as workers free up; ``items`` may be async::

        async def send_invoice(db: AsyncSession, order_id: int) -> None:
            order = await db.get(Order, order_id)
            order.invoiced = True

        outcomes = await run_each(order_ids, send_invoice)
        failed = [o for o in outcomes if not o.ok]

    Every outcome is kept until the end: for an endless source (a queue), use
    :func:`stream_each`. Cancelling ``run_each`` cancels the items in flight; their
    sessions roll back.

    Raises:
        ValueError: ``limit`` is below 1.
        DatabaseDisposedError: the database was disposed meanwhile, once the items in
            flight have finished (the shutdown drains them).
    """
    outcomes: dict[int, ItemOutcome[_Item, _Result]] = {}
    async with contextlib.aclosing(_outcomes(items, fn, limit, database)) as finished:
        async for index, outcome in finished:
            outcomes[index] = outcome
    return [outcomes[index] for index in sorted(outcomes)]


async def stream_each(
    items: Iterable[_Item] | AsyncIterable[_Item],
    fn: Callable[[AsyncSession, _Item], Awaitable[_Result]],
    *,
    limit: int | None = None,
    database: Database | None = None,
) -> AsyncGenerator[ItemOutcome[_Item, _Result], None]:
    """:func:`run_each` for sources that never end (a queue, a stream of jobs): each
    :class:`ItemOutcome` is yielded as its item finishes, and nothing is kept.

    Memory stays bounded by ``limit``: at most ``limit`` items are in flight or finished
    and not yet read, so a consumer that falls behind holds the workers back instead of
    letting outcomes pile up. Close it with ``contextlib.aclosing`` so that leaving the
    loop early stops it at once::

        from contextlib import aclosing

        async with aclosing(stream_each(jobs(), handle_job, limit=4)) as outcomes:
            async for outcome in outcomes:
                if outcome.ok:
                    await acknowledge(outcome.item)

    Stopping (cancelling the consumer, leaving the loop, closing the generator) cancels
    the items in flight: each one's session rolls back, so an item is either committed
    whole or not at all, and the stop returns once they are all back. Items that finished
    before it are committed, whether or not their outcome was read.

    Raises:
        ValueError: ``limit`` is below 1.
        DatabaseDisposedError: the database was disposed meanwhile: a worker stops with
            its database. The items in flight finish first (the shutdown drains them),
            and an item taken as the shutdown began is yielded first, unprocessed, with
            this error.
    """
    async with contextlib.aclosing(_outcomes(items, fn, limit, database)) as finished:
        async for _, outcome in finished:
            yield outcome


async def _outcomes(
    items: Iterable[_Item] | AsyncIterable[_Item],
    fn: Callable[[AsyncSession, _Item], Awaitable[_Result]],
    limit: int | None,
    database: Database | None,
) -> AsyncGenerator[tuple[int, ItemOutcome[_Item, _Result]], None]:
    """``(position in items, outcome)`` as items finish: the one logic of both forms.

    Raises:
        ValueError: ``limit`` is below 1.
    """
    database = database or get_database()
    if limit is None:
        limit = max(1, database.settings.pool_size // 2)
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    source = _numbered(items)
    pulling = asyncio.Lock()  # one worker at a time pulls the next item
    # A worker takes room for an item's outcome before it pulls the item, and the room is
    # given back when the outcome is read: in flight plus unread never exceeds ``limit``.
    room = asyncio.Semaphore(limit)
    finished: asyncio.Queue[tuple[int, ItemOutcome[_Item, _Result]] | asyncio.Task[None]]
    finished = asyncio.Queue()

    disposed: list[DatabaseDisposedError] = []  # the database's shutdown, once seen

    async def worker() -> None:
        while True:
            await room.acquire()
            if disposed:
                return
            async with pulling:
                numbered = await anext(source, None)
            if numbered is None:
                return
            index, item = numbered
            try:
                async with database.get_async_db_session() as session:
                    result = await fn(session, item)
            except DatabaseDisposedError as error:
                # The shutdown refused this item's session: it is reported unprocessed, no
                # more items are taken, and the items in flight finish (the drain waits).
                disposed.append(error)
                finished.put_nowait((index, ItemOutcome(item, error=error)))
                return
            except Exception as error:
                logger.warning("run_each: item %r failed and was rolled back: %r", item, error)
                finished.put_nowait((index, ItemOutcome(item, error=error)))
            else:
                finished.put_nowait((index, ItemOutcome(item, result=result)))

    workers = [asyncio.create_task(worker()) for _ in range(limit)]
    for task in workers:
        task.add_done_callback(finished.put_nowait)  # "this worker is done"
    try:
        running = limit
        while running:
            entry = await finished.get()
            if isinstance(entry, asyncio.Task):
                running -= 1
                if not entry.cancelled() and entry.exception() is not None:
                    raise entry.exception()  # type: ignore[misc]  # the source failed
                continue
            room.release()
            yield entry
        if disposed:
            raise disposed[0]
    finally:
        for task in workers:
            task.cancel()
        # Their sessions roll back: wait until every one is back, so nothing is half done,
        # whatever cancels this again meanwhile (anyio cancel scopes do).
        try:
            with anyio.CancelScope(shield=True):
                await asyncio.gather(*workers, return_exceptions=True)
        finally:
            with anyio.CancelScope(shield=True):
                await source.aclose()


async def _numbered(
    items: Iterable[_Item] | AsyncIterable[_Item],
) -> AsyncGenerator[tuple[int, _Item], None]:
    """``(position, item)`` for each item; closing it closes the source too (a generator's
    ``finally`` runs when the work stops, not when it is garbage collected).
    """
    if isinstance(items, AsyncIterable):
        source = aiter(items)
        try:
            index = 0
            async for item in source:
                yield index, item
                index += 1
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()
    else:
        iterator = iter(items)
        try:
            for numbered in enumerate(iterator):
                yield numbered
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
