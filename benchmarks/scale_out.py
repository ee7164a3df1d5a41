"""The scale-out benchmark: one FastAPI app under uvicorn with several worker processes,
direct to PostgreSQL or through PgBouncer, at hundreds to a thousand client connections.

The app is the HTTP benchmark's (``_http_app``, stack ``asyncdb``: ``db: AsyncDB``) and
its route ``GET /items/{id}`` (a primary-key read). Three configurations:

- ``direct``: straight to PostgreSQL with the library's default pools (20 + 30 per
  worker process);
- ``pgbouncer``: through PgBouncer (transaction mode) with small app pools
  (``--app-pool``, default 10 + 0 per worker) and ``server_pooler="pgbouncer"``;
- ``nullpool``: through the same PgBouncer with SQLAlchemy's ``NullPool`` (a connection
  to PgBouncer per request) and ``server_pooler="pgbouncer"``;
- on request, ``direct_fit``: straight to PostgreSQL with pools that fit the server
  (``--fit-pool``, default 20 + 0 per worker: 80 connections for four workers).

Each cell (a configuration at a number of client connections) gets a fresh uvicorn
(``--workers N``, ``WEB_CONCURRENCY=N`` for the library's start-up check) and, behind
PgBouncer, a fresh PgBouncer; ``wrk`` drives it for a warm-up, the server drains what the
warm-up left in flight, then ``wrk`` runs the measured window. Per cell:

- 2xx responses per second; p50/p99 latency (wrk's, of all responses, with a 30 s request
  timeout so that slow requests are measured rather than dropped); non-2xx responses and
  socket errors;
- the lines of the server's log saying "too many clients" (PostgreSQL's refusal) during
  the window (its start-up budget warning aside);
- server backends: the most on the benchmark's database and on the whole server, and the
  mean number active, idle in transaction and idle (``pg_stat_activity``, every 100 ms,
  on a connection of the benchmark's own opened before the app's); PgBouncer's clients
  waiting for a server connection (``SHOW POOLS``);
- CPU per request of the app (the uvicorn master and its workers), PgBouncer, PostgreSQL
  (its live processes), wrk and the rest of the machine (backends that exited, such as
  those forked for refused connections, and anything else running), and how busy the
  machine was.

Ratios are against ``direct`` at the same number of connections in the same run.

The table lives in a throwaway database (``atom_bench_scale_<pid>_<hex>``) created on the
server of ``--url`` at the start and dropped at the end. PgBouncer connects to that server
with trust authentication. Needs ``wrk`` and ``pgbouncer`` (``apt install wrk pgbouncer``)::

    python -m benchmarks.scale_out                      # the default run, about 2 minutes
    python -m benchmarks.scale_out --connections 1000 --configs direct,nullpool --rounds 3
    python -m benchmarks.scale_out --configs direct,pgbouncer,direct_fit
    python -m benchmarks.scale_out --out benchmarks/results/scale-out
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import URL, make_url

from atom_async_db import Database
from benchmarks._stacks import prepare
from benchmarks.http import TICK, Server, _cpu_seconds, _free_port, _tree_cpu_seconds, run_wrk

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
CONFIGS = ("direct", "pgbouncer", "nullpool")  # the default run
MORE_CONFIGS = ("direct_fit",)  # on request
BEHIND_PGBOUNCER = ("pgbouncer", "nullpool")
DB_PREFIX = "atom_bench_scale_"
WRK_TIMEOUT = 30.0  # s: wrk's request timeout, above any latency measured here
SAMPLE_EVERY = 0.1  # s: pg_stat_activity and SHOW POOLS
TOO_MANY = "too many clients"
QUIET_INTERVAL = 0.25  # s: a server is quiet when it used under 5 % of a core over one
QUIET_CPU = 0.05
BUDGET_WARNING = "connection budget:"  # the library's start-up check (it names the error)


def pgbouncer_binary() -> str | None:
    """Debian's pgbouncer, on the PATH or where Debian puts it."""
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )


# --------------------------------------------------------------------------- the database


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


def _connect(url: URL) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password or "",
        dbname=url.database or "postgres",
        autocommit=True,
        connect_timeout=5,
    )


def create_database(admin: URL) -> str:
    """A database of this run's own; those left by runs that were killed are dropped."""
    name = f"{DB_PREFIX}{os.getpid()}_{secrets.token_hex(3)}"
    with _connect(admin) as connection:
        rows = connection.execute(
            "select datname from pg_database where datname like %s", (f"{DB_PREFIX}%",)
        ).fetchall()
        for (left,) in rows:
            pid = left.removeprefix(DB_PREFIX).split("_")[0]
            if pid.isdigit() and not _process_exists(int(pid)):
                connection.execute(f'drop database if exists "{left}" with (force)')
        connection.execute(f'create database "{name}"')
    return name


def drop_database(admin: URL, name: str) -> None:
    with _connect(admin) as connection:
        connection.execute(f'drop database if exists "{name}" with (force)')


def server_facts(admin: URL) -> dict[str, str]:
    with _connect(admin) as connection:
        rows = connection.execute(
            "select name, setting from pg_settings where name in "
            "('server_version', 'max_connections', 'superuser_reserved_connections')"
            " union all select 'user', current_user"
            " union all select 'superuser', rolsuper::text from pg_roles"
            " where rolname = current_user"
        ).fetchall()
    return {str(name): str(setting) for name, setting in rows}


def wait_until_idle(admin: URL, database: str, give_up_after: float = 10.0) -> int:
    """Wait for the previous cell's backends on ``database`` to go; the count left."""
    deadline = time.monotonic() + give_up_after
    with _connect(admin) as connection:
        while True:
            row = connection.execute(
                "select count(*) from pg_stat_activity where datname = %s", (database,)
            ).fetchone()
            left = int(row[0]) if row else 0
            if left == 0 or time.monotonic() > deadline:
                return left
            time.sleep(0.1)  # polling another process's connections: no event to wait on


# --------------------------------------------------------------------------- PgBouncer


class PgBouncer:
    """A PgBouncer of our own in front of ``server`` (transaction mode unless told, trust
    authentication), on a free loopback port; as the ``postgres`` user when run as root,
    since it refuses to run as root. (The tests start theirs with it too.)"""

    def __init__(
        self,
        binary: str,
        server: URL,
        pool_size: int,
        *,
        pool_mode: str = "transaction",
        max_client_conn: int = 5000,
    ) -> None:
        self.port = _free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="atom-bench-pgbouncer-"))
        users = dict.fromkeys(["postgres", server.username or "postgres"])  # trust: listed
        (self.workdir / "userlist.txt").write_text("".join(f'"{u}" ""\n' for u in users))
        (self.workdir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server.host or '127.0.0.1'} port={server.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.workdir}/userlist.txt\n"
            "admin_users = postgres\n"
            f"pool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\n"
            f"max_client_conn = {max_client_conn}\n"
            f"logfile = {self.workdir}/pgbouncer.log\n"
        )
        user = None
        if os.geteuid() == 0:
            user = "postgres"
            for path in (self.workdir, *self.workdir.iterdir()):
                shutil.chown(path, user, user)
        self.process = subprocess.Popen(
            [binary, str(self.workdir / "pgbouncer.ini")],
            user=user,
            group=user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                log = self.workdir / "pgbouncer.log"
                raise RuntimeError(f"pgbouncer exited: {log.read_text() if log.exists() else ''}")
            try:
                with self.admin():
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # polling a process of our own for its port

    def admin(self) -> psycopg.Connection[Any]:
        """Its admin console: the simple query protocol only, which ClientCursor speaks."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname="pgbouncer",
            autocommit=True,
            connect_timeout=5,
            cursor_factory=psycopg.ClientCursor,
        )

    def version(self) -> str:
        with self.admin() as console:
            row = console.execute("SHOW VERSION").fetchone()
        return str(row[0]) if row else "?"

    def cpu(self) -> float:
        return _cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # its immediate shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


# --------------------------------------------------------------------------- sampling


@dataclass
class Peaks:
    """The most seen by the samples of one window."""

    backends: int = 0  # server backends on the benchmark's database
    all_backends: int = 0  # client backends on the whole server (other databases too)
    bouncer_clients: int = 0  # PgBouncer: client connections (active + waiting)
    bouncer_waiting: int = 0  # PgBouncer: clients waiting for a server connection
    bouncer_servers: int = 0  # PgBouncer: its server connections, whatever their state
    samples: int = 0
    # the benchmark database's backends by state, summed over the samples (means: / samples)
    states: dict[str, int] = field(default_factory=dict)


class Sampler:
    """Samples ``pg_stat_activity`` (and PgBouncer's ``SHOW POOLS``) every 100 ms in a
    thread while ``sampling()``, on connections opened before the server starts: under
    load the app may take every connection slot, the superusers' reserved ones too when
    it connects as a superuser."""

    def __init__(self, admin: URL, database: str, bouncer: PgBouncer | None) -> None:
        self.database = database
        self.peaks = Peaks()
        self.failures: list[str] = []
        self._server = _connect(admin)
        self.postmaster = _postmaster(self._server)
        try:
            self._console = bouncer.admin() if bouncer else None
        except BaseException:
            self._server.close()
            raise
        self._stop = threading.Event()

    @contextlib.contextmanager
    def sampling(self) -> Iterator[Peaks]:
        thread = threading.Thread(target=self._run, name="scale-out sampler", daemon=True)
        thread.start()
        try:
            yield self.peaks
        finally:
            self._stop.set()
            thread.join()

    def close(self) -> None:
        self._server.close()
        if self._console is not None:
            self._console.close()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            try:
                self._sample()
            except psycopg.Error as error:  # reported, never fatal to the run
                self.failures.append(repr(error))
                if len(self.failures) > 10:
                    return

    def _sample(self) -> None:
        peaks = self.peaks
        row = self._server.execute(
            "select count(*) filter (where datname = %s),"
            " count(*) filter (where backend_type = 'client backend')"
            " from pg_stat_activity",
            (self.database,),
        ).fetchone()
        if row:
            peaks.backends = max(peaks.backends, int(row[0]))
            peaks.all_backends = max(peaks.all_backends, int(row[1]))
        for state, count in self._server.execute(
            "select coalesce(state, '?'), count(*) from pg_stat_activity"
            " where datname = %s group by 1",
            (self.database,),
        ).fetchall():
            peaks.states[state] = peaks.states.get(state, 0) + int(count)
        if self._console is not None:
            cursor = self._console.execute("SHOW POOLS")
            names = [column.name for column in cursor.description or ()]
            for values in cursor.fetchall():
                pool = dict(zip(names, values, strict=True))
                if pool.get("database") != self.database:
                    continue
                waiting = int(pool["cl_waiting"])
                peaks.bouncer_waiting = max(peaks.bouncer_waiting, waiting)
                peaks.bouncer_clients = max(peaks.bouncer_clients, int(pool["cl_active"]) + waiting)
                servers = sum(
                    int(pool[key])
                    for key in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
                )
                peaks.bouncer_servers = max(peaks.bouncer_servers, servers)
        peaks.samples += 1


def _machine_cpu() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / TICK


def _postmaster(connection: psycopg.Connection[Any]) -> int | None:
    """The PostgreSQL server's main process when it runs on this machine (the parent of
    this connection's backend), else None."""
    row = connection.execute("select pg_backend_pid()").fetchone()
    try:
        stat = Path(f"/proc/{row[0] if row else 0}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuMeter:
    """Where the machine's CPU went: the app (uvicorn and its workers), PgBouncer,
    PostgreSQL (its main process and its live backends, other databases' included), wrk,
    this process (the sampler) and the rest of the machine."""

    server: Server
    bouncer: PgBouncer | None
    postmaster: int | None

    def read(self) -> dict[str, float]:
        return {
            "app": self.server.cpu(),
            "pgbouncer": self.bouncer.cpu() if self.bouncer else 0.0,
            "postgres": _tree_cpu_seconds(self.postmaster) if self.postmaster else 0.0,
            "wrk": _children_cpu(),
            "benchmark": _self_cpu(),
            "machine": _machine_cpu(),
        }

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        spent = {key: after[key] - before[key] for key in before}
        known = sum(value for key, value in spent.items() if key != "machine")
        spent["other"] = max(0.0, spent["machine"] - known)
        return spent


def _log_lines(log: Path, start: int) -> list[str]:
    with log.open("rb") as file:
        file.seek(start)
        return file.read().decode(errors="replace").splitlines()


def _messages(lines: list[str]) -> list[str]:
    """The distinct messages of a log, without uvicorn's INFO lines and the tracebacks'
    frames: the loggers' messages and the exceptions' last lines."""
    skip = ("INFO:", "Traceback", "During handling", "The above exception", "GeneratorExit")
    kept = (line for line in lines if line.strip() and not line[0].isspace())
    return sorted({line for line in kept if not line.startswith(skip)})[:20]


# --------------------------------------------------------------------------- one cell


@dataclass
class Cell:
    config: str
    connections: int
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(float(r[key]) for r in self.rounds)

    def median_state(self, state: str) -> float:
        """The median over the rounds of the mean number of backends in ``state``."""
        return statistics.median(
            float(r["mean_backends_by_state"].get(state, 0.0)) for r in self.rounds
        )

    def total(self, key: str) -> int:
        return sum(int(r[key]) for r in self.rounds)

    def most(self, key: str) -> int:
        return max(int(r[key]) for r in self.rounds)


def config_env(config: str, app_pool: int, workers: int, fit_pool: int) -> dict[str, str]:
    """The app's environment for ``config`` (WEB_CONCURRENCY tells the library's start-up
    check how many processes share the server, as a deployment would)."""
    env = {"WEB_CONCURRENCY": str(workers), "ATOM_DB_APPLICATION_NAME": "atom_bench_scale"}
    if config == "pgbouncer":
        env |= {
            "ATOM_DB_POOL_SIZE": str(app_pool),
            "ATOM_DB_MAX_OVERFLOW": "0",
            "ATOM_DB_SERVER_POOLER": "pgbouncer",
        }
    elif config == "nullpool":
        env |= {"BENCH_POOL": "null", "ATOM_DB_SERVER_POOLER": "pgbouncer"}
    elif config == "direct_fit":
        env |= {"ATOM_DB_POOL_SIZE": str(fit_pool), "ATOM_DB_MAX_OVERFLOW": "0"}
    return env


def wait_for_workers(server: Server, log: Path, workers: int, give_up_after: float = 60) -> None:
    """Wait until every worker has finished its start-up (uvicorn logs it, at info level)
    and the route answers."""
    deadline = time.monotonic() + give_up_after
    while log.read_text(errors="replace").count("Application startup complete.") < workers:
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the workers did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)  # polling the log of a process of our own
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/items/1", timeout=5):
                return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_until_quiet(server: Server, give_up_after: float = 120) -> float:
    """Wait until the server has drained what the warm-up left: uvicorn runs a request to
    its end after its client has gone, so the requests queued when wrk stopped (up to one
    per connection) would otherwise be served inside the measured window. The seconds it
    took."""
    started = time.monotonic()
    before = server.cpu()
    while time.monotonic() - started < give_up_after:
        time.sleep(QUIET_INTERVAL)  # sampling CPU use: there is no event for "idle"
        now = server.cpu()
        if now - before < QUIET_CPU * QUIET_INTERVAL:
            break
        before = now
    return time.monotonic() - started


def run_cell(
    config: str,
    connections: int,
    args: argparse.Namespace,
    admin: URL,
    database: str,
    scratch: Path,
    bouncer_binary: str | None,
) -> dict[str, Any]:
    """One configuration at ``connections``: a fresh server (and PgBouncer), measured."""
    left = wait_until_idle(admin, database)
    bouncer = None
    app_url = admin.set(database=database)
    if config in BEHIND_PGBOUNCER:
        assert bouncer_binary is not None
        bouncer = PgBouncer(bouncer_binary, admin, args.bouncer_pool_size)
        app_url = app_url.set(host="127.0.0.1", port=bouncer.port)
    log = scratch / f"server-{config}-{connections}-{time.monotonic_ns()}.log"
    server = sampler = None
    try:
        sampler = Sampler(admin, database, bouncer)
        server = Server(
            "asyncdb",
            app_url.render_as_string(hide_password=False),
            workers=args.workers,
            env=config_env(config, args.app_pool, args.workers, args.fit_pool),
            log=log,
            log_level="info",  # "Application startup complete." per worker
        )
        wait_for_workers(server, log, args.workers)
        if args.warmup:
            run_wrk(server.port, "read", args.warmup, connections=connections, timeout=WRK_TIMEOUT)
        drained = wait_until_quiet(server)
        log_start = log.stat().st_size
        meter = CpuMeter(server, bouncer, sampler.postmaster)
        cpu_before = meter.read()
        window_started = time.monotonic()
        with sampler.sampling() as peaks:
            load = run_wrk(
                server.port, "read", args.seconds, connections=connections, timeout=WRK_TIMEOUT
            )
        cpu = CpuMeter.spent(cpu_before, meter.read())
        wall = time.monotonic() - window_started
        window = _log_lines(log, log_start)
        log_end = log.stat().st_size
    finally:
        if server is not None:
            server.stop()
        if sampler is not None:
            sampler.close()
        if bouncer is not None:
            bouncer.stop()
    whole_log = log.read_text(errors="replace")
    # what the server logged as it stopped: tracebacks there are the app's shutdown failing
    after = _log_lines(log, log_end)
    requests = load.requests
    per_request = (lambda cpu: 1000 * cpu / requests) if requests else (lambda _: float("nan"))
    return {
        **asdict(load),
        "ok_rps": (requests - load.unexpected) / load.seconds if load.seconds else 0.0,
        "too_many_clients_lines": sum(TOO_MANY in line and BUDGET_WARNING not in line
                                      for line in window),
        "asgi_exceptions": sum("Exception in ASGI application" in line for line in window),
        "budget_warning": BUDGET_WARNING in whole_log,
        "tracebacks_at_shutdown": sum(line.startswith("Traceback") for line in after),
        "shutdown_messages": _messages(after),
        **{
            f"max_{key}": value
            for key, value in asdict(peaks).items()
            if key not in ("samples", "states")
        },
        "mean_backends_by_state": {
            state: total / peaks.samples for state, total in sorted(peaks.states.items())
        }
        if peaks.samples
        else {},
        "samples": peaks.samples,
        "sample_failures": sampler.failures,
        "cpu_seconds": cpu,
        **{f"{key}_cpu_ms_per_request": per_request(value) for key, value in cpu.items()},
        "machine_busy_percent": 100 * cpu["machine"] / (wall * (os.cpu_count() or 1)),
        "backends_left_before": left,
        "warmup_drain_seconds": drained,
    }  # fmt: skip


# --------------------------------------------------------------------------- the report


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}" if base else "–"


COLUMNS = (
    "config", "connections", "2xx req/s", "vs direct", "p50 ms", "p99 ms", "p99 vs direct",
    "non-2xx", "socket errors", '"too many clients" log lines', "max server backends",
    "backends active / idle in transaction / idle (mean)",
    "max backends, whole server", "PgBouncer: max clients waiting",
    "CPU ms/req: app / PgBouncer / PostgreSQL / wrk / other", "machine busy %",
)  # fmt: skip


def table(cells: dict[tuple[str, int], Cell], configs: list[str], counts: list[int]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for connections in counts:
        direct = cells.get(("direct", connections))
        base_rps = direct.median("ok_rps") if direct else None
        base_p99 = direct.median("p99_ms") if direct else None
        for config in configs:
            cell = cells[(config, connections)]
            rps, p99 = cell.median("ok_rps"), cell.median("p99_ms")
            cpu = " / ".join(
                "–"
                if part == "pgbouncer" and config not in BEHIND_PGBOUNCER
                else f"{cell.median(f'{part}_cpu_ms_per_request'):.2f}"
                for part in ("app", "pgbouncer", "postgres", "wrk", "other")
            )
            waiting = str(cell.most("max_bouncer_waiting")) if config in BEHIND_PGBOUNCER else "–"
            values = [
                config,
                f"{connections:,}",
                f"{rps:.0f}",
                _ratio(rps, base_rps),
                f"{cell.median('p50_ms'):.1f}",
                f"{p99:.1f}",
                _ratio(p99, base_p99),
                str(cell.total("unexpected")),
                str(cell.total("socket_errors")),
                str(cell.total("too_many_clients_lines")),
                str(cell.most("max_backends")),
                " / ".join(
                    f"{cell.median_state(state):.0f}"
                    for state in ("active", "idle in transaction", "idle")
                ),
                str(cell.most("max_all_backends")),
                waiting,
                cpu,
                f"{cell.median('machine_busy_percent'):.0f}",
            ]
            lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def header(args: argparse.Namespace, facts: dict[str, str], bouncer_version: str | None) -> str:
    reserved = int(facts.get("superuser_reserved_connections", "0"))
    superuser = facts.get("superuser") == "true"
    limit = int(facts.get("max_connections", "0"))
    bouncer = (
        f"{bouncer_version}, transaction mode, default_pool_size {args.bouncer_pool_size}"
        if bouncer_version
        else "not used"
    )
    return "\n".join(
        [
            f"# Scale-out: {args.workers} uvicorn workers, direct and through PgBouncer",
            "",
            f"`{' '.join(['python', '-m', 'benchmarks.scale_out', *args.argv])}`",
            "",
            f"- PostgreSQL {facts.get('server_version', '?')}: max_connections {limit}, "
            f"superuser_reserved_connections {reserved} ({limit - reserved} for other users; "
            f"the app connects as {facts.get('user', '?')}"
            + (", a superuser, who may take the reserved ones too)" if superuser else ")"),
            f"- PgBouncer: {bouncer}",
            f"- app pools per worker: direct the library's default (20 + 30); pgbouncer "
            f"{args.app_pool} + 0; nullpool none (NullPool)"
            + (f"; direct_fit {args.fit_pool} + 0" if "direct_fit" in args.configs else ""),
            f"- GET /items/{{id}} (`db: AsyncDB`), wrk 2 threads, {args.warmup:g} s warm-up, "
            f"{args.seconds:g} s measured, {args.rounds} round(s) (medians; errors summed, "
            f"maxima the largest), {os.cpu_count()} cores shared by wrk, the app, PgBouncer "
            "and PostgreSQL",
            "- 2xx req/s: successful responses per second; p50/p99: all responses (wrk); "
            "ratios against `direct` at the same connections",
        ]
    )


# --------------------------------------------------------------------------- main


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale_out",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="the server (and a database on it "
                        "to connect to) where the throwaway database is made")  # fmt: skip
    parser.add_argument("--connections", type=_int_list, default=[200, 1000])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--seconds", type=float, default=10.0, help="measured per cell")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--app-pool", type=int, default=10,
                        help="pool_size per worker behind PgBouncer (max_overflow 0)")  # fmt: skip
    parser.add_argument(
        "--fit-pool",
        type=int,
        default=20,
        help="pool_size per worker of direct_fit (max_overflow 0)",
    )
    parser.add_argument("--bouncer-pool-size", type=int, default=20,
                        help="PgBouncer's default_pool_size")  # fmt: skip
    parser.add_argument("--out", type=Path, help="directory for results.json and report.md")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs in this directory")
    args = parser.parse_args(argv)
    args.configs = args.configs.split(",")
    unknown = sorted(set(args.configs) - set(CONFIGS + MORE_CONFIGS))
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {', '.join(CONFIGS + MORE_CONFIGS)}")
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def _raise_open_files_limit() -> None:
    """wrk at 1,000 connections needs as many descriptors; it inherits this limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def throwaway_database(admin: URL) -> Iterator[str]:
    name = create_database(admin)
    try:
        database = Database(admin.set(database=name).render_as_string(hide_password=False))

        async def setup() -> None:
            await prepare(database)
            await database.dispose()

        asyncio.run(setup())
        yield name
    finally:
        drop_database(admin, name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt install wrk)")
    binary = pgbouncer_binary()
    if binary is None and set(args.configs) & set(BEHIND_PGBOUNCER):
        raise SystemExit("pgbouncer is not installed (apt install pgbouncer)")
    _raise_open_files_limit()
    admin = make_url(args.url).set(drivername="postgresql")
    facts = server_facts(admin)
    cells = {(c, n): Cell(c, n) for n in args.connections for c in args.configs}
    bouncer_version = None
    with tempfile.TemporaryDirectory() as temporary, throwaway_database(admin) as database:
        scratch = args.logs or Path(temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        if binary and set(args.configs) & set(BEHIND_PGBOUNCER):
            probe = PgBouncer(binary, admin, args.bouncer_pool_size)
            try:
                bouncer_version = probe.version()
            finally:
                probe.stop()
        for round_number in range(args.rounds):
            shift = round_number % len(args.configs)
            order = args.configs[shift:] + args.configs[:shift]
            for connections in args.connections:
                for config in order:
                    result = run_cell(config, connections, args, admin, database, scratch, binary)
                    cells[(config, connections)].rounds.append(result)
                    print(
                        f"round {round_number + 1} {config} {connections}: "
                        f"{result['ok_rps']:.0f} 2xx/s, p99 {result['p99_ms']:.0f} ms, "
                        f"{result['unexpected']} non-2xx, {result['socket_errors']} socket "
                        f"errors, {result['max_backends']} backends",
                        file=sys.stderr,
                    )
    text = (
        header(args, facts, bouncer_version) + "\n\n" + table(cells, args.configs, args.connections)
    )
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(text + "\n")
        results = {
            "command": ["python", "-m", "benchmarks.scale_out", *args.argv],
            "database": database,
            "server": facts,
            "pgbouncer": bouncer_version,
            "settings": {
                key: getattr(args, key)
                for key in ("workers", "seconds", "warmup", "rounds", "app_pool", "fit_pool",
                            "bouncer_pool_size", "connections", "configs")
            },
            "cells": [asdict(cell) for cell in cells.values()],
        }  # fmt: skip
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
