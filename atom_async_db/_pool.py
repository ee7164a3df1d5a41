"""The connection pools of both engines: first come, first served, and overflow
connections kept while they are still needed.

SQLAlchemy's ``QueuePool`` and ``AsyncAdaptedQueuePool`` let a caller take a free
connection while others are already waiting: the task or thread that just gave one back
takes it again at once, so under load a few clients cycle while the rest wait until
``pool_timeout`` (measured: 150 of 200 threads starved over 40 s; async p99 waits of
several seconds at 1,000 clients with a median of 0.1 ms). They also close every overflow
connection the moment it comes back while ``pool_size`` are idle, so a steady load above
``pool_size`` reconnects constantly.

:class:`FairPool` (threads) and :class:`FairAsyncPool` (asyncio tasks) share one logic,
in :class:`FairPool`; only how a caller waits differs:

- A connection given back goes to the longest-waiting caller, never to a newcomer; a
  caller only takes a free connection, or opens a new one, when nobody is waiting.
- Free connections are reused most-recently-returned first, so under a lighter load the
  surplus goes unused and, once it has been idle for ``pool_max_idle`` seconds, is closed
  down to ``pool_size`` by a timer, also when no more traffic comes (after a burst, an
  idle process would otherwise keep every overflow connection, and behind PgBouncer in
  session mode each of them holds a server connection). The timer is set only while
  there is a surplus, so returns pay one comparison for it.
- Room for a new connection (one closed, or a failed connect) goes to the longest-waiting
  caller, which opens it.
- A caller that times out gets :class:`~atom_async_db.PoolTimeoutError`, which says how
  full the pool is and which settings to raise.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections import deque
from typing import Any

from sqlalchemy.pool import ConnectionPoolEntry, Pool
from sqlalchemy.pool.base import _AsyncConnDialect
from sqlalchemy.util import await_, greenlet_spawn

from .exceptions import DatabaseDisposedError, PoolTimeoutError

__all__ = ["FairAsyncPool", "FairPool"]


class _Token:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# Handed to a waiter instead of a connection: "open one yourself", and "time is up".
_OPEN = _Token("OPEN")
_TIMED_OUT = _Token("TIMED_OUT")
_CLOSED = _Token("CLOSED")


def _closed_error() -> DatabaseDisposedError:
    return DatabaseDisposedError(
        "this database was disposed (its shutdown began), so its pool opens no connection. "
        "Configure the database again (atom_async_db.configure(), or a new Database) to "
        "start over."
    )


class _ThreadWaiter:
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


class FairPool(Pool):
    """A first-come-first-served pool of ``pool_size`` connections, plus up to
    ``max_overflow`` more under load (-1: no limit), for threads; see the module
    docstring. ``settings_names`` name the settings its timeout error suggests raising.
    """

    settings_names = ("pool_size", "max_overflow", "pool_timeout")

    def __init__(
        self,
        creator: Any,
        pool_size: int = 5,
        max_overflow: int = 10,
        timeout: float = 30.0,
        use_lifo: bool = False,  # accepted for create_engine's sake: free ones are always LIFO
        max_idle: float = 10.0,
        **kw: Any,
    ) -> None:
        super().__init__(creator, **kw)
        self._size = pool_size
        self._max_overflow = max_overflow
        self._timeout = timeout
        self._max_idle = max_idle
        self._idle_timer: Any = None  # set while free connections beyond pool_size exist
        self._lock = threading.Lock()
        self._free: deque[tuple[ConnectionPoolEntry, float]] = deque()  # (record, since)
        self._waiters: deque[Any] = deque()
        self._open = 0  # connections open or being opened, checked out or free
        self._closed = False  # see close()

    # -- the logic ------------------------------------------------------------------

    def _do_get(self) -> ConnectionPoolEntry:
        with self._lock:
            if self._closed:
                raise _closed_error()
            if self._free:
                # Nobody waits while a connection is free (it would have been handed over):
                # what is left in the queue gave up waiting.
                self._waiters.clear()
                item: Any = self._free.pop()[0]
            elif self._max_overflow == -1 or self._open < self._size + self._max_overflow:
                self._open += 1
                item = _OPEN
            else:
                waiter = self._new_waiter()
                self._waiters.append(waiter)
                item = None
        if item is None:
            item = self._wait(waiter)
        if item is _TIMED_OUT:
            raise self._timeout_error()
        if item is _CLOSED:
            raise _closed_error()
        if item is _OPEN:
            try:
                return self._create_connection()
            except BaseException:
                self._give_up_room()
                raise
        record: ConnectionPoolEntry = item
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        self._put_back(record)

    def _put_back(self, record: ConnectionPoolEntry) -> None:
        with self._lock:
            if not self._closed:
                if not self._hand_over(record):
                    self._free.append((record, time.monotonic()))
                    if self._idle_timer is None and self._open > self._size:
                        self._idle_timer = self._start_timer(self._max_idle)
                return
            self._open -= 1
        record.close()  # a session that outlived the shutdown: its connection ends here

    def _close_idle_surplus(self) -> None:
        """The timer's work: close the free connections beyond ``pool_size`` idle for
        ``pool_max_idle``, and set the timer again for the next one to come due.
        """
        surplus = []
        with self._lock:
            self._idle_timer = None
            now = time.monotonic()
            while self._open > self._size and self._free:
                since = self._free[0][1]
                if since > now - self._max_idle:
                    self._idle_timer = self._start_timer(since + self._max_idle - now)
                    break
                self._open -= 1
                surplus.append(self._free.popleft()[0])
        for record in surplus:
            record.close()

    def _pass_on(self, item: Any) -> None:
        """A waiter that fails after it was handed ``item`` passes it on."""
        if item is _OPEN:
            self._give_up_room()
        elif item is not None and item is not _TIMED_OUT and item is not _CLOSED:
            self._put_back(item)

    def close(self) -> None:
        """Close the pool for good (the database's shutdown), without I/O: checked-out
        connections are closed as they come back, and waiting and later checkouts get
        :class:`~atom_async_db.DatabaseDisposedError`. The engine's ``dispose()`` then
        closes the free ones; the pool it recreates is closed too.
        """
        with self._lock:
            self._closed = True
            while self._waiters:
                self._waiters.popleft().give(_CLOSED)

    def _hand_over(self, item: Any) -> bool:
        """Give ``item`` (a connection, or room to open one) to the longest-waiting
        caller still waiting; under the lock.
        """
        while self._waiters:
            if self._waiters.popleft().give(item):
                return True
        return False

    def _give_up_room(self) -> None:
        """A connection was closed or could not be opened: its room goes to a waiter."""
        with self._lock:
            if not self._hand_over(_OPEN):
                self._open -= 1

    # -- waiting and timers (threads here, tasks in FairAsyncPool) --------------------

    def _start_timer(self, delay: float) -> Any:
        timer = threading.Timer(delay, self._close_idle_surplus)
        timer.daemon = True
        timer.start()
        return timer

    def _new_waiter(self) -> Any:
        return _ThreadWaiter()

    def _wait(self, waiter: Any) -> Any:
        try:
            ready = waiter.ready.acquire(timeout=self._timeout)
        except BaseException:  # a signal handler's exception, KeyboardInterrupt
            with self._lock:
                waiter.abandoned = True
                item = waiter.item
            self._pass_on(item)
            raise
        if ready:
            return waiter.item
        with self._lock:
            if waiter.item is not None:  # handed over as the wait ran out
                return waiter.item
            waiter.abandoned = True
        return _TIMED_OUT

    def _timeout_error(self) -> PoolTimeoutError:
        size, overflow, timeout = self.settings_names
        return PoolTimeoutError(
            f"no database connection became free within {timeout}={self._timeout:g} s: "
            f"all the pool may open are checked out (checked out: {self.checkedout()}, "
            f"{size}={self._size}, {overflow}={self._max_overflow}). Release sessions "
            f"sooner (a session holds its connection until its block ends), or raise "
            f"{size}, {overflow} or {timeout}."
        )

    # -- the Pool interface -----------------------------------------------------------

    def reopen(self) -> None:
        """Undo :meth:`close`: the database was opened again."""
        with self._lock:
            self._closed = False

    def recreate(self) -> FairPool:
        self.logger.info("Pool recreating")
        pool = self.__class__(
            self._creator,
            pool_size=self._size,
            max_overflow=self._max_overflow,
            timeout=self._timeout,
            max_idle=self._max_idle,
            pre_ping=self._pre_ping,
            recycle=self._recycle,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            _dispatch=self.dispatch,
            dialect=self._dialect,
        )
        pool._closed = self._closed
        return pool

    def dispose(self) -> None:
        with self._lock:
            free = [record for record, _ in self._free]
            self._free.clear()
            self._open -= len(free)
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
        for record in free:
            record.close()
        self.logger.info("Pool disposed. %s", self.status())

    def status(self) -> str:
        return (
            f"Pool size: {self.size()}  Connections in pool: {self.checkedin()} "
            f"Current Overflow: {self.overflow()} Current Checked out connections: "
            f"{self.checkedout()}"
        )

    def size(self) -> int:
        return self._size

    def timeout(self) -> float:
        return self._timeout

    def checkedin(self) -> int:
        return len(self._free)

    def overflow(self) -> int:
        return self._open - self._size

    def checkedout(self) -> int:
        return self._open - len(self._free)

    def exhausted(self) -> bool:
        """Whether a checkout now would have to wait."""
        return (
            not self._free
            and self._max_overflow != -1
            and self._open >= self._size + self._max_overflow
        )


class FairAsyncPool(FairPool):
    """:class:`FairPool` for asyncio tasks (the async engine's pool, one per event loop).
    A cancelled waiter passes on what it was handed.
    """

    _is_asyncio = True
    _dialect = _AsyncConnDialect()

    # One timer for all waiters, not one each: they share a timeout, so the oldest waiter's
    # deadline comes first, and the timer is set again only when it fires.
    _timed: collections.deque[_TaskWaiter] | None = None
    _timer: asyncio.TimerHandle | None = None
    _closing: asyncio.Task[None] | None = None  # the idle surplus closing (kept referenced)

    def _new_waiter(self) -> Any:
        loop = asyncio.get_running_loop()
        return _TaskWaiter(loop.create_future(), loop.time() + self._timeout)

    def _start_timer(self, delay: float) -> Any:
        # (Closing is I/O that SQLAlchemy runs in a greenlet, so the timer starts a task.)
        return asyncio.get_running_loop().call_later(delay, self._spawn_close)

    def _spawn_close(self) -> None:
        self._closing = asyncio.get_running_loop().create_task(
            greenlet_spawn(self._close_idle_surplus)
        )

    def _wait(self, waiter: Any) -> Any:
        return await_(self._wait_async(waiter))

    async def _wait_async(self, waiter: _TaskWaiter) -> Any:
        timed = self._timed
        if timed is None:
            timed = self._timed = collections.deque()
        while timed and timed[0].future.done():
            timed.popleft()
        timed.append(waiter)
        if self._timer is None:
            self._timer = waiter.future.get_loop().call_at(waiter.deadline, self._expire_due)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            future = waiter.future
            if future.done() and not future.cancelled():  # handed over, then cancelled
                self._pass_on(future.result())
            raise

    def _expire_due(self) -> None:
        """Time out the waiters whose deadline has come, and set the timer for the next."""
        self._timer = None
        timed = self._timed
        assert timed is not None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while timed:
            waiter = timed[0]
            if not waiter.future.done():
                if waiter.deadline > now:
                    self._timer = loop.call_at(waiter.deadline, self._expire_due)
                    return
                with self._lock:
                    waiter.give(_TIMED_OUT)
            timed.popleft()


class _TaskWaiter:
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
