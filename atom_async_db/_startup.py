"""Start-up checks on a PostgreSQL database's first connection: a pooler that answers
unannounced, and this application's connection budget against the server's limits.

Each process of an application has its own pools: at most ``pool_size + max_overflow``
connections per event loop, plus the legacy layer's ``sync_pool_size +
sync_max_overflow`` once sync code uses it. Four workers of the defaults may open 200 async
connections, where PostgreSQL accepts ``max_connections`` (100 by default) less
``superuser_reserved_connections``: the first burst then ends in "sorry, too many clients
already". The check warns once, with the arithmetic, when the processes cannot all fit,
counting each pool from its first connection (the sync pool of an async application is
never opened). The number of processes is ``worker_processes``, else ``WEB_CONCURRENCY``
(which gunicorn and uvicorn read), else 1.

Behind PgBouncer (``server_pooler``) the limits that matter are PgBouncer's, read from its
admin console (``SHOW CONFIG``, which needs the user in its ``admin_users`` or
``stats_users``): ``max_client_conn`` for every process's connections, and in session
mode ``default_pool_size`` for each one's, since each connection then holds a server
connection for as long as it is open.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_

from ._connector import server_of
from ._settings import Settings

logger = logging.getLogger("atom_async_db")

__all__ = ["FACTS_QUERY", "Budget", "StartupCheck", "budget", "pgbouncer_config", "worker_count"]


@dataclass(frozen=True)
class _Facts:
    """What the first connection learnt: the server's limits, or PgBouncer's."""

    max_connections: int
    reserved: int
    pgbouncer: dict[str, str] | None = None  # SHOW CONFIG, when it could be read
    unannounced_pooler: bool = False  # a pooler answers: the server's limits are not ours


def _per_process(settings: Settings, kinds: set[str]) -> tuple[float, str]:
    """Connections one process may open on the pools in use (``kinds``), and the sum; a
    pool without a limit (``max_overflow=-1``) counts as infinitely many.
    """
    parts: list[tuple[float, str]] = []
    if "async" in kinds:
        parts.append((_pool_limit(settings.pool_size, settings.max_overflow), "async"))
    if "sync" in kinds:
        limit = _pool_limit(settings.sync_pool_size, settings.sync_max_overflow)
        parts.append((limit, "sync"))
    text = " + ".join(f"{_count(n)} {kind}" for n, kind in parts)
    return sum(n for n, _ in parts), text


def _pool_limit(size: int, overflow: int) -> float:
    return math.inf if overflow == -1 else size + overflow


def _count(number: float) -> str:
    return "unlimited" if number == math.inf else str(int(number))


def worker_count(settings: Settings) -> tuple[int, str]:
    if settings.worker_processes is not None:
        return settings.worker_processes, "worker_processes"
    text = os.environ.get("WEB_CONCURRENCY", "").strip()
    return (int(text), "WEB_CONCURRENCY") if text.isdigit() and int(text) else (1, "default")


@dataclass(frozen=True)
class Budget:
    """This application's connections at most, against what the server or PgBouncer
    accepts.
    """

    total: float
    """Connections all the processes may open (``math.inf``: a pool without a limit)."""
    arithmetic: str
    """How ``total`` is reached: processes x (pools per process)."""
    warnings: tuple[str, ...]
    """One per limit ``total`` exceeds, each saying what to change."""


def budget(
    settings: Settings,
    kinds: set[str],
    max_connections: int,
    reserved: int,
    pgbouncer: dict[str, str] | None,
) -> Budget:
    """The connection budget of ``settings``' processes on the pools in use (``kinds``:
    ``"async"``, ``"sync"``), against the server's ``max_connections - reserved``, or
    behind ``server_pooler`` against PgBouncer's ``SHOW CONFIG`` (None: unknown).
    """
    per_process, parts = _per_process(settings, kinds)
    workers, source = worker_count(settings)
    total = workers * per_process
    arithmetic = (
        f"{workers} worker process{'es' if workers > 1 else ''} ({source}) x "
        f"({parts} per process) = {_count(total)} connections at most"
    )
    server = server_of(settings.url)
    warnings = []
    if "poolclass" in settings.engine_options:
        # The application's own pool (NullPool behind PgBouncer): its limits are not ours.
        arithmetic = "not counted: the pool is the application's own (engine_options poolclass)"
        return Budget(math.inf, arithmetic, ())
    if settings.server_pooler == "none":
        allowed = max_connections - reserved
        if total > allowed:
            warnings.append(
                f"{arithmetic}, but the server at {server} accepts {allowed} "
                f"(max_connections {max_connections} - superuser_reserved_connections "
                f"{reserved}): under load some will fail with 'too many clients already'. "
                "Lower pool_size and max_overflow (and sync_pool_size, sync_max_overflow), "
                "raise max_connections, or put PgBouncer in front (server_pooler='pgbouncer')."
            )
    elif pgbouncer is not None:
        clients = int(pgbouncer.get("max_client_conn", "0"))
        if total > clients:
            warnings.append(
                f"{arithmetic}, but PgBouncer at {server} accepts {clients} clients "
                "(max_client_conn): past that, connections are refused. Lower pool_size "
                "and max_overflow, or raise max_client_conn."
            )
        pool = int(pgbouncer.get("default_pool_size", "0"))
        if pgbouncer.get("pool_mode") == "session" and total > pool:
            warnings.append(
                f"{arithmetic}, but PgBouncer at {server} pools in session mode with "
                f"default_pool_size {pool}: each connection holds a server connection for "
                f"as long as it is open, so those past {pool} wait for one until "
                "pool_timeout (PoolTimeoutError). Make pool_size + max_overflow, times the "
                f"processes, at most {pool}, or use pool_mode = transaction."
            )
    return Budget(total, arithmetic, tuple(warnings))


class StartupCheck:
    """The checks of one database: on the first connection of its async engines and of
    its sync engine, each pool counted from the moment it is in use.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._facts: _Facts | None = None
        self._kinds: set[str] = set()
        self._warned = settings.dialect != "postgresql"

    def install(self, engine: AsyncEngine) -> AsyncEngine:
        """Check on ``engine``'s first connection, unless an async engine did."""
        if not self._warned and "async" not in self._kinds:
            event.listen(engine.sync_engine, "connect", self._on_async_connect, once=True)
        return engine

    def install_sync(self, engine: Engine) -> Engine:
        """Check on the sync engine's first connection."""
        if not self._warned:
            event.listen(engine, "connect", self._on_sync_connect, once=True)
        return engine

    def _on_async_connect(self, dbapi_connection: Any, _record: Any) -> None:
        if "async" in self._kinds:
            return
        self._kinds.add("async")
        driver = dbapi_connection.driver_connection
        driver = getattr(driver, "_atom_target", driver)  # (a fresh connection: no guard)
        try:
            if self._facts is None:
                self._facts = await_(self._async_facts(driver))
            self._evaluate()
        except Exception as error:  # a check must never cost the application its connection
            logger.info("the start-up checks could not run (%r)", error)

    def _on_sync_connect(self, dbapi_connection: Any, _record: Any) -> None:
        self._kinds.add("sync")
        try:
            if self._facts is None:
                self._facts = self._sync_facts(dbapi_connection)
            self._evaluate()
        except Exception as error:
            logger.info("the start-up checks could not run (%r)", error)

    async def _async_facts(self, driver: Any) -> _Facts:
        # In a transaction, which a pooler keeps on one server connection, and unnamed, so
        # that nothing is left prepared on that server connection for another client.
        async with driver.transaction():
            statement = await driver.prepare(FACTS_QUERY, name="")
            row = await statement.fetchrow()
        if self._settings.server_pooler == "none":
            return self._direct_facts(row, driver.get_server_pid())
        config = await asyncio.to_thread(pgbouncer_config, self._settings)
        return _Facts(row[1], row[2], config)

    def _sync_facts(self, dbapi_connection: Any) -> _Facts:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(FACTS_QUERY)
            row = cursor.fetchone()
        finally:
            cursor.close()
        dbapi_connection.rollback()  # (psycopg began a transaction for it)
        if self._settings.server_pooler == "none":
            return self._direct_facts(row, dbapi_connection.info.backend_pid)
        return _Facts(row[1], row[2], pgbouncer_config(self._settings))

    @staticmethod
    def _direct_facts(row: Any, announced: int) -> _Facts:
        """The facts of a server reached without ``server_pooler``: a pooler answers
        unannounced when the session's process id is not the one announced at login.
        """
        pid, max_connections, reserved = row
        unannounced = pid != announced
        if unannounced:
            _warn_pooler(announced, pid)
        return _Facts(max_connections, reserved, unannounced_pooler=unannounced)

    def _evaluate(self) -> None:
        facts = self._facts
        if facts is None or self._warned or facts.unannounced_pooler:
            return
        found = budget(
            self._settings, self._kinds, facts.max_connections, facts.reserved, facts.pgbouncer
        )
        for warning in found.warnings:
            self._warned = True
            logger.warning("connection budget: %s", warning)


FACTS_QUERY = (
    "SELECT pg_backend_pid(), current_setting('max_connections')::int, "
    "current_setting('superuser_reserved_connections')::int"
)


def _warn_pooler(announced: int, actual: int) -> None:
    logger.warning(
        "the database server answered as a connection pooler does (PgBouncer or another: "
        "the process id it announced at login, %s, is not the session's, %s). In "
        "transaction mode, prepared statements fail there, and psycopg's can silently "
        "return another statement's rows: set server_pooler='pgbouncer' "
        "(ATOM_DB_SERVER_POOLER=pgbouncer, or ?server_pooler=pgbouncer in the URL).",
        announced,
        actual,
    )


def pgbouncer_config(settings: Settings) -> dict[str, str] | None:
    """PgBouncer's ``SHOW CONFIG`` (its admin console takes the simple protocol only,
    which psycopg's client-side cursors speak), or None when it cannot be read.
    """
    try:
        import psycopg
    except ImportError:
        logger.info("PgBouncer's limits were not checked: psycopg is not installed")
        return None
    url = settings.url
    try:
        with psycopg.connect(
            host=url.host or "localhost",
            port=url.port or 5432,
            user=url.username or "",
            password=url.password or "",
            dbname="pgbouncer",
            autocommit=True,
            connect_timeout=max(2, int(settings.connect_timeout)),
            cursor_factory=psycopg.ClientCursor,
        ) as connection:
            rows = connection.execute("SHOW CONFIG").fetchall()
    except Exception as error:
        logger.info(
            "PgBouncer's limits were not checked: its admin console (database 'pgbouncer', "
            "SHOW CONFIG) could not be read (%s); it needs the user in PgBouncer's "
            "admin_users or stats_users",
            type(error).__name__,
        )
        return None
    return {str(row[0]): str(row[1]) for row in rows}
