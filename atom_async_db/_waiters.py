"""How a caller waits for a pool's connection: a thread on a lock, a task on a future;
and what it may be handed instead of a connection.

Both waiters are handed their item under the pool's lock (``give``), and refuse it
(``False``) once they stopped waiting, so that the pool passes it to the next one.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

__all__ = ["CLOSED", "OPEN", "TIMED_OUT", "TaskWaiter", "ThreadWaiter"]


class _Token:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# Handed to a waiter instead of a connection: "open one yourself", "time is up", and
# "the pool was closed".
OPEN = _Token("OPEN")
TIMED_OUT = _Token("TIMED_OUT")
CLOSED = _Token("CLOSED")


class ThreadWaiter:
    """A thread waiting for a connection; ``give`` is called under the pool's lock."""

    __slots__ = ("abandoned", "item", "ready")

    def __init__(self) -> None:
        self.item: Any = None
        self.abandoned = False
        self.ready = threading.Lock()
        self.ready.acquire()

    def give(self, item: Any) -> bool:
        if self.abandoned:
            return False
        self.item = item
        self.ready.release()
        return True


class TaskWaiter:
    """A task waiting for a connection; a cancelled or resolved future takes nothing."""

    __slots__ = ("deadline", "future")

    def __init__(self, future: asyncio.Future[Any], deadline: float) -> None:
        self.future = future
        self.deadline = deadline

    def give(self, item: Any) -> bool:
        if self.future.done():
            return False
        self.future.set_result(item)
        return True
