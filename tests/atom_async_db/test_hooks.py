"""After-commit hooks (Django's ``on_commit`` semantics) and ``savepoint()``, on every
backend: run after the real COMMIT, in order; dropped by rollbacks and failed blocks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from atom_async_db import Database, on_commit, savepoint
from atom_async_db.testing import rollback_transaction
from sync_compat import get_db_session, run_legacy
from tests.helpers import assert_no_leaks
from tests.models import User


async def committed_emails(db: Database) -> set[str]:
    async with db.get_async_db_session(independent=True) as session:
        return set((await session.scalars(select(User.email))).all())


async def test_hooks_run_after_the_commit_in_order(db: Database) -> None:
    seen: list[tuple[str, set[str]]] = []

    async def async_hook() -> None:
        seen.append(("async", await committed_emails(db)))  # the row is already there

    async with db.get_async_db_session() as session:
        session.add(User(email="ada@example.com"))
        on_commit(session, lambda: seen.append(("sync", set())))
        on_commit(session, async_hook)
        assert seen == []  # not before the commit
    assert seen == [("sync", set()), ("async", {"ada@example.com"})]
    await assert_no_leaks(db)


async def test_a_rollback_drops_the_hooks(db: Database) -> None:
    ran: list[str] = []
    with pytest.raises(RuntimeError):
        async with db.get_async_db_session() as session:
            session.add(User(email="x@example.com"))
            on_commit(session, lambda: ran.append("never"))
            raise RuntimeError("fail")
    async with db.get_async_db_session() as session:  # the next session starts clean
        on_commit(session, lambda: ran.append("next"))
    assert ran == ["next"]


async def test_a_failed_savepoint_drops_only_its_hooks_and_rows(db: Database) -> None:
    ran: list[str] = []
    async with db.get_async_db_session() as session:
        session.add(User(email="kept@example.com"))
        on_commit(session, lambda: ran.append("outer"))
        with pytest.raises(IntegrityError):
            async with savepoint(session):
                on_commit(session, lambda: ran.append("inner"))
                session.add(User(email="kept@example.com"))  # duplicate
                await session.flush()
        async with savepoint(session):
            on_commit(session, lambda: ran.append("second"))
            session.add(User(email="second@example.com"))
    assert ran == ["outer", "second"]
    assert await committed_emails(db) == {"kept@example.com", "second@example.com"}


async def test_nested_blocks_hand_their_hooks_to_the_outermost_commit(db: Database) -> None:
    ran: list[str] = []
    async with db.get_async_db_session() as outer:
        async with db.get_async_db_session() as inner:  # joins the outer transaction
            on_commit(inner, lambda: ran.append("inner ok"))
        with pytest.raises(ValueError):
            async with db.get_async_db_session() as failing:
                on_commit(failing, lambda: ran.append("inner failed"))
                raise ValueError
        await run_legacy(legacy_with_hook, ran)
        assert ran == []  # nothing is committed yet
        outer.add(User(email="o@example.com"))
    assert ran == ["inner ok", "legacy"]


def legacy_with_hook(ran: list[str]) -> None:
    with get_db_session() as db:
        on_commit(db, lambda: ran.append("legacy"))


async def test_an_explicit_commit_in_a_route_session_runs_them(db: Database) -> None:
    ran: list[str] = []
    generator: AsyncIterator[Any] = db.get_async_db()
    session = await anext(generator)
    session.add(User(email="r@example.com"))
    on_commit(session, lambda: ran.append("route"))
    await session.commit()
    assert ran == ["route"]
    await generator.aclose()


async def test_a_failing_hook_is_logged_and_the_others_run(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise ValueError("mail server down")

    async with db.get_async_db_session() as session:
        session.add(User(email="f@example.com"))
        on_commit(session, broken)
        on_commit(session, lambda: ran.append("after"))
    assert ran == ["after"]
    assert "f@example.com" in await committed_emails(db)  # the commit stands
    failures = [r for r in caplog.records if "after-commit callback failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR
    caplog.clear()  # expected: the leak checker fails on unexpected errors


def test_sync_sessions_run_sync_hooks_and_refuse_async_ones(tmp_path: Any) -> None:
    database = Database(f"sqlite:///{tmp_path / 'sync.db'}")
    ran: list[str] = []

    async def not_allowed() -> None: ...

    from sync_compat import SessionLocal

    with SessionLocal(database=database) as db:
        with pytest.raises(TypeError, match="AsyncSession"):
            on_commit(db, not_allowed)
        db.execute(select(1))
        on_commit(db, lambda: ran.append("sync"))
        db.commit()
    assert ran == ["sync"]
    database.dispose_sync_engine()


async def test_inside_a_test_transaction_they_run_at_the_logical_commit(db: Database) -> None:
    ran: list[str] = []
    async with rollback_transaction(db) as test_session:
        async with db.get_async_db_session() as session:
            session.add(User(email="t@example.com"))
            on_commit(session, lambda: ran.append("logical commit"))
        assert ran == ["logical commit"]
        assert await test_session.scalar(select(func.count(User.id))) == 1
    assert await committed_emails(db) == set()  # and nothing was really saved
