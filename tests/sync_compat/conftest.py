"""Fixtures of the legacy-layer tests: where the legacy code runs, and seeding helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

import atom_async_db
from sync_compat import run_legacy
from tests.models import User

Runner = Callable[..., Coroutine[Any, Any, Any]]


@pytest.fixture(params=["thread", "run_legacy"])
def run(request: pytest.FixtureRequest) -> Iterator[Runner]:
    """``await run(fn, *args)``: legacy code in a worker thread (no event loop there, so the
    sync engine), or through ``run_legacy`` (the async engine's pool, never the sync one)."""
    if request.param == "thread":
        yield asyncio.to_thread
        assert atom_async_db.get_database()._sync_engine is not None
    else:
        yield run_legacy
        assert atom_async_db.get_database()._sync_engine is None


async def add_users(*emails: str, model: type[Any] = User, **fields: Any) -> list[Any]:
    """Insert users (of ``model``) through the async API; return their ids."""
    async with atom_async_db.get_async_db_session() as db:
        users = [model(email=email, **fields) for email in emails]
        db.add_all(users)
    return [user.id for user in users]
