"""The shutdown drain: which session scopes of a database are open now, and waiting for
them to end.

``Database.dispose()`` must not close a pool under a session that is still working, nor
leave a session that has not connected yet to connect later on a pool nobody will close.
So every scope, async or sync, is registered here from the moment it opens until it ends,
with its owner (the task, or the thread) and its event loop (``None`` for the sync
engine's scopes); the shutdown waits for the ones it must, from a coroutine or a thread.

A scope abandoned without ending (a dependency generator nobody closed) is not waited
for once its owner has ended, and the scopes are not held, only their owners: an
abandoned one's session is not kept alive from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

__all__ = ["OpenScope", "OpenScopes"]


class OpenScope(NamedTuple):
    """Who holds an open scope: ``owner`` is a task or a thread, ``loop`` the event loop of
    an async scope (``None`` for a scope on the sync engine).
    """

    owner: object
    loop: asyncio.AbstractEventLoop | None

    def alive(self) -> bool:
        owner = self.owner
        if isinstance(owner, asyncio.Task):
            return not owner.done()
        return not isinstance(owner, threading.Thread) or owner.is_alive()


class OpenScopes:
    """The open scopes of one database; thread-safe."""

    def __init__(self) -> None:
        # Keyed by id(): an abandoned scope's entry stays until a new scope at the same
        # address replaces it. (A WeakKeyDictionary cost 1 % more instructions per session.)
        self._open: dict[int, tuple[object, asyncio.AbstractEventLoop | None]] = {}
        self._watchers: list[Callable[[], None]] = []

    # (The dict and the list are changed by single operations, which are atomic; the hot
    # path takes no lock.)
    def opened(self, scope: Any, owner: object, loop: asyncio.AbstractEventLoop | None) -> None:
        self._open[id(scope)] = (owner, loop)

    def closed(self, scope: Any) -> None:
        self._open.pop(id(scope), None)
        if self._watchers:
            for notify in list(self._watchers):
                notify()

    def matching(self, wanted: Callable[[OpenScope], bool]) -> list[OpenScope]:
        """The open scopes ``wanted`` selects, among those whose owner still runs."""
        scopes = [OpenScope(*entry) for entry in list(self._open.values())]
        return [scope for scope in scopes if scope.alive() and wanted(scope)]

    async def wait(self, wanted: Callable[[OpenScope], bool], patience: float) -> list[OpenScope]:
        """Wait up to ``patience`` seconds for the scopes ``wanted`` selects to end; return
        those still open.
        """
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def notify() -> None:  # (called from any thread)
            loop.call_soon_threadsafe(changed.set)

        with self._watching(notify):
            try:
                async with asyncio.timeout(patience):
                    while True:
                        changed.clear()
                        if not self.matching(wanted):
                            break
                        await changed.wait()
            except TimeoutError:
                pass
        return self.matching(wanted)

    def wait_sync(self, wanted: Callable[[OpenScope], bool], patience: float) -> list[OpenScope]:
        """:meth:`wait` for a thread (a sync program's shutdown)."""
        changed = threading.Event()
        deadline = time.monotonic() + patience
        with self._watching(changed.set):
            while True:
                changed.clear()
                remaining = deadline - time.monotonic()
                if not self.matching(wanted) or remaining <= 0:
                    break
                changed.wait(remaining)
        return self.matching(wanted)

    @contextlib.contextmanager
    def _watching(self, notify: Callable[[], None]) -> Iterator[None]:
        """While inside, ``notify`` is called each time a scope ends."""
        self._watchers.append(notify)
        try:
            yield
        finally:
            self._watchers.remove(notify)
