"""atom_async_db.prometheus: the pools' figures on /metrics, scraped from a real uvicorn
server in a process of its own and parsed with prometheus-client's parser; and the
collector's figures checked against ``pool_stats()`` in process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from atom_async_db import Database
from atom_async_db import _default as default_module
from atom_async_db._stats import BOUNDS
from atom_async_db.prometheus import PoolCollector, metrics_app, register
from tests.helpers import run_python

POOL = "db_client_connection_pool_name"
STATE = "db_client_connection_state"

# family (as the parser names it: a counter without _total): type
FAMILIES = {
    "db_client_connection_count": "gauge",
    "db_client_connection_max": "gauge",
    "db_client_connection_idle_max": "gauge",
    "db_client_connection_idle_min": "gauge",
    "db_client_connection_pending_requests": "gauge",
    "db_client_connection_timeouts": "counter",
    "atom_db_connections_opened": "counter",
    "atom_db_connections_closed": "counter",
    "atom_db_connections_discarded": "counter",
    "atom_db_checkouts": "counter",
    "db_client_connection_create_time_seconds": "histogram",
    "db_client_connection_wait_time_seconds": "histogram",
    "db_client_connection_use_time_seconds": "histogram",
    "atom_db_statement_time_seconds": "histogram",
}
HISTOGRAMS = {
    "db_client_connection_create_time_seconds": "connect_time",
    "db_client_connection_wait_time_seconds": "wait_time",
    "db_client_connection_use_time_seconds": "use_time",
    "atom_db_statement_time_seconds": "statement_time",
}
BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0,
)  # fmt: skip


class Scrape:
    """One exposition, parsed: the samples of each family."""

    def __init__(self, exposition: str) -> None:
        self.types: dict[str, str] = {}
        self.samples: dict[str, list[Any]] = {}
        for family in text_string_to_metric_families(exposition):
            assert family.name not in self.types, f"{family.name} twice"
            self.types[family.name] = family.type
            self.samples[family.name] = list(family.samples)

    def value(self, sample_name: str, **labels: str) -> float | None:
        family = sample_name.removesuffix("_total")
        for suffix in ("_bucket", "_count", "_sum"):
            if family.endswith(suffix) and family.removesuffix(suffix) in HISTOGRAMS:
                family = family.removesuffix(suffix)
        found = [
            s.value
            for s in self.samples.get(family, [])
            if s.name == sample_name and s.labels == labels
        ]
        assert len(found) <= 1
        return found[0] if found else None

    def pools(self) -> set[str]:
        return {s.labels[POOL] for samples in self.samples.values() for s in samples}


# --------------------------------------------------------------------------- a real server

APP = """
from fastapi import FastAPI
from sqlalchemy import text

from atom_async_db.fastapi import AsyncDB, lifespan
from atom_async_db.prometheus import metrics_app

app = FastAPI(lifespan=lifespan)
app.mount("/metrics", metrics_app())


@app.get("/one")
async def one(db: AsyncDB) -> int:
    return (await db.execute(text("select 1"))).scalar_one()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def uvicorn_process(app_dir: Path, env: dict[str, str]) -> Iterator[str]:
    """``app_module:app`` served by uvicorn in a process of its own; yields its base URL
    once the port accepts connections."""
    port = free_port()
    log = (app_dir / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app_module:app", "--app-dir", str(app_dir),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--no-access-log"],
        env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        give_up_at = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"uvicorn exited {process.returncode}:\n{server_log(app_dir)}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > give_up_at:
                    pytest.fail(f"uvicorn did not listen within 30 s:\n{server_log(app_dir)}")
                time.sleep(0.02)  # polling a port that is not open yet
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)  # the lifespan's shutdown disposes the database
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def server_log(app_dir: Path) -> str:
    return (app_dir / "server.log").read_text(errors="replace")


def test_metrics_of_a_real_server_follow_its_requests(tmp_path: Path) -> None:
    (tmp_path / "app_module.py").write_text(textwrap.dedent(APP))
    path = tmp_path / "app.db"
    pool = f"sqlite:{path}"
    env = {
        "DATABASE_URL": f"sqlite:///{path}",
        "ATOM_DB_POOL_SIZE": "3",
        "ATOM_DB_MAX_OVERFLOW": "2",
    }
    with uvicorn_process(tmp_path, env) as url, httpx.Client(base_url=url, timeout=30) as http:
        before = http.get("/metrics/")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        requests = 5
        for _ in range(requests):
            assert http.get("/one").json() == 1
        after = Scrape(http.get("/metrics", follow_redirects=True).text)
    assert "Traceback" not in server_log(tmp_path), server_log(tmp_path)

    first = Scrape(before.text)
    assert first.types == FAMILIES == after.types
    assert first.value("atom_db_checkouts_total", **{POOL: pool}) == 0
    assert first.samples["db_client_connection_max"] == []  # no pool yet: no limits

    for family, samples in after.samples.items():  # the label sets
        for sample in samples:
            expected = {POOL}
            if family == "db_client_connection_count":
                expected.add(STATE)
            if sample.name.endswith("_bucket"):
                expected.add("le")
            assert set(sample.labels) == expected, sample
    assert after.pools() == {pool}

    assert after.value("atom_db_checkouts_total", **{POOL: pool}) == requests
    opened = after.value("atom_db_connections_opened_total", **{POOL: pool})
    assert opened == 1  # one request at a time: one connection, reused
    assert after.value("db_client_connection_count", **{POOL: pool, STATE: "used"}) == 0
    assert after.value("db_client_connection_count", **{POOL: pool, STATE: "idle"}) == opened
    assert after.value("db_client_connection_max", **{POOL: pool}) == 3 + 2
    assert after.value("db_client_connection_idle_max", **{POOL: pool}) == 3
    assert after.value("db_client_connection_idle_min", **{POOL: pool}) == 0
    assert after.value("db_client_connection_pending_requests", **{POOL: pool}) == 0
    assert after.value("db_client_connection_timeouts_total", **{POOL: pool}) == 0
    counts = {family: after.value(f"{family}_count", **{POOL: pool}) for family in HISTOGRAMS}
    assert counts == {
        "db_client_connection_create_time_seconds": opened,
        "db_client_connection_wait_time_seconds": requests,
        "db_client_connection_use_time_seconds": requests,
        "atom_db_statement_time_seconds": 0,  # (statements are timed only when asked)
    }
    for family in HISTOGRAMS:
        buckets = [
            (float(s.labels["le"]), s.value)
            for s in after.samples[family]
            if s.name.endswith("_bucket")
        ]
        assert [le for le, _ in buckets] == [*BUCKETS, float("inf")]
        cumulative = [value for _, value in buckets]
        assert cumulative == sorted(cumulative)
        assert cumulative[-1] == counts[family]


# --------------------------------------------------------------------------- in process


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(
        f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
        pool_size=2,
        max_overflow=0,
        pool_timeout=0.2,
        slow_statement_threshold=60,  # every statement timed
    )
    yield database
    await database.dispose()


async def sessions(database: Database, count: int) -> None:
    for _ in range(count):
        async with database.get_async_db_session() as session:
            await session.execute(text("select 1"))


async def test_histograms_are_exact_from_the_pools_buckets(database: Database) -> None:
    registry = CollectorRegistry()
    register(database, registry=registry)
    await sessions(database, 7)
    scrape = Scrape(generate_latest(registry).decode())
    stats = database.pool_stats()
    pool = stats.name
    assert set(BUCKETS) <= set(BOUNDS)
    for family, source in HISTOGRAMS.items():
        figures = getattr(stats, source)
        assert figures.count >= 1, source
        assert scrape.value(f"{family}_count", **{POOL: pool}) == figures.count
        assert scrape.value(f"{family}_sum", **{POOL: pool}) == pytest.approx(figures.sum)
        for bound in BUCKETS:
            below = sum(
                count
                for upper, count in zip(BOUNDS, figures.bucket_counts, strict=False)
                if upper <= bound
            )
            le = {POOL: pool, "le": repr(bound)}
            assert scrape.value(f"{family}_bucket", **le) == below, (family, bound)


async def test_the_password_is_in_no_label() -> None:
    secret = "s3cret-pw"
    database = Database(f"postgresql+asyncpg://app_user:{secret}@127.0.0.1:5432/shop")
    try:
        database.engine  # noqa: B018 (the async pool, without connecting)
        database.sync_engine  # noqa: B018 (the legacy layer's pool)
        registry = CollectorRegistry()
        register(database, registry=registry)
        exposition = generate_latest(registry).decode()
    finally:
        await database.dispose()
    assert secret not in exposition
    assert "app_user" not in exposition
    assert Scrape(exposition).pools() == {"127.0.0.1:5432/shop", "127.0.0.1:5432/shop (sync)"}


async def test_register_is_one_collector_per_registry(database: Database, tmp_path: Path) -> None:
    other = Database(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
    try:
        registry = CollectorRegistry()
        collector = register(database, registry=registry)
        assert register(database, registry=registry) is collector
        assert register(other, registry=registry) is collector
        await sessions(database, 2)
        await sessions(other, 1)
        scrape = Scrape(generate_latest(registry).decode())  # (a family twice fails here)
        assert scrape.value("atom_db_checkouts_total", **{POOL: database.pool_stats().name}) == 2
        assert scrape.value("atom_db_checkouts_total", **{POOL: other.pool_stats().name}) == 1
        with pytest.raises(ValueError, match="Duplicated"):
            registry.register(PoolCollector(other))
        assert register(other, registry=CollectorRegistry()) is not collector
    finally:
        await other.dispose()


async def test_pool_name_and_the_default_database_followed(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(default_module, "_default", database)
    registry = CollectorRegistry()
    registry.register(PoolCollector(pool_name="primary"))
    await sessions(database, 3)
    scrape = Scrape(generate_latest(registry).decode())
    assert scrape.pools() == {"primary"}
    assert scrape.value("atom_db_checkouts_total", **{POOL: "primary"}) == 3
    replacement = Database(database.settings.url, pool_name="replacement")
    monkeypatch.setattr(default_module, "_default", replacement)  # configure() again
    scrape = Scrape(generate_latest(registry).decode())
    assert scrape.value("atom_db_checkouts_total", **{POOL: "primary"}) == 0
    await replacement.dispose()


async def test_an_ended_event_loops_counts_stay(database: Database) -> None:
    registry = CollectorRegistry()
    register(database, registry=registry)
    holding, release = threading.Event(), threading.Event()

    async def on_another_loop() -> None:
        await sessions(database, 2)
        async with database.engine.connect():
            holding.set()
            await asyncio.to_thread(release.wait, 30)

    thread = threading.Thread(target=asyncio.run, args=(on_another_loop(),))
    thread.start()
    try:
        assert await asyncio.to_thread(holding.wait, 30)
        await sessions(database, 1)
        pool = database.pool_stats().name
        both = Scrape(generate_latest(registry).decode())
        assert both.value("db_client_connection_count", **{POOL: pool, STATE: "used"}) == 1
        assert both.value("db_client_connection_max", **{POOL: pool}) == 4  # two pools of 2
    finally:
        release.set()
        await asyncio.to_thread(thread.join)
    stats = database.pool_stats()
    assert len(stats.pools) == 1  # the other loop's pool is gone; its counts are kept
    after = Scrape(generate_latest(registry).decode())
    assert after.value("atom_db_checkouts_total", **{POOL: pool}) == stats.checkouts == 4
    assert after.value("db_client_connection_use_time_seconds_count", **{POOL: pool}) == 4
    assert after.value("db_client_connection_use_time_seconds_sum", **{POOL: pool}) == (
        pytest.approx(stats.use_time.sum)
    )
    assert after.value("db_client_connection_max", **{POOL: pool}) == 2


def test_a_histograms_sum_never_goes_down_unless_its_count_does() -> None:
    from atom_async_db._stats import Histogram

    collector = PoolCollector()
    histogram = Histogram("use_time")
    histogram.record(0.5)
    histogram.total = 0.5000000000000001
    assert collector._sum("h", "p", histogram.snapshot()) == 0.5000000000000001
    histogram.total = 0.5  # the same sample, a difference of floats one digit lower
    assert collector._sum("h", "p", histogram.snapshot()) == 0.5000000000000001
    assert collector._sum("h", "p", Histogram("use_time").snapshot()) == 0.0  # a reset


async def test_metrics_app_serves_a_registry_of_its_own(database: Database) -> None:
    app = metrics_app(database)
    assert callable(app)
    registry = CollectorRegistry()
    metrics_app(database, registry)
    assert "atom_db_checkouts_total" in generate_latest(registry).decode()


def test_importing_the_package_does_not_import_prometheus_client() -> None:
    run_python(
        "import sys, atom_async_db\n"
        "assert 'prometheus_client' not in sys.modules, sorted(sys.modules)"
    )


def test_without_prometheus_client_the_import_error_names_the_extra() -> None:
    output = run_python(
        "import sys\n"
        "sys.modules['prometheus_client'] = None  # as if it were not installed\n"
        "try:\n"
        "    import atom_async_db.prometheus\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    raise SystemExit('imported')\n"
    )
    assert "pip install 'atom_async_db[prometheus]'" in output
