"""The deprecated ``database_manager`` shims: they work, and each call warns once with the
replacement's name, at the caller's line."""

from __future__ import annotations

import asyncio
import inspect
import logging
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy.orm import Session

from atom_async_db import Database
from sync_compat import database_manager
from tests.helpers import emails
from tests.models import User


def _line() -> int:
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


def _caught(action: Callable[[], Any]) -> tuple[Any, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = action()
    return result, caught


@pytest.mark.parametrize(
    ("name", "replacement"),
    [("get_db_session", "get_db_session()"), ("get_monitored_db_session", "get_db_session()")],
)
async def test_context_manager_shims_warn_at_the_caller_and_work(
    db: Database, name: str, replacement: str
) -> None:
    shim = getattr(database_manager, name)

    def legacy_code() -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            line = _line() + 1
            with shim() as session:
                session.add(User(email=f"{name}@example.com"))
        [warning] = caught
        assert warning.category is DeprecationWarning
        assert (warning.filename, warning.lineno) == (__file__, line)
        assert str(warning.message) == (
            f"database_manager.{name}() is deprecated and will be removed in 2.0; "
            f"use {replacement} (from core.database, or sync_compat) instead"
        )
        return line

    await asyncio.to_thread(legacy_code)
    assert await emails() == {f"{name}@example.com"}


async def test_request_shim_warns_when_started_and_works(db: Database) -> None:
    def legacy_code() -> None:
        generator = database_manager.get_db_session_for_request()
        session, caught = _caught(lambda: next(generator))
        [warning] = caught
        assert warning.category is DeprecationWarning
        assert "use get_db (from core.database, or sync_compat)" in str(warning.message)
        session.add(User(email="request@example.com"))
        session.commit()
        generator.close()

    await asyncio.to_thread(legacy_code)
    assert await emails() == {"request@example.com"}


async def test_request_shim_is_still_a_fastapi_dependency(db: Database) -> None:
    app = FastAPI()

    @app.post("/users/{email}")
    def create(
        email: str, session: Session = Depends(database_manager.get_db_session_for_request)
    ) -> None:
        session.add(User(email=email))
        session.commit()

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with pytest.warns(DeprecationWarning, match="get_db_session_for_request"):
            response = await client.post("/users/dep@example.com")
    assert response.status_code == 200
    assert await emails() == {"dep@example.com"}


def test_shims_are_deprecated_for_type_checkers() -> None:
    code = (
        "from tests.sync_compat.core.database_manager import *\n"
        "get_db_session()\nget_monitored_db_session()\nget_db_session_for_request()\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--enable-error-code", "deprecated", "--config-file=",
         "--no-incremental", "--cache-dir=/dev/null", "-c", code],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    reported = [line for line in result.stdout.splitlines() if "[deprecated]" in line]
    assert len(reported) == 3, result.stdout + result.stderr
    for name in database_manager.__all__:
        assert f"database_manager.{name} is deprecated" in result.stdout
        assert "removed in 2.0" in getattr(database_manager, name).__deprecated__


async def test_each_call_warns_once(db: Database) -> None:
    _, caught = _caught(lambda: [database_manager.get_db_session() for _ in range(3)])
    assert [warning.lineno for warning in caught] == [_line() - 1] * 3


async def test_the_monitored_session_times_its_statements_into_the_pool_statistics(
    db: Database, run: Any
) -> None:
    from sqlalchemy import text

    from tests.helpers import watching_logs

    def legacy_code() -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            line = _line() + 1
            with database_manager.get_monitored_db_session() as session:
                session.execute(text("select 1"))
                session.execute(text("select 2"))
            with database_manager.get_db_session() as session:  # not monitored
                session.execute(text("select 3"))
        return line

    logs = watching_logs(lambda record: False)
    seen = next(logs)
    try:
        line = await run(legacy_code)
    finally:
        logs.close()
    assert db.pool_stats().statement_time.count == 2
    [summary] = [m for m in seen.messages(logging.INFO) if m.startswith("monitored session")]
    assert summary.startswith(
        f"monitored session at {__file__}:{line} in legacy_code: 2 statements"
    )
    assert len([m for m in seen.messages(logging.DEBUG) if m.startswith("monitored")]) == 2
