"""The health check: one round trip to the database on a pooled connection, within a
deadline, for readiness probes and start-up checks.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncEngine

from ._pool import FairPool
from .exceptions import DatabaseUnavailableError, PoolTimeoutError

__all__ = ["ping"]


async def ping(
    engine: AsyncEngine,
    *,
    timeout: float,  # noqa: ASYNC109 (the caller's deadline, as Database.ping's)
    pinged_on_checkout: bool,
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
    pool = engine.sync_engine.pool
    before = pool.stats() if isinstance(pool, FairPool) else None  # (not the app's own pool)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            async with engine.connect() as connection:
                if not pinged_on_checkout:
                    await connection.exec_driver_sql("SELECT 1")
    except TimeoutError:
        limit = -1 if before is None else before.pool_size + before.max_overflow
        if before is not None and before.max_overflow >= 0 and before.in_use >= limit:
            why = (
                f"every connection of its pool was in use ({before.in_use} of pool_size + "
                f"max_overflow = {limit}, {before.waiting} callers waiting before the "
                "ping), and none came free"
            )
        else:
            why = "the server is down, unreachable or overloaded"
        raise DatabaseUnavailableError(
            f"the database {name} did not answer a ping within {timeout:g} s: {why}"
        ) from None
    except DatabaseUnavailableError:
        raise
    except (exc.DBAPIError, PoolTimeoutError, OSError) as error:
        raise DatabaseUnavailableError(
            f"the database {name} failed a ping: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    return time.perf_counter() - started
