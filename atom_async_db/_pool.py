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

from ._leaks import LeakWatch
from ._stats import PoolCounters, PoolKind, PoolStats, count_connections, snapshot_of
from ._waiters import CLOSED, OPEN, TIMED_OUT, TaskWaiter, ThreadWaiter
from .exceptions import DatabaseDisposedError, PoolTimeoutError

__all__ = ["FairAsyncPool", "FairPool"]


def _closed_error() -> DatabaseDisposedError:
    return DatabaseDisposedError(
        "this database was disposed (its shutdown began), so its pool opens no connection. "
        "Configure the database again (atom_async_db.configure(), or a new Database) to "
        "start over."
    )


class FairPool(Pool):
    """A first-come-first-served pool of ``pool_size`` connections, plus up to
    ``max_overflow`` more under load (-1: no limit), for threads; see the module
    docstring. ``settings_names`` name the settings its timeout error suggests raising.

    It counts what it does in ``counters`` (see ``_stats``), which the pools that an
    engine's ``dispose()`` recreates share, with their lock; :meth:`stats` reads them.
    With ``leak_threshold`` (seconds), a connection checked out longer is reported (see
    ``_leaks``).
    """

    settings_names = ("pool_size", "max_overflow", "pool_timeout")
    kind: PoolKind = "sync"
    # SQLAlchemy's pool messages ("checked out", "returned to pool") go where its own
    # pools' go, under sqlalchemy.pool, not under the application-facing atom_async_db.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.FairPool"

    def __init__(
        self,
        creator: Any,
        pool_size: int = 5,
        max_overflow: int = 10,
        timeout: float = 30.0,
        use_lifo: bool = False,  # accepted for create_engine's sake: free ones are always LIFO
        max_idle: float = 10.0,
        stats_name: str = "pool",
        leak_threshold: float | None = None,
        counters: PoolCounters | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(creator, **kw)
        self._size = pool_size
        self._max_overflow = max_overflow
        self._timeout = timeout
        self._max_idle = max_idle
        self._idle_timer: Any = None  # set while free connections beyond pool_size exist
        self.stats_name = stats_name
        if counters is None:
            counters = PoolCounters(stats_name)
            count_connections(self, counters)  # (the recreated pools inherit the listeners)
        self.counters = counters
        self._lock = counters.lock
        self._free: deque[tuple[ConnectionPoolEntry, float]] = deque()  # (record, since)
        self._waiters: deque[Any] = deque()
        self._waiting = 0  # callers in _wait()
        self._out: dict[ConnectionPoolEntry, float] = {}  # checked out: since when
        self._open = 0  # connections open or being opened, checked out or free
        self._closed = False  # see close()
        self._leak_threshold = leak_threshold
        self._leaks = None if leak_threshold is None else LeakWatch(leak_threshold, self)

    # -- the logic ------------------------------------------------------------------

    def _do_get(self) -> ConnectionPoolEntry:
        counters = self.counters
        with self._lock:
            if self._closed:
                raise _closed_error()
            if self._free:
                # Nobody waits while a connection is free (it would have been handed over):
                # what is left in the queue gave up waiting.
                self._waiters.clear()
                item: Any = self._free.pop()[0]
                # The common case, counted under this lock: no wait, no second lock.
                counters.checkouts += 1
                counters.record(counters.wait_time, 0.0)
                self._out[item] = time.monotonic()
            elif self._max_overflow == -1 or self._open < self._size + self._max_overflow:
                self._open += 1
                item = OPEN
            else:
                waiter = self._new_waiter()
                self._waiters.append(waiter)
                self._waiting += 1
                item = None
        if item is not OPEN and item is not None:
            return self._taken(item)
        asked = time.monotonic()
        if item is None:
            try:
                item = self._wait(waiter)
            finally:
                with self._lock:
                    self._waiting -= 1
                    if item is TIMED_OUT:
                        counters.timeouts += 1
        if item is TIMED_OUT:
            raise self._timeout_error()
        if item is CLOSED:
            raise _closed_error()
        given = time.monotonic()
        record = item
        if item is OPEN:
            try:
                record = self._create_connection()
            except BaseException:
                self._give_up_room()
                raise
        with self._lock:
            counters.checkouts += 1
            counters.record(counters.wait_time, given - asked)
            self._out[record] = time.monotonic()
        return self._taken(record)

    def _taken(self, record: ConnectionPoolEntry) -> ConnectionPoolEntry:
        if self._leaks is not None:
            self._leaks.taken(record)  # (where it was taken: outside the lock, it costs)
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        self._put_back(record)

    def _put_back(self, record: ConnectionPoolEntry) -> None:
        now = time.monotonic()
        with self._lock:
            since = self._out.pop(record, None)
            if since is not None:  # (None: handed to a waiter that gave up, passed on)
                self.counters.record(self.counters.use_time, now - since)
            closing = self._closed
            if closing:
                self._open -= 1
            elif not self._hand_over(record):
                self._free.append((record, now))
                if self._idle_timer is None and self._open > self._size:
                    self._idle_timer = self._start_idle_timer(self._max_idle)
        if self._leaks is not None and since is not None:
            self._leaks.returned(record, now - since)
        if closing:
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
                    self._idle_timer = self._start_idle_timer(since + self._max_idle - now)
                    break
                self._open -= 1
                surplus.append(self._free.popleft()[0])
        for record in surplus:
            record.close()

    def _pass_on(self, item: Any) -> None:
        """A waiter that fails after it was handed ``item`` passes it on."""
        if item is OPEN:
            self._give_up_room()
        elif item is not None and item is not TIMED_OUT and item is not CLOSED:
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
                self._waiters.popleft().give(CLOSED)

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
            if not self._hand_over(OPEN):
                self._open -= 1

    # -- waiting and timers (threads here, tasks in FairAsyncPool) --------------------

    def _start_timer(self, delay: float, callback: Any) -> Any:
        """Call ``callback`` in ``delay`` seconds; returns what ``cancel()`` stops."""
        timer = threading.Timer(delay, callback)
        timer.daemon = True
        timer.start()
        return timer

    def _start_idle_timer(self, delay: float) -> Any:
        return self._start_timer(delay, self._close_idle_surplus)

    def _new_waiter(self) -> Any:
        return ThreadWaiter()

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
        return TIMED_OUT

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
            stats_name=self.stats_name,
            leak_threshold=self._leak_threshold,
            counters=self.counters,
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
        if self._leaks is not None:
            self._leaks.stop()
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

    def stats(self) -> PoolStats:
        """A snapshot of this pool's figures (see :class:`~atom_async_db.PoolStats`)."""
        with self._lock:
            return snapshot_of(
                self.stats_name,
                self.kind,
                self.counters,
                pool_size=self._size,
                max_overflow=self._max_overflow,
                open=self._open,
                idle=len(self._free),
                waiting=self._waiting,
            )

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
    kind: PoolKind = "async"
    _sqla_logger_namespace = "sqlalchemy.pool.impl.FairAsyncPool"

    # One timer for all waiters, not one each: they share a timeout, so the oldest waiter's
    # deadline comes first, and the timer is set again only when it fires.
    _timed: collections.deque[TaskWaiter] | None = None
    _timer: asyncio.TimerHandle | None = None
    _closing: asyncio.Task[None] | None = None  # the idle surplus closing (kept referenced)

    def _new_waiter(self) -> Any:
        loop = asyncio.get_running_loop()
        return TaskWaiter(loop.create_future(), loop.time() + self._timeout)

    def _start_timer(self, delay: float, callback: Any) -> Any:
        return asyncio.get_running_loop().call_later(delay, callback)

    def _start_idle_timer(self, delay: float) -> Any:
        # (Closing is I/O that SQLAlchemy runs in a greenlet, so the timer starts a task.)
        return self._start_timer(delay, self._spawn_close)

    def _spawn_close(self) -> None:
        self._closing = asyncio.get_running_loop().create_task(
            greenlet_spawn(self._close_idle_surplus)
        )

    def _wait(self, waiter: Any) -> Any:
        return await_(self._wait_async(waiter))

    async def _wait_async(self, waiter: TaskWaiter) -> Any:
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
                    waiter.give(TIMED_OUT)
            timed.popleft()
