"""Helpers the tests share: the application name their connections carry, what the
server says about them, the leak checks, seeding, held sessions, slow commits, a real
server for an app and a fresh interpreter for a script."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
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
from tests.models import Base, User
from tests.sync_compat.core.models import Base as SeedBase

APP_NAME = f"atom-test-{os.getpid()}"


def asyncpg_dsn(url: str) -> str:
    """The URL as a plain libpq DSN, for raw asyncpg connections made by the checks."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


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


# --------------------------------------------------------------------------- log records


def marker_line(path: str, marker: str) -> int:
    """The number of the one line of ``path`` that ends with ``marker`` (a comment)."""
    lines = Path(path).read_text().splitlines()
    (line,) = [number for number, text in enumerate(lines, 1) if text.endswith(marker)]
    return line


class LogSeen(logging.Handler):
    """The library's log records, and an event set once one matches ``wanted``."""

    def __init__(self, wanted: Callable[[logging.LogRecord], bool]) -> None:
        super().__init__(logging.DEBUG)
        self.wanted = wanted
        self.records: list[logging.LogRecord] = []
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if self.wanted(record):
            self.event.set()

    async def wait(self) -> None:
        assert await asyncio.to_thread(self.event.wait, 10), "no such log record came"

    def messages(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


def watching_logs(wanted: Callable[[logging.LogRecord], bool]) -> Iterator[LogSeen]:
    """Collect the ``atom_async_db`` logger's records, DEBUG and up, while inside."""
    logger = logging.getLogger("atom_async_db")
    seen = LogSeen(wanted)
    level = logger.level
    logger.addHandler(seen)
    logger.setLevel(logging.DEBUG)
    try:
        yield seen
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)


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
