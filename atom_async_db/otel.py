"""OpenTelemetry integration: the connection pools' figures as OpenTelemetry metrics.

Needs the ``otel`` extra (``pip install 'atom_async_db[otel]'``, OpenTelemetry's API only);
the application brings the SDK and its exporter. Importing ``atom_async_db`` never
imports OpenTelemetry; importing this module does::

    import atom_async_db
    from atom_async_db.otel import instrument

    atom_async_db.configure("postgresql://app@db/atom")
    instrumentation = instrument()  # the default database, the global meter provider
    ...
    instrumentation.uninstrument()  # at shutdown (optional)

The instruments are those of OpenTelemetry's semantic conventions for database client
connection pools (experimental), each with the attribute ``db.client.connection.pool.name``:

- ``db.client.connection.count`` (UpDownCounter, ``{connection}``): connections open now,
  by ``db.client.connection.state``: ``idle`` (free in the pool) or ``used`` (checked out).
- ``db.client.connection.max`` (UpDownCounter, ``{connection}``): the most the pool may
  open, ``pool_size + max_overflow`` (no series when ``max_overflow=-1``, no limit).
- ``db.client.connection.idle.max`` (UpDownCounter, ``{connection}``): ``pool_size``, the
  free connections the pool keeps (a surplus is closed after ``pool_max_idle`` seconds).
- ``db.client.connection.idle.min`` (UpDownCounter, ``{connection}``): 0, the pool opens
  connections as they are needed.
- ``db.client.connection.pending_requests`` (UpDownCounter, ``{request}``): callers waiting
  for a connection now.
- ``db.client.connection.timeouts`` (Counter, ``{timeout}``): callers that gave up after
  ``pool_timeout``, since the database started.
- ``db.client.connection.create_time``, ``db.client.connection.wait_time``,
  ``db.client.connection.use_time`` (Histograms, ``s``): the time each new connection took
  to open, each checkout waited for a connection, each connection was checked out.

and, outside the conventions, under ``atom_db.``: ``atom_db.connections.opened``,
``atom_db.connections.closed``, ``atom_db.connections.discarded`` (Counters,
``{connection}``), ``atom_db.checkouts`` (Counter, ``{checkout}``) and the histogram
``atom_db.statement_time`` (``s``, the statements timed: see
:attr:`PoolStats.statement_time <atom_async_db.PoolStats.statement_time>`). Through
OpenTelemetry's Prometheus exporter they get the names :mod:`atom_async_db.prometheus` uses.

The counts are read from :meth:`Database.pool_stats() <atom_async_db.Database.pool_stats>`
when the reader collects; the histograms are recorded as each sample is taken (the API has
no asynchronous histogram), from :func:`instrument` on. A pool's name is its host, port and
database (``127.0.0.1:5432/app``; ``sqlite:/path/app.db``; the password never), with
`` (sync)`` for the legacy layer's pool, or the ``pool_name`` setting; the pools of several
event loops share their name and are summed.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator

try:
    from opentelemetry.metrics import (
        CallbackOptions,
        Histogram,
        Meter,
        MeterProvider,
        Observation,
        get_meter_provider,
    )
except ImportError as error:  # pragma: no cover (the tests run with it installed)
    raise ImportError(
        "atom_async_db.otel needs OpenTelemetry's API: pip install 'atom_async_db[otel]'"
    ) from error

from . import __version__
from ._database import Database
from ._default import get_database
from ._export import EXPORT_BOUNDS, by_name
from ._stats import PoolStats, SampleListener

__all__ = ["Instrumentation", "instrument"]

_POOL = "db.client.connection.pool.name"
_STATE = "db.client.connection.state"


# What each histogram of _stats is exported as.
_HISTOGRAMS = {
    "connect_time": ("db.client.connection.create_time", "Time it took to open a connection"),
    "wait_time": ("db.client.connection.wait_time", "Time a checkout waited for a connection"),
    "use_time": ("db.client.connection.use_time", "Time a connection was checked out"),
    "statement_time": ("atom_db.statement_time", "Time a timed statement took"),
}

_Reading = Iterator[tuple[int, dict[str, str]]]


def _count(name: str, group: PoolStats) -> _Reading:
    yield group.idle, {_POOL: name, _STATE: "idle"}
    yield group.in_use, {_POOL: name, _STATE: "used"}


def _most(name: str, group: PoolStats) -> _Reading:
    if group.pools and group.max_overflow != -1:  # (alive, and with a limit)
        yield group.pool_size + group.max_overflow, {_POOL: name}


def _idle_most(name: str, group: PoolStats) -> _Reading:
    if group.pools:
        yield group.pool_size, {_POOL: name}


def _idle_fewest(name: str, group: PoolStats) -> _Reading:
    if group.pools:
        yield 0, {_POOL: name}


def _field(field: str) -> Callable[[str, PoolStats], _Reading]:
    def reading(name: str, group: PoolStats) -> _Reading:
        yield getattr(group, field), {_POOL: name}

    return reading


# name, unit, description, monotonic (a Counter, else an UpDownCounter), readings
_OBSERVED: tuple[tuple[str, str, str, bool, Callable[[str, PoolStats], _Reading]], ...] = (
    ("db.client.connection.count", "{connection}", "Connections open, by state", False, _count),
    ("db.client.connection.max", "{connection}", "The most connections open", False, _most),
    (
        "db.client.connection.idle.max",
        "{connection}",
        "The most free connections the pool keeps",
        False,
        _idle_most,
    ),
    (
        "db.client.connection.idle.min",
        "{connection}",
        "The fewest free connections the pool keeps",
        False,
        _idle_fewest,
    ),
    (
        "db.client.connection.pending_requests",
        "{request}",
        "Callers waiting for a connection",
        False,
        _field("waiting"),
    ),
    (
        "db.client.connection.timeouts",
        "{timeout}",
        "Callers that gave up waiting for a connection",
        True,
        _field("timeouts"),
    ),
    (
        "atom_db.connections.opened",
        "{connection}",
        "Connections opened",
        True,
        _field("connections_opened"),
    ),
    (
        "atom_db.connections.closed",
        "{connection}",
        "Connections closed",
        True,
        _field("connections_closed"),
    ),
    (
        "atom_db.connections.discarded",
        "{connection}",
        "Connections closed as broken or untrusted",
        True,
        _field("connections_discarded"),
    ),
    ("atom_db.checkouts", "{checkout}", "Connections handed out", True, _field("checkouts")),
)


class Instrumentation:
    """What :func:`instrument` set up for one database: stop it with :meth:`uninstrument`.

    Each call of :func:`instrument` returns a handle of its own; a database's instruments
    stop reporting when every handle for it (on that meter provider) is uninstrumented.

    Raises:
        Nothing: made by :func:`instrument`.
    """

    def __init__(self, database: Database, pool_name: str | None, book: _Book) -> None:
        self.database = database
        """The database instrumented."""
        self.pool_name = pool_name
        """The pool name its figures carry, or None: each pool's own."""
        self._book: _Book | None = book

    def uninstrument(self) -> None:
        """Stop reporting this database's figures (at once for the counts; the histograms
        record no more samples). Calling it again does nothing.

        Raises:
            Nothing: it unhooks callbacks, without I/O.
        """
        with _books_lock:
            book, self._book = self._book, None
        if book is not None:
            book.release(self.database, self.pool_name)

    @property
    def active(self) -> bool:
        """Whether :meth:`uninstrument` has not been called."""
        return self._book is not None


class _Book:
    """The instruments of one meter provider and the databases they report, shared by
    every :func:`instrument` on it (the SDK keeps the callbacks of the first registration
    of an instrument name, so each is created once and reads the databases watched now).
    """

    def __init__(self, meter: Meter) -> None:
        self._lock = threading.Lock()
        # (database, pool_name) -> [handles, the stop function of its sample listener]
        self._watched: dict[tuple[Database, str | None], tuple[int, Callable[[], None]]] = {}
        self._histograms = {
            source: _histogram(meter, name, description)
            for source, (name, description) in _HISTOGRAMS.items()
        }
        for name, unit, description, monotonic, readings in _OBSERVED:
            create = (
                meter.create_observable_counter
                if monotonic
                else meter.create_observable_up_down_counter
            )
            create(name, callbacks=[self._callback(readings)], unit=unit, description=description)

    def watch(self, database: Database, pool_name: str | None) -> None:
        key = (database, pool_name)
        with self._lock:
            if key in self._watched:
                handles, stop = self._watched[key]
            else:
                handles, stop = 0, database._pools.listen(self._listener(pool_name))
            self._watched[key] = (handles + 1, stop)

    def release(self, database: Database, pool_name: str | None) -> None:
        key = (database, pool_name)
        with self._lock:
            if key not in self._watched:
                return
            handles, stop = self._watched[key]
            if handles > 1:
                self._watched[key] = (handles - 1, stop)
                return
            del self._watched[key]
        stop()

    def _listener(self, pool_name: str | None) -> SampleListener:
        histograms = self._histograms
        attributes: dict[str, dict[str, str]] = {}

        def record(name: str, histogram_name: str, seconds: float) -> None:
            # (under the pool's lock, in the checkout: short, and nothing that raises)
            histogram = histograms.get(histogram_name)
            if histogram is not None:
                label = name if pool_name is None else pool_name
                labels = attributes.get(label)
                if labels is None:
                    labels = attributes.setdefault(label, {_POOL: label})
                histogram.record(seconds, labels)

        return record

    def _callback(
        self, readings: Callable[[str, PoolStats], _Reading]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                watched = list(self._watched)
            groups = by_name((database.pool_stats(), name) for database, name in watched)
            return [
                Observation(value, labels)
                for name, group in groups.items()
                for value, labels in readings(name, group)
            ]

        return observe


def _histogram(meter: Meter, name: str, description: str) -> Histogram:
    return meter.create_histogram(
        name, unit="s", description=description, explicit_bucket_boundaries_advisory=EXPORT_BOUNDS
    )


_books: weakref.WeakKeyDictionary[MeterProvider, _Book] = weakref.WeakKeyDictionary()
_books_lock = threading.Lock()


def instrument(
    database: Database | None = None,
    *,
    meter_provider: MeterProvider | None = None,
    pool_name: str | None = None,
) -> Instrumentation:
    """Report ``database``'s connection pools through OpenTelemetry's instruments (see the
    module's documentation) until :meth:`Instrumentation.uninstrument`.

    Args:
        database: the database; None: the default one (:func:`~atom_async_db.get_database`
            when called: call it after :func:`~atom_async_db.configure`).
        meter_provider: where the instruments are made; None: the global provider
            (``opentelemetry.metrics.get_meter_provider()``, which may be set later).
        pool_name: the ``db.client.connection.pool.name`` of all the database's pools,
            its sync pool's included; None: each pool's own name.

    Instrumenting a database again on the same provider with the same ``pool_name`` shares
    its series (nothing is counted twice) and returns a handle of its own; with another
    ``pool_name`` its figures are reported under both names.

    Raises:
        What :func:`atom_async_db.get_database` raises, when ``database`` is None.
    """
    if database is None:
        database = get_database()
    if meter_provider is None:
        meter_provider = get_meter_provider()
    with _books_lock:
        book = _books.get(meter_provider)
        if book is None:
            meter = meter_provider.get_meter("atom_async_db", __version__)
            book = _books[meter_provider] = _Book(meter)
    book.watch(database, pool_name)
    return Instrumentation(database, pool_name, book)
