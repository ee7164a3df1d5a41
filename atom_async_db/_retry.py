"""Retry on conflict: re-run a whole unit of work when the database reports a conflict that
a second attempt can resolve (a serialization failure, a deadlock, SQLite's busy lock).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar, cast, overload

from sqlalchemy import exc
from sqlalchemy.util.concurrency import await_, in_greenlet

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


@dataclass(frozen=True)
class _Schedule:
    """When to try again: the one policy of the async and the sync decorator."""

    attempts: int
    deadline: float
    first_delay: float
    max_delay: float

    def delay_after(
        self, fn: object, error: exc.DBAPIError, attempt: int, remaining: float
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up (re-raise)."""
        if not is_conflict(error) or attempt == self.attempts:
            return None
        delay = random.uniform(0, min(self.max_delay, self.first_delay * 2 ** (attempt - 1)))
        if delay > remaining:
            return None
        logger.info(
            "%s: conflict on attempt %d (%s); retrying in %.3f s",
            getattr(fn, "__qualname__", fn),
            attempt,
            getattr(error.orig, "sqlstate", None) or type(error.orig).__name__,
            delay,
        )
        return delay


class _Retrying(Protocol):
    @overload
    def __call__(
        self, fn: Callable[_P, Coroutine[Any, Any, _T]]
    ) -> Callable[_P, Coroutine[Any, Any, _T]]: ...
    @overload
    def __call__(self, fn: Callable[_P, _T]) -> Callable[_P, _T]: ...


def retry_on_conflict(
    *,
    attempts: int = 5,
    deadline: float = 10.0,
    first_delay: float = 0.01,
    max_delay: float = 1.0,
) -> _Retrying:
    """Decorate a function that runs one whole transaction (it opens its own session) so
    that it runs again, with a fresh session, when the database reports a conflict: a
    serialization failure (SQLSTATE 40001), a deadlock (40P01) or SQLite's "database is
    locked". Async functions and sync ones (legacy services on ``get_db_session()``) alike.

    Waits between attempts grow exponentially from ``first_delay`` up to ``max_delay``,
    with full jitter; it gives up after ``attempts`` runs or once ``deadline`` seconds have
    passed, re-raising the last error. Nothing else is retried: an ``IntegrityError``,
    a :class:`CommitOutcomeUnknownError` (the work may have been saved) or any other error
    is raised at once::

        @retry_on_conflict(attempts=10)
        async def transfer(src: int, dst: int, amount: int) -> None:
            async with get_async_db_session(isolation_level="SERIALIZABLE") as db:
                ...

        @retry_on_conflict(attempts=10)
        def legacy_transfer(src: int, dst: int, amount: int) -> None:
            with get_db_session(isolation_level="SERIALIZABLE") as db:
                ...

    A sync function waits with ``time.sleep``, except under ``sync_compat.run_legacy``,
    where it waits on the event loop without blocking it.

    Only decorate functions that own their transaction: inside an outer session, a
    nested block's conflict has already doomed the outer transaction.

    Raises:
        ValueError: ``attempts`` is below 1.
        The decorated function raises its last error once it gives up, and every error
        that is not a conflict at once.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    schedule = _Schedule(attempts, deadline, first_delay, max_delay)

    def decorate(fn: Callable[_P, Any]) -> Callable[_P, Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run(*args: _P.args, **kwargs: _P.kwargs) -> Any:
                loop = asyncio.get_running_loop()
                give_up_at = loop.time() + deadline
                for attempt in itertools.count(1):
                    try:
                        return await fn(*args, **kwargs)
                    except exc.DBAPIError as error:
                        remaining = give_up_at - loop.time()
                        delay = schedule.delay_after(fn, error, attempt, remaining)
                        if delay is None:
                            raise
                    await asyncio.sleep(delay)

            return run

        @functools.wraps(fn)
        def run_sync(*args: _P.args, **kwargs: _P.kwargs) -> Any:
            give_up_at = time.monotonic() + deadline
            for attempt in itertools.count(1):
                try:
                    return fn(*args, **kwargs)
                except exc.DBAPIError as error:
                    remaining = give_up_at - time.monotonic()
                    delay = schedule.delay_after(fn, error, attempt, remaining)
                    if delay is None:
                        raise
                if in_greenlet():  # under run_legacy: wait on the loop, not blocking it
                    await_(asyncio.sleep(delay))
                else:
                    time.sleep(delay)

        return run_sync

    return cast(_Retrying, decorate)
