"""The ``atom-db`` console script: ``check`` on real databases, ``stats`` on a real HTTP
server's Prometheus exposition, ``bench`` on the repository's benchmarks; exit statuses."""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy.engine import make_url

from atom_async_db._settings import build_settings
from atom_async_db.cli import main
from atom_async_db.cli._check import _budget, _Report
from tests.helpers import asyncpg_dsn

ROOT = Path(__file__).resolve().parents[2]
ATOM_DB = Path(sys.executable).with_name("atom-db")
POOL = "db_client_connection_pool_name"
PASSWORD = "Hunter2-s3cret"


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The installed console script, in an environment without the caller's database
    settings (DATABASE_URL, ATOM_DB_*, WEB_CONCURRENCY) unless ``env`` sets them."""
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("ATOM_DB_") and key not in {"DATABASE_URL", "WEB_CONCURRENCY"}
    }
    return subprocess.run(
        [str(ATOM_DB), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
        cwd=cwd,
    )


def sqlite_file(path: Path, journal_mode: str) -> Path:
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA journal_mode={journal_mode}")
    connection.execute("CREATE TABLE t (x)")
    connection.commit()
    connection.close()
    return path


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- check


def test_check_on_a_sqlite_file_in_wal_mode(tmp_path: Path) -> None:
    path = sqlite_file(tmp_path / "app.db", "wal")
    result = run_cli("check", "--url", f"sqlite:///{path}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SQLite {sqlite3.sqlite_version}" in result.stdout
    assert "wal (before connecting), wal (on this connection)" in result.stdout
    assert re.search(r"round trip +\d+\.\d+ ms \(median of 5 pings\)", result.stdout)
    assert re.search(r"pool_size +1\n", result.stdout)
    assert "\nwarnings\n" not in result.stdout
    assert result.stdout.rstrip().endswith("no warnings")


def test_check_warns_about_a_sqlite_file_not_in_wal_mode(tmp_path: Path) -> None:
    path = sqlite_file(tmp_path / "app.db", "delete")
    result = run_cli("check", env={"DATABASE_URL": f"sqlite:///{path}"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(from DATABASE_URL)" in result.stdout
    assert "delete (before connecting)" in result.stdout
    assert f"- {path} was in journal_mode=delete, not WAL" in result.stdout
    assert result.stdout.rstrip().endswith("; 1 warning")


@pytest.mark.postgres
async def test_check_on_postgres_reports_the_connection_budget(postgres_url: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        version = await connection.fetchval("show server_version")
        limit = int(await connection.fetchval("show max_connections"))
        reserved = int(await connection.fetchval("show superuser_reserved_connections"))
    finally:
        await connection.close()
    allowed = limit - reserved
    server = f"{make_url(postgres_url).host}:{make_url(postgres_url).port}"
    sizes = {
        "ATOM_DB_POOL_SIZE": "7",
        "ATOM_DB_MAX_OVERFLOW": "3",
        "ATOM_DB_SYNC_POOL_SIZE": "2",
        "ATOM_DB_SYNC_MAX_OVERFLOW": "1",
    }
    fitting = allowed // 13  # 10 async + 3 sync per process
    for workers, fits in ((fitting, True), (fitting + 1, False)):
        env = {**sizes, "WEB_CONCURRENCY": str(workers)}
        result = await asyncio.to_thread(run_cli, "check", "--url", postgres_url, env=env)
        out = result.stdout
        assert result.returncode == 0, out + result.stderr
        assert f"PostgreSQL {version}" in out
        assert re.search(r"pool_size +7  \(from ATOM_DB_POOL_SIZE\)", out)
        assert (
            f"{allowed} (max_connections {limit} - superuser_reserved_connections {reserved})"
            in out
        )
        assert (
            f"{workers} worker processes (WEB_CONCURRENCY) x (10 async + 3 sync per process) "
            f"= {13 * workers} connections at most" in out
        )
        warning = (
            f"= {13 * workers} connections at most, but the server at {server} accepts {allowed}"
        )
        assert (warning in out) is not fits, out
        assert out.rstrip().endswith("no warnings" if fits else "; 1 warning")


def test_check_warns_about_a_pool_without_a_limit(tmp_path: Path) -> None:
    path = sqlite_file(tmp_path / "app.db", "wal")
    result = run_cli("check", "--url", f"sqlite:///{path}", env={"ATOM_DB_MAX_OVERFLOW": "-1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "- max_overflow=-1: the pool has no limit" in result.stdout
    assert result.stdout.rstrip().endswith("; 1 warning")  # (SQLite's sync pool: by design)


def test_check_of_a_sqlite_file_that_does_not_exist_exits_2_without_creating_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "missing.db"
    assert main(["check", "--url", f"sqlite:///{path}"]) == 2
    assert f"atom-db check: cannot connect: the SQLite file {path} does not exist" in (
        capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []


def test_check_weighs_the_pools_against_pgbouncer_limits() -> None:
    # (PgBouncer's SHOW CONFIG, as _pgbouncer_config returns it; no PgBouncer needed)
    settings = build_settings(
        "postgresql://app@db/atom", environ={}, server_pooler="pgbouncer", worker_processes=2
    )
    config = {"max_client_conn": "150", "pool_mode": "session", "default_pool_size": "20"}
    report = _Report()
    _budget(settings, 100, 3, config, report)
    assert "max_client_conn 150, pool_mode session, default_pool_size 20" in report.lines[-1]
    assert len(report.warnings) == 2  # 2 x (50 + 50) = 200: past both limits
    assert "= 200 connections at most, but PgBouncer at db:5432 accepts 150" in report.warnings[0]
    assert "session mode with default_pool_size 20" in report.warnings[1]
    report = _Report()
    _budget(settings, 100, 3, {**config, "max_client_conn": "200"}, report)
    assert len(report.warnings) == 1
    report = _Report()
    _budget(settings, 100, 3, {**config, "pool_mode": "transaction"}, report)
    assert len(report.warnings) == 1
    report = _Report()
    _budget(settings, 100, 3, None, report)
    assert "its limits could not be read" in report.lines[-1]
    assert report.warnings == []


def test_check_cannot_connect_exits_2_and_never_shows_the_password() -> None:
    port = free_port()
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/db"
    result = run_cli("check", "--url", url, "--timeout", "3")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"atom-db check: cannot connect to the database server at 127.0.0.1:{port}" in (
        result.stderr
    )
    assert "postgresql+asyncpg://app:***@127.0.0.1" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr


def test_check_of_a_server_that_never_answers_exits_2_after_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql://app:{PASSWORD}@127.0.0.1:{silent.getsockname()[1]}/db"
        started = time.monotonic()
        result = run_cli("check", "--url", url, "--timeout", "0.5")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "did not answer a ping within 0.5 s" in result.stderr
    assert time.monotonic() - started < 10
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("env", "url", "message"),
    [
        ({"ATOM_DB_POOL_SIZE": "zero"}, "sqlite://", "ATOM_DB_POOL_SIZE must be a whole number"),
        ({}, f"postgresql://app:{PASSWORD}@host:5x/db", "could not be parsed"),
        ({}, f"postgres//app:{PASSWORD}@host/db", "could not be parsed"),
    ],
)
def test_check_with_a_bad_setting_exits_64_with_its_message(
    env: dict[str, str], url: str, message: str
) -> None:
    result = run_cli("check", "--url", url, env=env)
    assert result.returncode == 64, result.stdout + result.stderr
    assert "atom-db check: configuration error: " in result.stderr
    assert message in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_usage_errors_exit_64_and_help_documents_the_statuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([]) == 64
    assert main(["check", "--timeout", "-1"]) == 64
    assert main(["check", "surplus"]) == 64
    assert main(["nonsense"]) == 64
    assert "usage: atom-db" in capsys.readouterr().err
    for command in ([], ["check"], ["stats"]):
        assert main([*command, "--help"]) == 0
        help_text = capsys.readouterr().out
        assert "exit status:" in help_text
        assert re.search(r"^  64 +bad usage", help_text, re.MULTILINE)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("atom-db 0.")


def test_the_module_runs_and_the_package_does_not_import_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "atom_async_db.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in ("check", "stats", "bench"))
    code = "import sys, atom_async_db; print('atom_async_db.cli' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert imported.stdout.strip() == "False", imported.stderr


# --------------------------------------------------------------------------- stats


def exposition(checkouts: float = 1234) -> bytes:
    """What an application's /metrics serves: two pools, one with histogram samples
    (wait: 98 at 0.4 ms, 2 at 300 ms; use: 5 at 20 ms, 5 at 300 ms; the other's wait: one past the
    last bucket's bound), and an unrelated metric."""
    registry = CollectorRegistry()
    app, side = "db1:5432/app", "sqlite:/srv/side.db"
    count = Gauge(
        "db_client_connection_count",
        "connections",
        ["db_client_connection_state", POOL],
        registry=registry,
    )
    for pool, used, idle in ((app, 3, 2), (side, 0, 1)):
        count.labels(db_client_connection_state="used", **{POOL: pool}).set(used)
        count.labels(db_client_connection_state="idle", **{POOL: pool}).set(idle)
    figures = {
        "db_client_connection_max": (Gauge, {app: 50, side: 1}),
        "db_client_connection_pending_requests": (Gauge, {app: 1, side: 0}),
        "db_client_connection_timeouts": (Counter, {app: 4, side: 0}),
        "atom_db_checkouts": (Counter, {app: checkouts, side: 7}),
    }
    for name, (kind, values) in figures.items():
        metric = kind(name, name, [POOL], registry=registry)
        for pool, value in values.items():
            child = metric.labels(**{POOL: pool})
            if isinstance(child, Gauge):
                child.set(value)
            else:
                child.inc(value)
    bounds = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.025, 0.1, 0.5, 1.0)
    wait = Histogram(
        "db_client_connection_wait_time_seconds", "wait", [POOL], buckets=bounds, registry=registry
    )
    use = Histogram(
        "db_client_connection_use_time_seconds", "use", [POOL], buckets=bounds, registry=registry
    )
    for _ in range(98):
        wait.labels(**{POOL: app}).observe(0.0004)
    for _ in range(2):
        wait.labels(**{POOL: app}).observe(0.3)
    for seconds in (0.02, 0.3):  # the median's rank, 5, is the first bucket's count
        for _ in range(5):
            use.labels(**{POOL: app}).observe(seconds)
    wait.labels(**{POOL: side}).observe(5.0)  # past the last bound
    Gauge("process_open_fds", "unrelated", registry=registry).set(12)
    return generate_latest(registry)


@contextmanager
def metrics_server(body: Callable[[int], bytes]) -> Iterator[str]:
    """A real HTTP server on a loopback port, serving ``body(n)`` for its n-th request
    to /metrics (404 elsewhere); yields its base URL."""
    served = 0

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            nonlocal served
            if self.path != "/metrics":
                self.send_error(404)
                return
            served += 1
            content = body(served)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def table_rows(output: str) -> dict[str, list[str]]:
    """The table's rows by their first cell (columns are two or more spaces apart)."""
    rows = [re.split(r" {2,}", line.strip()) for line in output.splitlines()]
    return {row[0]: row[1:] for row in rows if len(row) > 5}


def test_stats_once_prints_each_pool_from_the_base_url() -> None:
    with metrics_server(lambda _: exposition()) as base:
        result = run_cli("stats", base, "--once")  # the base URL: /metrics is appended
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"{base}/metrics at ")
    assert "\033[" not in result.stdout  # not a terminal: nothing is redrawn
    rows = table_rows(result.stdout)
    assert rows["pool"] == [
        *("used", "idle", "max", "waiting", "timeouts", "checkouts"),
        *("wait p50", "wait p99", "use p50", "use p99"),
    ]
    assert rows["db1:5432/app"] == [
        *("3", "2", "50", "1", "4", "1234"),
        *("≤ 500 µs", "≤ 500 ms", "≤ 25 ms", "≤ 500 ms"),
    ]
    assert rows["sqlite:/srv/side.db"] == [
        *("0", "1", "1", "0", "0", "7"),
        *("> 1 s", "> 1 s", "-", "-"),
    ]
    assert "process_open_fds" not in result.stdout


def test_stats_redraws_a_terminal_with_rates_and_ends_on_ctrl_c() -> None:
    import pty

    controller, terminal = pty.openpty()
    with metrics_server(lambda n: exposition(checkouts=1000 + 100 * n)) as base:
        process = subprocess.Popen(
            [str(ATOM_DB), "stats", f"{base}/metrics", "--interval", "0.3"],
            stdout=terminal,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(terminal)
        output = b""
        deadline = time.monotonic() + 20
        while output.count(b"\033[H\033[2J") < 3 and time.monotonic() < deadline:
            if select.select([controller], [], [], 1)[0]:
                output += os.read(controller, 65536)
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=10)
        os.close(controller)
    assert process.returncode == 0, errors
    frames = output.decode().replace("\r\n", "\n").split("\033[H\033[2J")[1:]
    assert len(frames) >= 3, output
    assert "checkouts/s" not in frames[0]  # no previous refresh yet
    row = table_rows(frames[2])["db1:5432/app"]
    assert table_rows(frames[2])["pool"][6:8] == ["checkouts/s", "timeouts/s"]
    assert 0 < float(row[6]) <= 100 / 0.3  # 100 checkouts each, at least 0.3 s apart
    assert row[7] == "0.0"


def test_stats_into_a_pipe_closed_early_exits_0_quietly() -> None:
    atom_db = Path(sys.executable).with_name("atom-db")
    with metrics_server(lambda _: exposition()) as base:
        # A reader that stops reading at once (`| head -0`): every write hits a closed pipe.
        stats = subprocess.Popen(
            [str(atom_db), "stats", base, "--interval", "0.01"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert stats.stdout is not None
        stats.stdout.close()
        _, errors = stats.communicate(timeout=30)
    assert (stats.returncode, errors) == (0, b"")


def test_stats_on_a_closed_port_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/metrics"
    assert main(["stats", url, "--once"]) == 2
    error = capsys.readouterr().err
    assert f"atom-db stats: cannot read {url}: " in error
    assert "refused" in error.lower()


def test_stats_on_something_else_than_metrics_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with metrics_server(lambda _: b"<html><body>a web page</body></html>\n") as base:
        assert main(["stats", f"{base}/metrics", "--once"]) == 2
        assert "not Prometheus text" in capsys.readouterr().err
        assert main(["stats", f"{base}/elsewhere", "--once"]) == 2
        assert "HTTP 404" in capsys.readouterr().err


def test_stats_without_prometheus_client_exits_64_saying_what_to_install() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"  # an import of it fails
        "from atom_async_db.cli import main\n"
        "sys.exit(main(['stats', 'http://127.0.0.1:9/metrics', '--once']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 64, result.stdout + result.stderr
    assert "pip install 'atom_async_db[prometheus]'" in result.stderr


# --------------------------------------------------------------------------- bench


def test_bench_passes_its_arguments_to_the_benchmarks() -> None:
    quick = ["--quick", "--stacks", "ours", "--workloads", "read", "--concurrency", "2"]
    result = run_cli("bench", *quick, "--warmup", "0", "--duration", "0.2", "--rounds", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "quick run, 1 cells of 0.0+0.2 s" in result.stdout
    assert re.search(r"\[1/1\] read +2 clients +ours ", result.stdout)
    helped = run_cli("bench", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "usage: atom-db bench [ARGS ...]" in helped.stdout  # ours, then theirs
    assert "usage: python -m benchmarks" in helped.stdout
    refused = run_cli("bench", "--stacks", "nonsense")
    assert refused.returncode == 2  # the benchmarks' own usage error, passed on
    assert "unknown nonsense" in refused.stderr


def test_bench_outside_the_checkout_exits_64_saying_where_they_live(tmp_path: Path) -> None:
    env = {"PYTHONPATH": ""}
    result = run_cli("bench", "--quick", cwd=tmp_path, env=env)
    assert result.returncode == 64, result.stdout + result.stderr
    assert "the benchmarks live in the source checkout" in result.stderr
    assert str(tmp_path) in result.stderr
    helped = run_cli("bench", "--help", cwd=tmp_path, env=env)
    assert helped.returncode == 0
    assert "usage: atom-db bench" in helped.stdout
    assert "the benchmarks live in the source checkout" in helped.stdout
