"""Pool statistics: what each pool counts as it works, and the frozen snapshots
:meth:`Database.pool_stats() <atom_async_db.Database.pool_stats>` returns.

Each pool (``_pool.FairPool``) owns a :class:`PoolCounters`, shared by the pools an
engine's ``dispose()`` recreates, and updates it under its own lock, so the figures add
up exactly under threads too. Durations go into :class:`Histogram`: fixed buckets, about
fourteen per decade from 1 microsecond to 1,000 s, so that recording one costs a bisection and
an increment, and a percentile read from them is at most 25 % above the true value
(never above the maximum, which is kept exactly).

Anything that wants every sample as it happens (OpenTelemetry's synchronous histograms)
adds a callback to :attr:`PoolCounters.listeners`; without one, recording calls nothing.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import event
from sqlalchemy.pool import Pool

logger = logging.getLogger("atom_async_db")

__all__ = [
    "BOUNDS",
    "Histogram",
    "HistogramStats",
    "PoolBook",
    "PoolCounters",
    "PoolStats",
    "SampleListener",
    "count_connections",
    "snapshot_of",
    "sum_stats",
]

_STEPS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)

#: The histograms' bucket upper bounds, in seconds: a value ``v`` is counted in the first
#: bucket whose bound is ``>= v``; a last bucket (no bound) takes the rest.
BOUNDS: tuple[float, ...] = (
    *(round(step * 10.0**exponent, 12) for exponent in range(-6, 3) for step in _STEPS),
    1000.0,
)

#: Called with the pool's name, the histogram's name (``"wait_time"``, ``"use_time"``,
#: ``"connect_time"``, ``"statement_time"``) and a duration in seconds, for each sample,
#: under the pool's lock: keep it short.
SampleListener = Callable[[str, str, float], None]


class Histogram:
    """Durations in seconds, counted in the buckets of :data:`BOUNDS`."""

    __slots__ = ("counts", "maximum", "name", "total")

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts = [0] * (len(BOUNDS) + 1)
        self.total = 0.0
        self.maximum = 0.0

    def record(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BOUNDS, seconds)] += 1
        self.total += seconds
        if seconds > self.maximum:
            self.maximum = seconds

    def add(self, counts: Iterable[int], total: float, maximum: float) -> None:
        """Count another histogram's samples (its bucket counts, sum and max) here too."""
        self.counts = [mine + theirs for mine, theirs in zip(self.counts, counts, strict=True)]
        self.total += total
        self.maximum = max(self.maximum, maximum)

    def snapshot(self) -> HistogramStats:
        counts = tuple(self.counts)
        return HistogramStats(
            count=sum(counts),
            sum=self.total,
            max=self.maximum,
            p50=_percentile(counts, 0.50, self.maximum),
            p95=_percentile(counts, 0.95, self.maximum),
            p99=_percentile(counts, 0.99, self.maximum),
            bucket_counts=counts,
        )


def _percentile(counts: tuple[int, ...], quantile: float, maximum: float) -> float:
    """The bound of the bucket holding the sample of rank ``quantile``, capped at the max."""
    total = sum(counts)
    if total == 0:
        return 0.0
    rank = quantile * total
    seen = 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank and count:
            return min(BOUNDS[index], maximum) if index < len(BOUNDS) else maximum
    return maximum  # (not reached: the last bucket with a sample holds the top rank)


@dataclass(frozen=True)
class HistogramStats:
    """A duration histogram's figures, in seconds.

    The percentiles are read from buckets: each is at most 25 % above the true value, and
    never above ``max``, which is exact. All are 0 while ``count`` is 0.
    """

    count: int
    """How many durations were recorded."""
    sum: float
    """Their total, in seconds."""
    max: float
    """The longest."""
    p50: float
    """The median."""
    p95: float
    """The 95th percentile."""
    p99: float
    """The 99th percentile."""
    bucket_counts: tuple[int, ...] = dataclasses.field(repr=False)
    """How many fell in each bucket of :data:`BOUNDS` (``atom_async_db._stats.BOUNDS``,
    plus one past the last bound), for exporters that rebuild the histogram."""


class PoolCounters:
    """What one pool counted since it was created; changed under the pool's lock."""

    __slots__ = (
        "checkouts",
        "closed",
        "connect_time",
        "discarded",
        "listeners",
        "lock",
        "name",
        "opened",
        "statement_time",
        "timeouts",
        "use_time",
        "wait_time",
    )

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.lock = threading.Lock()  # the pool's lock (see _pool.FairPool)
        self.opened = 0
        self.closed = 0
        self.discarded = 0
        self.checkouts = 0
        self.timeouts = 0
        self.wait_time = Histogram("wait_time")
        self.use_time = Histogram("use_time")
        self.connect_time = Histogram("connect_time")
        self.statement_time = Histogram("statement_time")
        self.listeners: list[SampleListener] = []

    def record(self, histogram: Histogram, seconds: float) -> None:
        histogram.record(seconds)
        if self.listeners:
            for listener in self.listeners:
                try:
                    listener(self.name, histogram.name, seconds)
                except Exception:  # an exporter's failure must not fail a checkout
                    logger.exception("a pool statistics listener failed")

    def add(self, other: PoolCounters) -> None:
        """Count ``other``'s figures here too (a pool that is gone, kept in the totals)."""
        for name in ("opened", "closed", "discarded", "checkouts", "timeouts"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in HISTOGRAMS:
            theirs: Histogram = getattr(other, name)
            getattr(self, name).add(theirs.counts, theirs.total, theirs.maximum)

    def add_snapshot(self, stats: PoolStats) -> None:
        """Count the figures since start of ``stats`` (a snapshot) here too."""
        self.opened += stats.connections_opened
        self.closed += stats.connections_closed
        self.discarded += stats.connections_discarded
        self.checkouts += stats.checkouts
        self.timeouts += stats.timeouts
        for name in HISTOGRAMS:
            figures: HistogramStats = getattr(stats, name)
            getattr(self, name).add(figures.bucket_counts, figures.sum, figures.max)


PoolKind = Literal["async", "sync", "all"]

#: The histograms of :class:`PoolCounters` and :class:`PoolStats`.
HISTOGRAMS = ("wait_time", "use_time", "connect_time", "statement_time")


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a database's connection pools, from
    :meth:`Database.pool_stats() <atom_async_db.Database.pool_stats>`.

    The snapshot returned is the sum over the database's pools (``kind="all"``); each
    pool's own figures are in :attr:`pools`: one async pool per event loop that used the
    database, and the legacy layer's sync pool once sync code opened it. Counts "since
    start" include pools that are gone (the engine of an event loop that ended); the
    current figures (``open``, ``in_use``, ``idle``, ``waiting``) are those of the pools
    alive now. A pool of the application's own (``engine_options={"poolclass": ...}``) is
    not counted.

    Example::

        stats = database.pool_stats()
        if stats.waiting:
            print(f"{stats.waiting} callers wait; p99 wait {stats.wait_time.p99:.3f} s")
    """

    name: str
    """The pool's name: host, port and database (the password never), the file of a
    SQLite database, or ``pool_name``; a sync pool's ends with `` (sync)``."""
    kind: PoolKind
    """``"async"`` (an event loop's pool), ``"sync"`` (the legacy layer's) or ``"all"``."""
    pool_size: int
    """Connections the pool keeps open once opened (summed over the pools)."""
    max_overflow: int
    """Connections it may open beyond ``pool_size`` under load; -1: no limit."""
    open: int
    """Connections open now, checked out or free (including ones being opened)."""
    in_use: int
    """Connections checked out now: held by a session, or being opened for one."""
    idle: int
    """Connections free in the pool now."""
    waiting: int
    """Callers (tasks and threads) waiting now for a connection."""
    connections_opened: int
    """Connections opened since start (reconnections included)."""
    connections_closed: int
    """Connections closed since start, for any reason (discarded ones included)."""
    connections_discarded: int
    """Of those, connections closed because they were broken or could not be trusted
    (invalidated: a dropped connection, a cancelled statement's connection)."""
    checkouts: int
    """Connections handed out since start."""
    timeouts: int
    """Callers that gave up after ``pool_timeout`` (:class:`PoolTimeoutError`) since start."""
    wait_time: HistogramStats
    """Time each checkout took to get a connection (0 when one was free); callers that
    gave up are in ``timeouts``, not here."""
    use_time: HistogramStats
    """Time from each checkout to the connection's return."""
    connect_time: HistogramStats
    """Time each new connection took to open."""
    statement_time: HistogramStats
    """Time each timed statement took: every statement when ``slow_statement_threshold``
    or ``idle_in_transaction_threshold`` is set, else only those of monitored sessions
    (``sync_compat.database_manager.get_monitored_db_session``)."""
    pools: tuple[PoolStats, ...] = ()
    """Each pool's own snapshot (only in the sum)."""
    retired: PoolStats | None = None
    """Only in the sum: the figures since start of the pools that are gone (the engine of
    an event loop that ended), which the sum's counts include."""

    @property
    def saturated(self) -> bool:
        """Whether a caller is waiting: every connection the pools may open is in use."""
        return self.waiting > 0


def snapshot_of(
    name: str,
    kind: PoolKind,
    counters: PoolCounters,
    *,
    pool_size: int,
    max_overflow: int,
    open: int,
    idle: int,
    waiting: int,
) -> PoolStats:
    """One pool's snapshot (the pool holds its lock while this copies)."""
    return PoolStats(
        name=name,
        kind=kind,
        pool_size=pool_size,
        max_overflow=max_overflow,
        open=open,
        in_use=open - idle,
        idle=idle,
        waiting=waiting,
        connections_opened=counters.opened,
        connections_closed=counters.closed,
        connections_discarded=counters.discarded,
        checkouts=counters.checkouts,
        timeouts=counters.timeouts,
        wait_time=counters.wait_time.snapshot(),
        use_time=counters.use_time.snapshot(),
        connect_time=counters.connect_time.snapshot(),
        statement_time=counters.statement_time.snapshot(),
    )


def sum_stats(name: str, pools: Iterable[PoolStats], retired: PoolCounters) -> PoolStats:
    """The sum of ``pools`` (each a snapshot of one live pool) and of the ``retired``
    counters of pools that are gone.
    """
    pools = tuple(pools)
    total = PoolCounters()
    total.add(retired)
    for pool in pools:
        total.add_snapshot(pool)
    gone = snapshot_of(name, "all", retired, pool_size=0, max_overflow=0, open=0, idle=0, waiting=0)
    summed = snapshot_of(
        name,
        "all",
        total,
        pool_size=sum(pool.pool_size for pool in pools),
        max_overflow=-1
        if any(pool.max_overflow == -1 for pool in pools)
        else sum(pool.max_overflow for pool in pools),
        open=sum(pool.open for pool in pools),
        idle=sum(pool.idle for pool in pools),
        waiting=sum(pool.waiting for pool in pools),
    )
    return dataclasses.replace(summed, pools=pools, retired=gone)


class PoolBook:
    """The pools of one database: the engines that own them, and the counters of those
    gone, kept in the totals.
    """

    def __init__(self) -> None:
        self._engines: list[tuple[weakref.ref[Any], PoolCounters]] = []
        self._retired = PoolCounters()
        self._listeners: list[SampleListener] = []
        self._lock = threading.Lock()

    def track(self, engine: Any) -> None:
        """Count ``engine``'s pool (a sync ``Engine``; not one of the application's own)."""
        counters = getattr(engine.pool, "counters", None)
        if counters is not None:
            with self._lock:
                self._engines = [entry for entry in self._engines if entry[0]() is not None]
                self._engines.append((weakref.ref(engine), counters))
                counters.listeners.extend(self._listeners)

    def listen(self, listener: SampleListener) -> Callable[[], None]:
        """Call ``listener`` for each sample of every pool, now and to come; returns the
        function that stops it.
        """
        with self._lock:
            self._listeners.append(listener)
            for _, counters in self._engines:
                counters.listeners.append(listener)

        def stop() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
                for _, counters in self._engines:
                    if listener in counters.listeners:
                        counters.listeners.remove(listener)

        return stop

    def snapshot(self, name: str, alive: Iterable[Any]) -> PoolStats:
        """The sum over the pools of the ``alive`` engines and the counters of the rest,
        which are folded into the retired totals, once.
        """
        alive_ids = {id(engine) for engine in alive}
        pools = []
        with self._lock:
            kept = []
            for reference, counters in self._engines:
                engine = reference()
                if engine is not None and id(engine) in alive_ids:
                    kept.append((reference, counters))
                    pools.append(engine.pool.stats())
                else:
                    with counters.lock:
                        self._retired.add(counters)
            self._engines = kept
            return sum_stats(name, pools, self._retired)


def count_connections(pool: Pool, counters: PoolCounters) -> None:
    """Count ``pool``'s connections opened (and how long each took), closed and
    discarded, from its events, which fire for reconnections too.
    """

    @event.listens_for(pool, "connect")
    def _opened(_dbapi_connection: Any, record: Any) -> None:
        # (The record's starttime is set just before the driver's connect call.)
        took = max(0.0, time.time() - record.starttime)
        with counters.lock:
            counters.opened += 1
            counters.record(counters.connect_time, took)

    @event.listens_for(pool, "close")
    def _closed(*_: Any) -> None:
        with counters.lock:
            counters.closed += 1

    @event.listens_for(pool, "close_detached")
    def _closed_detached(*_: Any) -> None:
        with counters.lock:
            counters.closed += 1
            counters.discarded += 1

    @event.listens_for(pool, "invalidate")
    @event.listens_for(pool, "soft_invalidate")
    def _discarded(*_: Any) -> None:
        with counters.lock:
            counters.discarded += 1
