"""One async engine per event loop, disposed on that loop when it shuts down.

asyncpg connections, aiosqlite connections and SQLAlchemy's async pool queue all belong
to the loop that created them. A process may run several loops over its life (a script
calling ``asyncio.run()`` repeatedly, pytest-asyncio's per-test loops, a worker thread
with its own loop), so each loop gets its own engine, built lazily from the same
settings. The engine is disposed on its own loop when that loop shuts down its async
generators, which ``asyncio.run()`` and ``asyncio.Runner`` do before closing it: a
sentinel async generator registered with the loop runs the dispose in its ``finally``.

After ``os.fork()`` the child forgets every inherited engine without closing it: the
parent's sockets are the parent's, and closing them from the child would end the
parent's sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from .exceptions import NoEventLoopError

logger = logging.getLogger("atom_async_db")

# Engines that can no longer be disposed (inherited through fork(), or of a loop closed
# without shutting down): kept referenced so that the garbage collector never finalises
# them, which would close the parent's connections or schedule work on a closed loop.
_ORPHANS: list[_Entry] = []
_ALL_REGISTRIES: weakref.WeakSet[LoopEngines] = weakref.WeakSet()


@dataclass
class _Entry:
    engine: AsyncEngine
    sentinel: AsyncGenerator[None, None]


class LoopEngines:
    """Engines keyed by event loop, created by ``factory`` on first use in each loop."""

    def __init__(self, factory: Callable[[], AsyncEngine], *, dispose_timeout: float) -> None:
        self._factory = factory
        self._dispose_timeout = dispose_timeout
        self._entries: dict[asyncio.AbstractEventLoop, _Entry] = {}
        self._lock = threading.Lock()
        _ALL_REGISTRIES.add(self)

    def current(self) -> AsyncEngine:
        """The engine of the running loop, created on first use."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise NoEventLoopError(
                "async engines belong to an event loop and there is none running in this "
                "thread; use the engine from inside a coroutine (for sync code, see sync_compat)"
            ) from None
        entry = self._entries.get(loop)
        if entry is None:
            entry = self._create(loop)
        return entry.engine

    def engines(self) -> list[AsyncEngine]:
        """Every engine currently alive, of any loop (for inspection and leak checks)."""
        return [entry.engine for entry in list(self._entries.values())]

    def _create(self, loop: asyncio.AbstractEventLoop) -> _Entry:
        with self._lock:
            self._forget_closed_loops()
            entry = self._entries.get(loop)
            if entry is None:
                engine = self._factory()
                sentinel = self._dispose_at_shutdown(loop, engine)
                # Run the generator up to its first yield without awaiting (it does no I/O
                # before it), which registers it with the running loop's asyncgen hooks.
                with contextlib.suppress(StopIteration):
                    sentinel.asend(None).send(None)
                entry = self._entries[loop] = _Entry(engine, sentinel)
            return entry

    async def _dispose_at_shutdown(
        self, loop: asyncio.AbstractEventLoop, engine: AsyncEngine
    ) -> AsyncGenerator[None, None]:
        pid = os.getpid()
        try:
            yield
        finally:
            # Reached from loop.shutdown_asyncgens(), or from dispose_current() closing it.
            entry = self._entries.get(loop)
            if entry is not None and entry.engine is engine:
                del self._entries[loop]
            if not loop.is_closed() and os.getpid() == pid:
                try:
                    await _drain(engine, self._dispose_timeout)
                    await asyncio.wait_for(engine.dispose(), self._dispose_timeout)
                except Exception:
                    logger.warning(
                        "disposing the engine of a finished event loop failed", exc_info=True
                    )

    async def dispose_current(self) -> None:
        """Dispose the running loop's engine (if any); the next use creates a new one."""
        loop = asyncio.get_running_loop()
        entry = self._entries.get(loop)
        if entry is not None:
            await entry.sentinel.aclose()
        with self._lock:
            self._forget_closed_loops()

    def _forget_closed_loops(self) -> None:
        # A loop closed without shutdown_asyncgens() (manual loop management) never ran its
        # sentinel; its connections cannot be closed any more, only dropped.
        for loop in [loop for loop in self._entries if loop.is_closed()]:
            entry = self._entries.pop(loop)
            logger.warning(
                "an event loop was closed without shutting down its async generators; its "
                "connections were dropped unclosed. Use asyncio.run(), or await dispose() "
                "before closing the loop."
            )
            _ORPHANS.append(entry)

    def _forget_after_fork(self) -> None:
        self._lock = threading.Lock()
        _ORPHANS.extend(self._entries.values())
        self._entries = {}


async def _drain(engine: AsyncEngine, patience: float) -> None:
    """Wait up to ``patience`` seconds for the sessions still holding connections of ``engine`` to
    end; a connection returned after that is closed on its return, not pooled (the pool
    it returns to is being discarded, and would leave it unclosed)."""
    pool: Any = engine.sync_engine.pool  # a QueuePool: it counts what is checked out
    if pool.checkedout() == 0:
        return
    loop = asyncio.get_running_loop()
    drained = asyncio.Event()
    draining = True

    def returned(_dbapi_connection: Any, record: Any) -> None:
        if not draining:
            record.invalidate()  # closes it: the pool it returns to is gone
        loop.call_soon(check)  # once the return is done

    def check() -> None:
        if pool.checkedout() == 0:
            drained.set()

    event.listen(pool, "checkin", returned)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(patience):
            await drained.wait()
    draining = False
    if pool.checkedout():
        logger.warning(
            "disposing while %d sessions still hold connections after %.1f s; each "
            "connection is closed when its session ends",
            pool.checkedout(),
            patience,
        )


def _after_fork_in_child() -> None:
    for registry in list(_ALL_REGISTRIES):
        registry._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
