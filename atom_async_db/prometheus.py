"""Prometheus integration: the connection pools' figures on a ``/metrics`` endpoint.

Needs the ``prometheus`` extra (``pip install 'atom_async_db[prometheus]'``, the
``prometheus-client`` package). Importing ``atom_async_db`` never imports it; importing
this module does. On a FastAPI application::

    from fastapi import FastAPI
    from atom_async_db.fastapi import lifespan
    from atom_async_db.prometheus import metrics_app

    app = FastAPI(lifespan=lifespan)
    app.mount("/metrics", metrics_app())  # the default database's pools

or on prometheus-client's default registry, beside the process's own metrics::

    from atom_async_db.prometheus import register

    register()  # then prometheus_client.make_asgi_app(), start_http_server(), ...

The figures are read from :meth:`Database.pool_stats() <atom_async_db.Database.pool_stats>`
when Prometheus scrapes; nothing is added to a checkout. The names are those that
OpenTelemetry's Prometheus exporter gives the instruments of :mod:`atom_async_db.otel`, so
that a dashboard works with either; each series has the label
``db_client_connection_pool_name``:

- gauges ``db_client_connection_count`` (connections open now, by
  ``db_client_connection_state``: ``idle`` or ``used``), ``db_client_connection_max``
  (``pool_size + max_overflow``; none without a limit), ``db_client_connection_idle_max``
  (``pool_size``), ``db_client_connection_idle_min`` (0: connections open as needed) and
  ``db_client_connection_pending_requests`` (callers waiting for a connection);
- counters ``db_client_connection_timeouts_total`` (callers that gave up after
  ``pool_timeout``), ``atom_db_connections_opened_total``, ``atom_db_connections_closed_total``,
  ``atom_db_connections_discarded_total`` (closed as broken or untrusted) and
  ``atom_db_checkouts_total``;
- histograms, in seconds: ``db_client_connection_create_time_seconds`` (opening a
  connection), ``db_client_connection_wait_time_seconds`` (a checkout's wait),
  ``db_client_connection_use_time_seconds`` (checkout to return) and
  ``atom_db_statement_time_seconds`` (the statements timed: see
  :attr:`PoolStats.statement_time <atom_async_db.PoolStats.statement_time>`), with
  buckets from 0.1 ms to 100 s (1, 2.5, 5 per decade), counted exactly.

A pool's name is its host, port and database (``127.0.0.1:5432/app``;
``sqlite:/path/app.db``; the user and password never), with `` (sync)`` for the legacy
layer's pool, or the ``pool_name`` setting; the pools of several event loops share their
name and are summed. Counts since start include the pools of event loops that ended.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator

try:
    from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as error:  # pragma: no cover (the tests run with it installed)
    raise ImportError(
        "atom_async_db.prometheus needs prometheus-client: pip install 'atom_async_db[prometheus]'"
    ) from error

from ._database import Database
from ._default import get_database
from ._export import EXPORT_BOUNDS, by_name
from ._stats import BOUNDS, HISTOGRAMS, HistogramStats, PoolStats

__all__ = ["PoolCollector", "metrics_app", "register"]

_POOL = "db_client_connection_pool_name"
_STATE = "db_client_connection_state"

# How many of _stats's buckets each of ours takes in (a value v is in the first whose
# bound is >= v), and each bound as Prometheus writes it.
_CUTS = tuple(bisect.bisect_right(BOUNDS, bound) for bound in EXPORT_BOUNDS)
_LE = tuple(repr(bound) for bound in EXPORT_BOUNDS)  # (as prometheus-client writes these)

_HISTOGRAMS = {
    "connect_time": ("db_client_connection_create_time", "Time it took to open a connection"),
    "wait_time": ("db_client_connection_wait_time", "Time a checkout waited for a connection"),
    "use_time": ("db_client_connection_use_time", "Time a connection was checked out"),
    "statement_time": ("atom_db_statement_time", "Time a timed statement took"),
}
_GAUGES = (
    ("db_client_connection_max", "The most connections the pool may open"),
    ("db_client_connection_idle_max", "The most free connections the pool keeps"),
    ("db_client_connection_idle_min", "The fewest free connections the pool keeps"),
    ("db_client_connection_pending_requests", "Callers waiting for a connection"),
)
_COUNTERS = (
    ("db_client_connection_timeouts", "Callers that gave up waiting for a connection"),
    ("atom_db_connections_opened", "Connections opened"),
    ("atom_db_connections_closed", "Connections closed"),
    ("atom_db_connections_discarded", "Connections closed as broken or untrusted"),
    ("atom_db_checkouts", "Connections handed out"),
)


class PoolCollector(Collector):
    """A collector of a database's pool figures (see the module's documentation), read
    at each scrape. Register it on a registry of your own
    (``registry.register(PoolCollector(database))``), or let :func:`register` do it.

    Args:
        database: the database; None: the default one, looked up at each scrape
            (:func:`~atom_async_db.get_database`: a later
            :func:`~atom_async_db.configure` is followed).
        pool_name: the pool-name label of all the database's pools, its sync pool's
            included; None: each pool's own name.

    Raises:
        Nothing: it reads nothing until it is collected.
    """

    def __init__(self, database: Database | None = None, *, pool_name: str | None = None) -> None:
        self._sources: list[tuple[Database | None, str | None]] = [(database, pool_name)]
        self._lock = threading.Lock()
        self._sums: dict[tuple[str, str], tuple[int, float]] = {}

    def collect(self) -> Iterator[Metric]:
        """The metric families, from the databases' pool statistics now.

        Raises:
            What :func:`atom_async_db.get_database` raises, for a collector of the default
            database.
        """
        with self._lock:
            sources = list(self._sources)
        seen: dict[tuple[int, str | None], tuple[Database, str | None]] = {}
        for database, pool_name in sources:
            resolved = get_database() if database is None else database
            seen.setdefault((id(resolved), pool_name), (resolved, pool_name))
        groups = by_name((database.pool_stats(), name) for database, name in seen.values())
        return iter(self._families(groups))

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples: the names a registry checks for clashes.

        Raises:
            Nothing: it reads no statistics.
        """
        return iter(self._families({}))

    def _add(self, database: Database | None) -> None:
        with self._lock:
            if all(source is not database for source, _ in self._sources):
                self._sources.append((database, None))

    def _families(self, groups: dict[str, PoolStats]) -> list[Metric]:
        count = GaugeMetricFamily(
            "db_client_connection_count", "Connections open, by state", labels=[_POOL, _STATE]
        )
        gauges = [GaugeMetricFamily(name, text, labels=[_POOL]) for name, text in _GAUGES]
        counters = [CounterMetricFamily(name, text, labels=[_POOL]) for name, text in _COUNTERS]
        histograms = {
            source: HistogramMetricFamily(name, text, labels=[_POOL], unit="seconds")
            for source, (name, text) in _HISTOGRAMS.items()
        }
        for name, group in groups.items():
            count.add_metric([name, "idle"], group.idle)
            count.add_metric([name, "used"], group.in_use)
            most, idle_most, idle_fewest, pending = gauges
            if group.pools:  # (the limits of pools alive)
                if group.max_overflow != -1:
                    most.add_metric([name], group.pool_size + group.max_overflow)
                idle_most.add_metric([name], group.pool_size)
                idle_fewest.add_metric([name], 0)
            pending.add_metric([name], group.waiting)
            for counter, value in zip(
                counters,
                (
                    group.timeouts,
                    group.connections_opened,
                    group.connections_closed,
                    group.connections_discarded,
                    group.checkouts,
                ),
                strict=True,
            ):
                counter.add_metric([name], value)
            for source in HISTOGRAMS:
                figures: HistogramStats = getattr(group, source)
                histogram = histograms[source]
                histogram.add_metric(
                    [name], _buckets(figures), self._sum(histogram.name, name, figures)
                )
        return [count, *gauges, *counters, *histograms.values()]

    def _sum(self, family: str, name: str, figures: HistogramStats) -> float:
        """The histogram's ``_sum``, never below what this collector gave before for as
        many samples or fewer: a pool that retires moves its floating-point total from one
        addend to another, which may change the sum's last digit, and a counter that goes
        down reads as a reset.
        """
        key = (family, name)
        with self._lock:
            count, value = self._sums.get(key, (0, 0.0))
            if figures.count < count:  # a new database of that name: a reset indeed
                value = 0.0
            value = max(figures.sum, value)
            self._sums[key] = (figures.count, value)
        return value


def _buckets(figures: HistogramStats) -> list[tuple[str, float]]:
    """Prometheus's cumulative buckets (``le``), exact: ours are bounds of _stats's."""
    cumulative = list(itertools.accumulate(figures.bucket_counts, initial=0))
    buckets = [(le, float(cumulative[cut])) for le, cut in zip(_LE, _CUTS, strict=True)]
    return [*buckets, ("+Inf", float(figures.count))]


_registered: weakref.WeakKeyDictionary[CollectorRegistry, PoolCollector] = (
    weakref.WeakKeyDictionary()
)
_registered_lock = threading.Lock()


def register(
    database: Database | None = None, *, registry: CollectorRegistry = REGISTRY
) -> PoolCollector:
    """Report ``database``'s pools on ``registry`` (prometheus-client's default one unless
    given); returns the registry's :class:`PoolCollector`.

    One collector serves each registry: registering another database adds it there (its
    pools are told apart by their name label), and registering one again does nothing.

    Args:
        database: the database; None: the default one, looked up at each scrape.
        registry: the registry to report on.

    Raises:
        ValueError: ``registry`` has metrics of these names already (a
            :class:`PoolCollector` registered by hand: use this function for each
            database instead).
    """
    with _registered_lock:
        collector = _registered.get(registry)
        if collector is None:
            collector = PoolCollector(database)
            registry.register(collector)
            _registered[registry] = collector
        else:
            collector._add(database)
        return collector


def metrics_app(
    database: Database | None = None, registry: CollectorRegistry | None = None
) -> Callable[..., Awaitable[None]]:
    """An ASGI application that serves ``database``'s pool metrics in Prometheus's text
    format (or OpenMetrics', as the scraper asks): ``app.mount("/metrics", metrics_app())``.

    Args:
        database: the database; None: the default one, looked up at each scrape.
        registry: the registry to serve, the pools' collector registered on it (see
            :func:`register`); None: a registry of its own, with the pools' metrics only.

    Raises:
        ValueError: see :func:`register`.
    """
    if registry is None:
        registry = CollectorRegistry()
    register(database, registry=registry)
    app: Callable[..., Awaitable[None]] = make_asgi_app(registry)
    return app
