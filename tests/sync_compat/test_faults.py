"""Real faults under legacy sync code on the sync engine (threads, `def` routes, scripts)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import event, exc, text

import atom_async_db
from atom_async_db import CommitOutcomeUnknownError, Database, is_conflict
from sync_compat import get_db_session
from tests.atom_async_db.test_faults import terminate_our_backends
from tests.helpers import (
    assert_no_leaks,
    create_deferred_child_table,
    create_slow_commit_table,
)

POSTGRES = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


@POSTGRES
async def test_connection_lost_during_a_sync_commit_is_an_unknown_outcome(db: Database) -> None:
    await create_slow_commit_table(db, "sync_commit_probe", seconds=5)
    committing = threading.Event()

    def legacy_insert() -> None:
        with get_db_session() as session:
            session.execute(text("insert into sync_commit_probe values (1)"))
            event.listen(session, "before_commit", lambda _s: committing.set())

    inserting = asyncio.create_task(asyncio.to_thread(legacy_insert))
    # The deferred trigger holds COMMIT open for 5 s; the kill lands inside it.
    assert await asyncio.to_thread(committing.wait, 30)
    assert await terminate_our_backends(db.url) >= 1  # (the async pool's idle one too)
    with pytest.raises(CommitOutcomeUnknownError) as raised:
        await inserting
    assert isinstance(raised.value, exc.OperationalError)  # existing handlers still catch it
    assert any("may or may not have been committed" in n for n in raised.value.__notes__)
    assert not is_conflict(raised.value)  # generic retry code leaves it alone

    def count() -> int:
        with get_db_session() as session:  # the sync pool recovered
            return int(session.scalar(text("select count(*) from sync_commit_probe")) or 0)

    assert await asyncio.to_thread(count) == 0
    async with atom_async_db.get_async_db_session() as session:
        await session.execute(text("drop table sync_commit_probe"))
    await assert_no_leaks(db)


@POSTGRES
async def test_a_sync_commit_the_server_refuses_is_not_unknown(db: Database) -> None:
    child = await create_deferred_child_table(db, "sync")

    def legacy_insert() -> None:
        with get_db_session() as session:
            session.execute(text(f"insert into {child} values (42)"))

    with pytest.raises(exc.IntegrityError) as raised:
        await asyncio.to_thread(legacy_insert)
    assert not isinstance(raised.value, CommitOutcomeUnknownError)
    async with db.engine.begin() as connection:
        await connection.execute(text("drop table sync_child, sync_parent"))
    await assert_no_leaks(db)
