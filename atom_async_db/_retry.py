"""Retry on conflict: re-run a whole unit of work when the database reports a conflict that
a second attempt can resolve (a serialization failure, a deadlock, SQLite's busy lock).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from sqlalchemy import exc

from .exceptions import CommitOutcomeUnknownError

__all__ = ["is_conflict", "retry_on_conflict"]

logger = logging.getLogger("atom_async_db")

_P = ParamSpec("_P")
_T = TypeVar("_T")

# 40001 serialization_failure, 40P01 deadlock_detected
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


def is_conflict(error: BaseException) -> bool:
    """Whether ``error`` is a conflict that re-running the whole transaction can resolve.

    Raises:
        Nothing: any object is answered, an error of another kind with False.
    """
    if not isinstance(error, exc.DBAPIError) or isinstance(
        error, (exc.IntegrityError, CommitOutcomeUnknownError)
    ):
        return False
    original = error.orig
    sqlstate = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return True
    return isinstance(error, exc.OperationalError) and "database is locked" in str(original)


def retry_on_conflict(
    *,
    attempts: int = 5,
    deadline: float = 10.0,
    first_delay: float = 0.01,
    max_delay: float = 1.0,
) -> Callable[[Callable[_P, Awaitable[_T]]], Callable[_P, Awaitable[_T]]]:
    """Decorate an async function that runs one whole transaction (it opens its own
    session) so that it runs again, with a fresh session, when the database reports a
    conflict: a serialization failure (SQLSTATE 40001), a deadlock (40P01) or SQLite's
    "database is locked".

    Waits between attempts grow exponentially from ``first_delay`` up to ``max_delay``,
    with full jitter; it gives up after ``attempts`` runs or once ``deadline`` seconds have
    passed, re-raising the last error. Nothing else is retried: an ``IntegrityError``,
    a :class:`CommitOutcomeUnknownError` (the work may have been saved) or any other error
    is raised at once::

        @retry_on_conflict(attempts=10)
        async def transfer(src: int, dst: int, amount: int) -> None:
            async with get_async_db_session() as db:
                await db.connection(execution_options={"isolation_level": "SERIALIZABLE"})
                ...

    Only decorate functions that own their transaction: inside an outer session, a
    nested block's conflict has already doomed the outer transaction.

    Raises:
        ValueError: ``attempts`` is below 1.
        The decorated function raises its last error once it gives up, and every error
        that is not a conflict at once.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")

    def decorate(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
        @functools.wraps(fn)
        async def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            loop = asyncio.get_running_loop()
            give_up_at = loop.time() + deadline
            for attempt in range(1, attempts + 1):
                try:
                    return await fn(*args, **kwargs)
                except exc.DBAPIError as error:
                    if not is_conflict(error) or attempt == attempts:
                        raise
                    delay = random.uniform(0, min(max_delay, first_delay * 2 ** (attempt - 1)))
                    if loop.time() + delay > give_up_at:
                        raise
                    logger.info(
                        "%s: conflict on attempt %d (%s); retrying in %.3f s",
                        getattr(fn, "__qualname__", fn),
                        attempt,
                        getattr(error.orig, "sqlstate", None) or type(error.orig).__name__,
                        delay,
                    )
                    await asyncio.sleep(delay)
            raise AssertionError("unreachable")

        return run

    return decorate
