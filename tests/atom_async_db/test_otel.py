"""atom_async_db.otel: the pools' figures as OpenTelemetry's instruments, read back through
the SDK's in-memory reader (a meter provider of the test's own, never the global one),
on SQLite and PostgreSQL, against a workload whose figures are known."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Histogram, InMemoryMetricReader, Metric, Sum
from sqlalchemy import text
from sqlalchemy.engine import make_url

from atom_async_db import Database, PoolTimeoutError
from atom_async_db import _default as default_module
from atom_async_db.otel import Instrumentation, instrument
from tests.helpers import APP_NAME, assert_no_leaks, run_python

ON_BOTH = pytest.mark.parametrize("backend", ["sqlite_file", "postgres"], indirect=True)

# Seconds, 0.1 ms to 100 s in steps of 1, 2.5 and 5 (advice to the SDK)
BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0,
)  # fmt: skip
POOL = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

# name: (unit, kind): the semantic conventions' (database metrics, connection pools), then ours
INSTRUMENTS = {
    "db.client.connection.count": ("{connection}", "updowncounter"),
    "db.client.connection.max": ("{connection}", "updowncounter"),
    "db.client.connection.idle.max": ("{connection}", "updowncounter"),
    "db.client.connection.idle.min": ("{connection}", "updowncounter"),
    "db.client.connection.pending_requests": ("{request}", "updowncounter"),
    "db.client.connection.timeouts": ("{timeout}", "counter"),
    "db.client.connection.create_time": ("s", "histogram"),
    "db.client.connection.wait_time": ("s", "histogram"),
    "db.client.connection.use_time": ("s", "histogram"),
    "atom_db.connections.opened": ("{connection}", "counter"),
    "atom_db.connections.closed": ("{connection}", "counter"),
    "atom_db.connections.discarded": ("{connection}", "counter"),
    "atom_db.checkouts": ("{checkout}", "counter"),
    "atom_db.statement_time": ("s", "histogram"),
}


class Reading:
    """One collection of the reader: each metric's points by their attributes."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        data = reader.get_metrics_data()
        self.metrics: dict[str, Metric] = {}
        if data is not None:
            for resource in data.resource_metrics:
                for scope in resource.scope_metrics:
                    assert scope.scope.name == "atom_async_db"
                    self.metrics.update((metric.name, metric) for metric in scope.metrics)

    def points(self, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        metric = self.metrics.get(name)
        if metric is None:
            return {}
        return {frozenset(p.attributes.items()): p for p in metric.data.data_points}

    def value(self, name: str, pool: str, state: str | None = None) -> Any:
        """The point's value (a histogram's count), None without that point."""
        labels = {POOL: pool} if state is None else {POOL: pool, STATE: state}
        point = self.points(name).get(frozenset(labels.items()))
        if point is None:
            return None
        return point.count if isinstance(self.metrics[name].data, Histogram) else point.value


def kind(metric: Metric) -> str:
    data = metric.data
    if isinstance(data, Histogram):
        return "histogram"
    assert isinstance(data, Sum)
    return "counter" if data.is_monotonic else "updowncounter"


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until ``condition()`` holds (a pool has no event for it)."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0)


async def one_session(database: Database) -> None:
    async with database.get_async_db_session() as session:
        await session.execute(text("select 1"))


@pytest.fixture
async def database(backend_url: str) -> AsyncIterator[Database]:
    database = Database(
        backend_url,
        pool_size=2,
        max_overflow=0,
        pool_timeout=0.2,
        application_name=APP_NAME,
        slow_statement_threshold=60,  # every statement timed: atom_db.statement_time
    )
    yield database
    await assert_no_leaks(database)
    await database.dispose()


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Any:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


def expected_name(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite:{parsed.database}"
    return f"{parsed.host}:{parsed.port or 5432}/{parsed.database}"


@ON_BOTH
async def test_two_held_one_timed_out_read_back(
    database: Database, backend_url: str, reader: InMemoryMetricReader, provider: Any
) -> None:
    handle = instrument(database, meter_provider=provider)
    pool = expected_name(backend_url)
    async with contextlib.AsyncExitStack() as stack:
        # (connections without a transaction: SQLite's sessions take its write lock)
        for _ in range(2):
            await stack.enter_async_context(database.engine.connect())
        waiter = asyncio.create_task(one_session(database))
        await until(lambda: database.pool_stats().waiting == 1)
        during = Reading(reader)
        with pytest.raises(PoolTimeoutError):
            await waiter
    assert during.value("db.client.connection.count", pool, state="used") == 2
    assert during.value("db.client.connection.count", pool, state="idle") == 0
    assert during.value("db.client.connection.pending_requests", pool) == 1
    assert during.value("db.client.connection.max", pool) == 2
    assert during.value("db.client.connection.idle.max", pool) == 2
    assert during.value("db.client.connection.idle.min", pool) == 0
    assert during.value("db.client.connection.timeouts", pool) == 0
    assert during.value("db.client.connection.wait_time", pool) == 2
    assert during.value("db.client.connection.use_time", pool) is None  # none returned yet

    await one_session(database)  # a statement, timed (slow_statement_threshold)
    after = Reading(reader)
    stats = database.pool_stats()
    assert (stats.checkouts, stats.timeouts, stats.connections_opened) == (3, 1, 2)
    assert stats.statement_time.count >= 1
    assert {name: (metric.unit, kind(metric)) for name, metric in after.metrics.items()} == (
        INSTRUMENTS
    )
    for name in INSTRUMENTS:  # the attributes of each series: the pool's name (and state)
        keys = {frozenset(key for key, _ in labels) for labels in after.points(name)}
        assert keys == (
            {frozenset({POOL, STATE})} if name.endswith(".count") else {frozenset({POOL})}
        ), name
    assert after.value("db.client.connection.timeouts", pool) == 1
    assert after.value("db.client.connection.pending_requests", pool) == 0
    assert after.value("db.client.connection.count", pool, state="used") == 0
    assert after.value("db.client.connection.count", pool, state="idle") == 2
    assert after.value("atom_db.checkouts", pool) == stats.checkouts
    assert after.value("atom_db.connections.opened", pool) == stats.connections_opened
    assert after.value("atom_db.connections.closed", pool) == stats.connections_closed == 0
    assert after.value("db.client.connection.wait_time", pool) == stats.checkouts
    assert after.value("db.client.connection.use_time", pool) == stats.checkouts
    assert after.value("db.client.connection.create_time", pool) == stats.connections_opened
    assert after.value("atom_db.statement_time", pool) == stats.statement_time.count
    (use,) = after.points("db.client.connection.use_time").values()
    assert use.sum == pytest.approx(stats.use_time.sum)
    assert use.explicit_bounds == BUCKETS

    handle.uninstrument()
    handle.uninstrument()  # (again: nothing)
    assert not handle.active
    await one_session(database)
    stopped = Reading(reader)
    assert database.pool_stats().checkouts == 4
    for name, (_, instrument_kind) in INSTRUMENTS.items():
        if instrument_kind == "histogram":  # cumulative: what was recorded stays, no more
            assert stopped.value(name, pool) == after.value(name, pool), name
        else:  # no observation: the series ends
            assert stopped.points(name) == {}, name


@ON_BOTH
async def test_instrumenting_again_counts_once_and_each_handle_stops_its_own(
    database: Database, reader: InMemoryMetricReader, provider: Any
) -> None:
    first = instrument(database, meter_provider=provider)
    second = instrument(database, meter_provider=provider)
    assert isinstance(second, Instrumentation) and second is not first
    await one_session(database)
    pool = database.pool_stats().name
    assert Reading(reader).value("db.client.connection.wait_time", pool) == 1
    assert Reading(reader).value("atom_db.checkouts", pool) == 1

    first.uninstrument()  # the second handle still holds the database's instruments
    await one_session(database)
    assert Reading(reader).value("db.client.connection.wait_time", pool) == 2
    assert Reading(reader).value("atom_db.checkouts", pool) == 2

    second.uninstrument()
    await one_session(database)
    assert Reading(reader).points("atom_db.checkouts") == {}
    assert Reading(reader).value("db.client.connection.wait_time", pool) == 2

    # The SDK keeps the callbacks of an instrument's first registration: instrumenting
    # after all were stopped must report again, on the same provider.
    third = instrument(database, meter_provider=provider)
    await one_session(database)
    assert Reading(reader).value("atom_db.checkouts", pool) == 4
    assert Reading(reader).value("db.client.connection.wait_time", pool) == 3
    third.uninstrument()


@ON_BOTH
async def test_pool_name_groups_the_sync_pool_with_the_async_ones(
    database: Database, reader: InMemoryMetricReader, provider: Any
) -> None:
    mine = instrument(database, meter_provider=provider)
    named = instrument(database, meter_provider=provider, pool_name="primary")
    await one_session(database)

    def sync_session() -> None:
        with database.sync_engine.connect() as connection:
            connection.execute(text("select 1"))

    await asyncio.to_thread(sync_session)
    pool = database.pool_stats().name
    reading = Reading(reader)
    checkouts = {
        dict(labels)[POOL]: p.value for labels, p in reading.points("atom_db.checkouts").items()
    }
    assert checkouts == {pool: 1, f"{pool} (sync)": 1, "primary": 2}
    assert reading.value("db.client.connection.wait_time", "primary") == 2
    assert reading.value("db.client.connection.wait_time", f"{pool} (sync)") == 1
    # The sync pool's limits are added to the async pool's under one name.
    sync_stats = next(p for p in database.pool_stats().pools if p.kind == "sync")
    assert reading.value("db.client.connection.idle.max", "primary") == 2 + sync_stats.pool_size
    mine.uninstrument()
    named.uninstrument()


@ON_BOTH
async def test_pools_of_two_event_loops_are_summed_and_an_ended_ones_counts_kept(
    database: Database, reader: InMemoryMetricReader, provider: Any
) -> None:
    handle = instrument(database, meter_provider=provider)
    holding, release = threading.Event(), threading.Event()

    async def hold_on_another_loop() -> None:
        async with database.engine.connect():
            holding.set()
            await asyncio.to_thread(release.wait, 30)

    thread = threading.Thread(target=asyncio.run, args=(hold_on_another_loop(),))
    thread.start()
    try:
        assert await asyncio.to_thread(holding.wait, 30)
        held = await database.engine.connect()
        pool = database.pool_stats().name
        assert [p.kind for p in database.pool_stats().pools] == ["async", "async"]
        both = Reading(reader)
        assert both.value("db.client.connection.count", pool, state="used") == 2
        assert both.value("db.client.connection.max", pool) == 4  # two pools of 2
        await held.close()
    finally:
        release.set()
        await asyncio.to_thread(thread.join)
    stats = database.pool_stats()
    assert len(stats.pools) == 1  # the other loop's pool ended with its loop
    after = Reading(reader)
    assert after.value("atom_db.checkouts", pool) == stats.checkouts == 2
    assert after.value("atom_db.connections.opened", pool) == stats.connections_opened == 2
    assert after.value("db.client.connection.use_time", pool) == 2
    assert after.value("db.client.connection.max", pool) == 2
    handle.uninstrument()


@pytest.mark.parametrize("backend", ["sqlite_file"], indirect=True)
async def test_without_a_database_the_default_one(
    database: Database,
    reader: InMemoryMetricReader,
    provider: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(default_module, "_default", database)
    handle = instrument(meter_provider=provider)
    assert handle.database is database and handle.pool_name is None
    await one_session(database)
    assert Reading(reader).value("atom_db.checkouts", database.pool_stats().name) == 1
    handle.uninstrument()


def test_importing_the_package_does_not_import_opentelemetry() -> None:
    run_python(
        "import sys, atom_async_db\nassert 'opentelemetry' not in sys.modules, sorted(sys.modules)"
    )


def test_without_opentelemetry_the_import_error_names_the_extra() -> None:
    output = run_python(
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if it were not installed\n"
        "try:\n"
        "    import atom_async_db.otel\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    raise SystemExit('imported')\n"
    )
    assert "pip install 'atom_async_db[otel]'" in output
