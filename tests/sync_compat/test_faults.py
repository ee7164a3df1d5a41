"""Real faults under legacy sync code on the sync engine (threads, `def` routes, scripts)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sqlalchemy import event, exc, make_url, text

import atom_async_db
from atom_async_db import (
    CommitOutcomeUnknownError,
    Database,
    DatabaseUnavailableError,
    is_conflict,
)
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


async def connect_in_a_thread(postgres_url: str, **url_changes: Any) -> None:
    """Run a statement in a legacy session in a worker thread (the sync engine connects),
    on the suite's server with ``url_changes``."""
    database = Database(make_url(postgres_url).set(**url_changes), pool_timeout=2)

    def connect() -> None:
        with get_db_session(database=database) as session:
            session.execute(text("select 1"))

    try:
        await asyncio.to_thread(connect)
    finally:
        database.dispose_sync_engine()


async def test_an_unreachable_server_is_a_database_unavailable_error(postgres_url: str) -> None:
    secret = "s3cr3t-Sentinel"
    with pytest.raises(DatabaseUnavailableError) as raised:
        await connect_in_a_thread(postgres_url, port=1, password=secret)
    message = str(raised.value)
    assert "127.0.0.1:1" in message and "check that it is running" in message
    assert "Connection refused" in message
    assert secret not in message + repr(raised.value.__cause__)


async def test_a_server_that_answers_no_is_not_unavailable(postgres_url: str) -> None:
    with pytest.raises(exc.OperationalError, match="does not exist") as raised:
        await connect_in_a_thread(postgres_url, database="atom_no_such_database")
    assert not isinstance(raised.value, DatabaseUnavailableError)


async def test_a_refused_login_is_explained(postgres_url: str) -> None:
    with pytest.raises(exc.OperationalError, match="atom_no_such_role") as raised:
        await connect_in_a_thread(postgres_url, username="atom_no_such_role")
    assert any("refused the login" in note for note in raised.value.__notes__)
