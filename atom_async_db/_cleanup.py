"""Cleanup that cancellation cannot interrupt.

Releasing a session awaits (ROLLBACK, returning the connection), and a cancelled task
is cancelled again at every await: natively by ``task.cancel()`` and ``asyncio.timeout``,
and repeatedly by anyio cancel scopes (Starlette, task groups, ``fail_after``). An anyio
shield alone does not stop a native cancel, and ``asyncio.shield`` alone does not stop
anyio's repeated delivery. So the cleanup runs in a task of its own, which no cancel of
the caller reaches, and the caller waits for it under an anyio shield, swallowing native
cancels until it is done, then re-raises the cancellation it received.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import anyio
import anyio.lowlevel

logger = logging.getLogger("atom_async_db")


async def run_to_completion(cleanup: Coroutine[Any, Any, None], *, deadline: float) -> None:
    """Run ``cleanup`` to its end even if the caller is cancelled meanwhile.

    ``cleanup`` bounds its own I/O; ``deadline`` (seconds) is the last resort after which
    the caller stops waiting, so a wedged cleanup cannot hang shutdown. A cancellation
    received while waiting is re-raised once the cleanup has finished.
    """
    loop = asyncio.get_running_loop()
    task = loop.create_task(cleanup)
    cancelled: asyncio.CancelledError | None = None
    give_up_at = loop.time() + deadline
    with anyio.CancelScope(shield=True):
        while not task.done():
            remaining = give_up_at - loop.time()
            if remaining <= 0:
                logger.error(
                    "session cleanup did not finish within %.1f s; abandoning it", deadline
                )
                task.cancel()
                break
            try:
                await asyncio.wait((task,), timeout=remaining)
            except asyncio.CancelledError as error:
                cancelled = error
    if task.done() and not task.cancelled() and task.exception() is not None:
        logger.error("session cleanup failed", exc_info=task.exception())
    if cancelled is not None:
        raise cancelled
    # An anyio cancel scope cancelled meanwhile was held off by the shield: it lands now, as
    # it would have at this await without the shield.
    await anyio.lowlevel.checkpoint_if_cancelled()
