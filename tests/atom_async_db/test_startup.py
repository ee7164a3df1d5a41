"""The start-up checks on a database's first connection: the connection budget of this
application's processes against PostgreSQL's limits, or PgBouncer's behind it, and a pooler
that answers unannounced (a real PgBouncer)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from atom_async_db import Database
from sync_compat import get_db_session
from tests.fixtures.pgbouncer import PgBouncer
from tests.helpers import APP_NAME

pytestmark = pytest.mark.postgres


async def _first_session_logs(url: str, caplog: pytest.LogCaptureFixture, **options: Any) -> str:
    database = Database(url, application_name=APP_NAME, **options)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="atom_async_db"):
        for _ in range(2):  # the checks run once
            async with database.get_async_db_session() as session:
                await session.execute(text("select 1"))
    await database.dispose()
    return caplog.text


async def test_processes_that_cannot_fit_the_server_get_a_warning_with_the_arithmetic(
    postgres_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    logs = await _first_session_logs(postgres_url, caplog)
    assert logs.count("connection budget") == 1
    assert "4 worker processes (WEB_CONCURRENCY) x (50 async per process) = 200 conn" in logs
    assert "max_connections 100 - superuser_reserved_connections 3" in logs


async def test_the_sync_pool_counts_once_sync_code_uses_it(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    database = Database(postgres_url, application_name=APP_NAME)
    with caplog.at_level(logging.INFO, logger="atom_async_db"):
        async with database.get_async_db_session() as session:
            await session.execute(text("select 1"))
        assert "connection budget" not in caplog.text  # 50 of the server's 97

        def legacy() -> None:
            with get_db_session(database=database) as session:
                session.execute(text("select 1"))

        await asyncio.to_thread(legacy)
    assert "1 worker process (default) x (50 async + 50 sync per process) = 100" in caplog.text
    await database.dispose()


async def test_a_pool_without_a_limit_never_fits(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    logs = await _first_session_logs(postgres_url, caplog, pool_size=5, max_overflow=-1)
    assert "1 worker process (default) x (unlimited async per process) = unlimited conn" in logs


async def test_the_applications_own_pool_is_not_weighed(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy.pool import NullPool

    logs = await _first_session_logs(
        postgres_url, caplog, worker_processes=50, engine_options={"poolclass": NullPool}
    )
    assert "connection budget" not in logs  # (its limits are its own: none of ours)


async def test_pools_that_fit_get_no_warning(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    logs = await _first_session_logs(
        postgres_url,
        caplog,
        worker_processes=4,
        pool_size=5,
        max_overflow=5,
        sync_pool_size=5,
        sync_max_overflow=0,
    )
    assert "connection budget" not in logs
    assert "connection pooler" not in logs


async def test_behind_pgbouncer_its_own_limits_are_checked(
    start_pgbouncer: Callable[..., PgBouncer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    session_mode = start_pgbouncer("session", pool_size=20)
    logs = await _first_session_logs(
        session_mode.url, caplog, server_pooler="pgbouncer", worker_processes=50
    )
    assert "PgBouncer at 127.0.0.1" in logs
    assert "accepts 2000 clients (max_client_conn)" in logs  # 50 x 50 = 2500
    assert "session mode with default_pool_size 20" in logs
    assert "max_connections" not in logs  # the server's limits are PgBouncer's business

    transaction_mode = start_pgbouncer("transaction", pool_size=20)
    logs = await _first_session_logs(transaction_mode.url, caplog, server_pooler="pgbouncer")
    assert "connection budget" not in logs  # 100 clients, and transactions share servers


async def test_a_pooler_that_answers_unannounced_is_recognised(
    start_pgbouncer: Callable[..., PgBouncer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    bouncer = start_pgbouncer("transaction", pool_size=5)
    logs = await _first_session_logs(bouncer.url, caplog, pool_size=5, max_overflow=0)
    assert logs.count("answered as a connection pooler does") == 1
    assert "server_pooler='pgbouncer'" in logs
