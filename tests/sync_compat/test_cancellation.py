"""Legacy code run through ``run_legacy`` is one greenlet in one task: a cancellation stops
it at its next statement, rolls its work back and keeps the connection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import event, func, select

from atom_async_db import Database
from sync_compat import get_db_session, run_legacy
from tests.helpers import assert_no_leaks
from tests.models import User


def add_many_users(count: int) -> None:  # legacy code: one transaction, many statements
    with get_db_session() as db:
        for i in range(count):
            db.add(User(email=f"legacy-{i}@example.com"))
            db.flush()


async def test_a_cancelled_run_legacy_stops_at_the_next_statement(db: Database) -> None:
    engine = db.engine.sync_engine
    statements: list[str] = []
    pool_changes: list[str] = []
    task: asyncio.Task[None] | None = None

    def executed(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        statements.append(statement)
        if len(statements) == 5:
            assert task is not None
            asyncio.get_running_loop().call_soon(task.cancel)  # lands in statement 6

    def changed(*_: Any) -> None:
        pool_changes.append("discarded")

    event.listen(engine, "after_cursor_execute", executed)
    for name in ("close", "invalidate"):
        event.listen(engine.pool, name, changed)
    try:
        task = asyncio.create_task(run_legacy(add_many_users, 1000))
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        assert 5 <= len(statements) <= 7  # it stopped at the next statement boundary
        async with db.get_async_db_session() as session:
            assert await session.scalar(select(func.count(User.id))) == 0  # rolled back
        assert pool_changes == []  # and the connection was kept
    finally:
        event.remove(engine, "after_cursor_execute", executed)
        for name in ("close", "invalidate"):
            event.remove(engine.pool, name, changed)
    await assert_no_leaks(db)
