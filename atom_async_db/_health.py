"""The health check: one round trip to the database on a pooled connection, within a
deadline, for readiness probes and start-up checks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncEngine

from ._stats import PoolStats
from .exceptions import DatabaseUnavailableError, PoolTimeoutError

__all__ = ["ping"]


async def ping(
    engine: AsyncEngine,
    *,
    timeout: float,  # noqa: ASYNC109 (the caller's deadline, as Database.ping's)
    pinged_on_checkout: bool,
    stats: Callable[[], PoolStats],
    name: str,
) -> float:
    """One round trip on a connection of ``engine``'s pool; the seconds it took.

    A pooled connection is tested on checkout (``pinged_on_checkout``: our pre-ping) and
    a new one answered when it connected, so then the checkout is the round trip;
    otherwise (SQLite, or ``pool_pre_ping=False``) a ``SELECT 1`` is.

    Raises:
        DatabaseUnavailableError: no answer within ``timeout`` seconds, or the connection
            failed; the message says which, and whether the pool was saturated.
    """
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            async with engine.connect() as connection:
                if not pinged_on_checkout:
                    await connection.exec_driver_sql("SELECT 1")
    except TimeoutError:
        now = stats()
        waiting = f", {now.waiting} callers waiting" if now.waiting else ""
        raise DatabaseUnavailableError(
            f"the database {name} did not answer a ping within {timeout:g} s: the server "
            f"is down, unreachable or overloaded, or no pooled connection became free "
            f"(in use: {now.in_use} of {now.pool_size} + {now.max_overflow} "
            f"overflow{waiting})"
        ) from None
    except DatabaseUnavailableError:
        raise
    except (exc.DBAPIError, PoolTimeoutError, OSError) as error:
        raise DatabaseUnavailableError(
            f"the database {name} failed a ping: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    return time.perf_counter() - started
