"""Test harness shared by every test: backends, the default database, the leak checker and
a throwaway PostgreSQL cluster.

- Every contract test takes the ``db`` fixture, parametrized over three backends: a SQLite
  file in ``tmp_path``, SQLite ``:memory:`` and PostgreSQL (``ATOM_TEST_POSTGRES_URL``).
  PostgreSQL unreachable: its tests skip with the reason, or fail when ``CI=true``.
- After each test the leak checker asserts that nothing is checked out of any pool, that
  no backend with our ``application_name`` sits ``idle in transaction`` and that nothing
  logged an ERROR (pool resets, destroyed tasks); then the engines are disposed.
  Warnings are errors (pyproject), and a ``gc.collect()`` in the teardown makes a
  garbage-collector warning fail the test that caused it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

import atom_async_db
from atom_async_db import Database
from atom_async_db import _default as default_module
from atom_async_db.pytest_plugin import _process_exists
from tests.models import Base, User
from tests.sync_compat.core.models import Base as SeedBase

POSTGRES_URL = os.environ.get(
    "ATOM_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
APP_NAME = f"atom-test-{os.getpid()}"
IN_CI = os.environ.get("CI", "").lower() == "true"
BACKENDS = ("sqlite_file", "sqlite_memory", "postgres")


def asyncpg_dsn(url: str) -> str:
    """The URL as a plain libpq DSN, for raw asyncpg connections made by the checks."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _postgres_problem(url: str) -> str | None:
    async def probe() -> None:
        connection = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as error:
        return f"PostgreSQL at {make_url(url).render_as_string()} is unreachable ({error!r})"
    return None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test run's own on the server of ``ATOM_TEST_POSTGRES_URL``,
    dropped at the end: two runs against one server (two checkouts, CI beside a developer)
    never meet on a table. One left by a run that was killed is dropped by the next."""
    problem = _postgres_problem(POSTGRES_URL)
    if problem:
        if IN_CI:
            pytest.fail(f"{problem}; CI=true requires it (set ATOM_TEST_POSTGRES_URL)")
        pytest.skip(f"{problem}; set ATOM_TEST_POSTGRES_URL or start the server")
    name = f"atom_suite_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_admin(_create_run_database, name))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(_drop_database, name))


async def _admin(action: Callable[[Any, str], Awaitable[None]], name: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(POSTGRES_URL))
    try:
        await action(connection, name)
    finally:
        await connection.close()


async def _create_run_database(connection: Any, name: str) -> None:
    for (left,) in await connection.fetch(
        "select datname from pg_database where datname like 'atom\\_suite\\_%'"
    ):
        pid = left.split("_")[2]
        if pid.isdigit() and not _process_exists(int(pid)):
            await _drop_database(connection, left)
    await connection.execute(f'create database "{name}"')


async def _drop_database(connection: Any, name: str) -> None:
    await connection.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The test's database. A test marked ``many_connections`` gets PostgreSQL on the
    throwaway cluster, whose connection limit is this run's alone: on the shared server
    another run (or any other client) may hold the connections it needs."""
    if backend == "sqlite_file":
        return f"sqlite:///{tmp_path / 'test.db'}"
    if backend == "sqlite_memory":
        return "sqlite://"
    if request.node.get_closest_marker("many_connections"):
        return str(request.getfixturevalue("pg_cluster").url)
    return str(request.getfixturevalue("postgres_url"))


async def our_backends(url: str, *, state: str | None = None) -> list[str]:
    """States of the PostgreSQL backends carrying our application_name (seen from outside)."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await connection.fetch(
            "select state from pg_stat_activity where application_name = $1", APP_NAME
        )
    finally:
        await connection.close()
    return [row["state"] for row in rows if state is None or row["state"] == state]


async def assert_no_leaks(database: Database) -> None:
    gc.collect()
    pools = [engine.pool for engine in database._engines.engines()]
    if database._sync_engine is not None:
        pools.append(database._sync_engine.pool)
    for pool in pools:
        assert pool.checkedout() == 0, f"connections left checked out: {pool.status()}"
    if database.settings.dialect == "postgresql":
        stuck = [s for s in await our_backends(database.url) if s.startswith("idle in transaction")]
        assert stuck == [], f"backends left in a transaction: {stuck}"


async def emails() -> set[str]:
    """The users' e-mails in the default database, read by a session of its own."""
    async with atom_async_db.get_async_db_session(independent=True) as session:
        return set((await session.execute(select(User.email))).scalars())


SCHEMAS = (Base.metadata, SeedBase.metadata)  # the tests' models and the seed app's


async def reset_schema(database: Database) -> None:
    async with database.engine.begin() as connection:
        for metadata in SCHEMAS:
            await connection.run_sync(metadata.drop_all)
            await connection.run_sync(metadata.create_all)


async def _teardown(database: Database) -> None:
    await assert_no_leaks(database)
    if database.settings.dialect == "postgresql":
        # (a test that disposed the database leaves it closed for good)
        cleaner = Database(database.settings.url) if database.disposed else database
        async with cleaner.engine.begin() as connection:
            for metadata in SCHEMAS:
                await connection.run_sync(metadata.drop_all)
        await cleaner.dispose()
    await database.dispose()


def assert_no_error_logs(caplog: pytest.LogCaptureFixture) -> None:
    """No ERROR from the pool ("Exception during reset"), asyncio ("Task was destroyed",
    "Future exception was never retrieved") or from us."""
    errors = [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.levelno >= logging.ERROR
        and record.name.split(".")[0] in {"sqlalchemy", "asyncio", "atom_async_db"}
    ]
    assert errors == []


@pytest.fixture
async def make_default(
    backend_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Callable[..., Awaitable[Database]]]:
    """``await make_default(**options)``: configure the default database on the test's
    backend with fresh tables; every database it made is leak-checked and disposed after."""
    monkeypatch.setattr(default_module, "_default", None)
    made: list[Database] = []

    async def configure(**options: Any) -> Database:
        database = atom_async_db.configure(backend_url, application_name=APP_NAME, **options)
        made.append(database)
        await reset_schema(database)
        return database

    yield configure
    for database in reversed(made):
        await _teardown(database)
    assert_no_error_logs(caplog)


@pytest.fixture
async def db(make_default: Callable[..., Awaitable[Database]]) -> Database:
    """The default database on the test's backend (default options), with fresh tables."""
    return await make_default()


@dataclass
class HeldSession:
    """A session that a task of its own keeps open (see :func:`hold_a_session`)."""

    task: asyncio.Task[Any]
    release: asyncio.Event

    async def end(self) -> Any:
        """Let the session end; the task's result (``then``'s value)."""
        self.release.set()
        return await self.task


async def hold_a_session(
    database: Database, statement: str = "select 1", *, then: str | None = None
) -> HeldSession:
    """Start a task whose session runs ``statement`` and then keeps its connection (and
    on SQLite, after a write, the write lock) until released; return once it holds it.
    After the release the session runs ``then`` (if given) and ends."""
    from sqlalchemy import text

    holding, release = asyncio.Event(), asyncio.Event()

    async def hold() -> Any:
        async with database.get_async_db_session() as session:
            await session.execute(text(statement))
            holding.set()
            await release.wait()
            return await session.scalar(text(then)) if then else None

    task = asyncio.create_task(hold())
    held = asyncio.create_task(holding.wait())
    await asyncio.wait({task, held}, return_when=asyncio.FIRST_COMPLETED)
    if not held.done():  # the session failed before holding anything: say why
        held.cancel()
        task.result()
    return HeldSession(task, release)


async def create_slow_commit_table(database: Database, table: str, seconds: float) -> None:
    """(PostgreSQL) ``table`` (id int), whose COMMIT after an insert takes ``seconds``: a
    deferred constraint trigger sleeps at commit time, so a COMMIT can be caught in flight."""
    from sqlalchemy import text

    async with database.engine.begin() as connection:
        for statement in (
            f"drop table if exists {table}",
            f"create table {table} (id int primary key)",
            f"create or replace function {table}_sleep() returns trigger language plpgsql "
            f"as $$ begin perform pg_sleep({seconds}); return null; end $$",
            f"create constraint trigger {table}_sleep after insert on {table} "
            f"deferrable initially deferred for each row execute function {table}_sleep()",
        ):
            await connection.execute(text(statement))


async def create_deferred_child_table(database: Database, prefix: str) -> str:
    """(PostgreSQL) ``{prefix}_child``, whose foreign key to ``{prefix}_parent`` is checked
    at COMMIT: inserting a row that has no parent makes a COMMIT the server refuses, an
    outcome that is known. Returns the child table's name."""
    from sqlalchemy import text

    async with database.engine.begin() as connection:
        await connection.execute(text(f"drop table if exists {prefix}_child, {prefix}_parent"))
        await connection.execute(text(f"create table {prefix}_parent (id int primary key)"))
        await connection.execute(
            text(
                f"create table {prefix}_child (parent int references {prefix}_parent "
                "deferrable initially deferred)"
            )
        )
    return f"{prefix}_child"


# --------------------------------------------------------------------------- a real server


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a loopback port; yields its base URL."""
    import uvicorn

    # A socket already listening: clients may connect at once (the backlog holds them
    # until uvicorn accepts).
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    config = uvicorn.Config(app, lifespan="off", log_level="critical")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await serving
        sock.close()


# --------------------------------------------------------------------------- subprocesses


def run_python(
    code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> str:
    """Run ``code`` in a fresh interpreter under ``-X dev -W error``; return its output.

    Fails the test with the output when the child exits non-zero or prints a warning.
    """
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=Path(__file__).resolve().parents[1],
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"child exited {result.returncode}:\n{output}"
    return output


# --------------------------------------------------------------------------- throwaway cluster


def _postgres_bindir() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ThrowawayCluster:
    """A PostgreSQL server of the tests' own, on a loopback port, for stopping and restarting."""

    bindir: Path
    datadir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:  # initdb and pg_ctl refuse to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    async def require_password(self, user: str, password: str) -> None:
        """Create login ``user`` with ``password``, which the server then checks (scram)."""
        connection = await asyncpg.connect(asyncpg_dsn(self.url))
        try:
            await connection.execute(f'drop role if exists "{user}"')
            await connection.execute(f"create role \"{user}\" login password '{password}'")
        finally:
            await connection.close()
        hba = self.datadir / "data" / "pg_hba.conf"
        rule = f"host all {user} 127.0.0.1/32 scram-sha-256\n"
        if rule not in hba.read_text():
            with hba.open("r+") as file:  # in place, so the file keeps its owner
                rules = file.read()
                file.seek(0)
                file.write(rule + rules)
        self.pg_ctl("reload")

    def pg_ctl(self, action: str) -> None:
        options = (
            f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=300"  # for the tests marked many_connections
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir / "data"),
            "-o",
            options,
            "-m",
            "fast",
            "-w",
            "-l",
            str(self.datadir / "log"),
            action,
        )


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[ThrowawayCluster]:
    bindir = _postgres_bindir()
    if bindir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    datadir = Path(tempfile.mkdtemp(prefix="atom-pg-"))
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
    cluster = ThrowawayCluster(bindir, datadir, _free_port())
    cluster._run(
        "initdb", "-D", str(datadir / "data"), "-A", "trust", "-U", "postgres", "--no-sync"
    )
    cluster.pg_ctl("start")
    try:
        yield cluster
    finally:
        cluster.pg_ctl("stop")
        shutil.rmtree(datadir, ignore_errors=True)
