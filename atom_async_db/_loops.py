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
from sqlalchemy.engine import Engine
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
    closing: bool = False  # closed for good (the database's shutdown), not just at loop end


class LoopEngines:
    """Engines keyed by event loop, created by ``factory`` on first use in each loop."""

    def __init__(self, factory: Callable[[], AsyncEngine], *, dispose_timeout: float) -> None:
        self._factory = factory
        self._dispose_timeout = dispose_timeout
        self._entries: dict[asyncio.AbstractEventLoop, _Entry] = {}
        self._lock = threading.Lock()
        _ALL_REGISTRIES.add(self)

    def current(self, *, create: bool = True) -> AsyncEngine | None:
        """The engine of the running loop, created on first use (unless not ``create``).

        Raises:
            NoEventLoopError: no event loop is running in this thread.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise NoEventLoopError(
                "async engines belong to an event loop and there is none running in this "
                "thread; use the engine from inside a coroutine (for sync code, see sync_compat)"
            ) from None
        entry = self._entries.get(loop)
        if entry is None:
            if not create:
                return None
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
            # Reached from loop.shutdown_asyncgens(), or from close_current() closing it.
            entry = self._entries.get(loop)
            closing = False
            if entry is not None and entry.engine is engine:
                del self._entries[loop]
                closing = entry.closing
            if not loop.is_closed() and os.getpid() == pid:
                try:
                    # Sessions still out close their connections as they end (an
                    # application's NullPool closes every connection as it comes back).
                    close = getattr(engine.sync_engine.pool, "close", None)
                    if closing and close is not None:
                        close()
                    if closing or await _wait_until_idle(engine, self._dispose_timeout):
                        await asyncio.wait_for(engine.dispose(), self._dispose_timeout)
                    else:
                        _dispose_when_idle(engine)
                except Exception:
                    logger.warning(
                        "disposing the engine of a finished event loop failed", exc_info=True
                    )

    async def close_current(self) -> None:
        """Close the running loop's engine for good (see ``FairPool.close``): its free
        connections now, those still checked out as they come back.
        """
        loop = asyncio.get_running_loop()
        entry = self._entries.get(loop)
        if entry is not None:
            entry.closing = True
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


def _checked_out(engine: AsyncEngine) -> int:
    """Connections checked out of ``engine``'s pool; 0 for a pool that does not count them
    (an application's ``NullPool``, which closes each connection as it comes back).
    """
    checkedout = getattr(engine.sync_engine.pool, "checkedout", None)
    return 0 if checkedout is None else int(checkedout())


def _when_idle(engine: AsyncEngine, on_idle: Callable[[], None]) -> Callable[[], bool]:
    """Call ``on_idle`` once, when the last connection checked out of ``engine``'s pool is
    back in it; returns a function that stops waiting (True if it was still waiting).
    """
    pool: Any = engine.sync_engine.pool
    loop = asyncio.get_running_loop()

    def returned(*_: Any) -> None:
        loop.call_soon(check)  # once the connection is back in the pool

    def check() -> None:
        if _checked_out(engine) == 0 and stop():
            on_idle()

    def stop() -> bool:
        if not event.contains(pool, "checkin", returned):
            return False
        event.remove(pool, "checkin", returned)
        return True

    event.listen(pool, "checkin", returned)
    return stop


async def _wait_until_idle(engine: AsyncEngine, patience: float) -> bool:
    """Wait up to ``patience`` seconds for the sessions holding connections of ``engine``
    to end; True once none is checked out.
    """
    if _checked_out(engine) == 0:
        return True
    idle = asyncio.Event()
    stop = _when_idle(engine, idle.set)
    try:
        async with asyncio.timeout(patience):
            await idle.wait()
    except TimeoutError:
        return False
    finally:
        stop()
    return True


def _dispose_when_idle(engine: AsyncEngine) -> None:
    """Dispose ``engine`` once its last checked-out connection comes back.

    Disposing earlier would strand those connections: they would return to a discarded
    pool and be dropped unclosed.
    """
    logger.warning(
        "dispose: %d sessions still hold connections; the engine is closed when they end",
        _checked_out(engine),
    )

    def dispose() -> None:
        task = asyncio.get_running_loop().create_task(engine.dispose())
        _LATE_DISPOSALS.add(task)
        task.add_done_callback(_LATE_DISPOSALS.discard)

    _when_idle(engine, dispose)


_LATE_DISPOSALS: set[asyncio.Task[None]] = set()


def forget_in_forked_children(engine: Engine) -> None:
    """Make a forked child drop ``engine``'s connections unclosed: the parent's sockets
    are the parent's (for the sync engine, which is not one per loop).
    """
    reference = weakref.ref(engine)

    def forget() -> None:
        engine = reference()
        if engine is not None:
            engine.dispose(close=False)

    os.register_at_fork(after_in_child=forget)


def _after_fork_in_child() -> None:
    for registry in list(_ALL_REGISTRIES):
        registry._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
