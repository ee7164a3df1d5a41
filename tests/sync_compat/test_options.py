"""The sync side at par: per-session options and ``commit=False`` on ``get_db_session()``,
in worker threads (the sync engine) and under ``run_legacy`` (the async pool)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import exc, select, text

from atom_async_db import (
    ConfigurationError,
    Database,
    SessionNestingError,
    UncommittedChangesWarning,
)
from sync_compat import get_db_session
from tests.helpers import assert_no_leaks
from tests.models import User
from tests.sync_compat.conftest import Runner, add_users

POSTGRES = pytest.mark.parametrize("backend", ["postgres"], indirect=True)
SETTINGS = ("transaction_isolation", "transaction_read_only", "statement_timeout", "lock_timeout")


def show_all() -> dict[str, str]:
    with get_db_session() as session:
        return {name: str(session.scalar(text(f"show {name}"))) for name in SETTINGS}


def use_each_option() -> dict[str, str]:
    with get_db_session(
        isolation_level="serializable", lock_timeout=0.5, statement_timeout=2
    ) as session:
        assert session.scalar(text("show transaction_isolation")) == "serializable"
        assert session.scalar(text("show lock_timeout")) == "500ms"
        assert session.scalar(text("show statement_timeout")) == "2s"
    with (
        pytest.raises(exc.DBAPIError, match="read-only transaction"),
        get_db_session(read_only=True) as session,
    ):
        session.execute(text("create temporary table nope (id int)"))
    with (
        pytest.raises(exc.DBAPIError, match="statement timeout"),
        get_db_session(statement_timeout=0.1) as session,
    ):
        session.execute(text("select pg_sleep(2)"))
    return show_all()


@POSTGRES
async def test_each_option_applies_and_does_not_leak(
    make_default: Callable[..., Awaitable[Database]], run: Runner
) -> None:
    db = await make_default(pool_size=1, max_overflow=0, sync_pool_size=1, sync_max_overflow=0)
    defaults = await run(show_all)
    assert await run(use_each_option) == defaults  # the same connection, back to its defaults
    await assert_no_leaks(db)


def join_with_options() -> None:
    with get_db_session() as outer:
        with (
            pytest.raises(SessionNestingError, match="independent=True"),
            get_db_session(read_only=True),
        ):
            pass
        with get_db_session(independent=True, read_only=True) as own:
            assert own.scalar(text("show transaction_read_only")) == "on"
        outer.execute(text("select 1"))
    with get_db_session(isolation_level="SERIALIZABLE") as outer:
        pid = outer.scalar(text("select pg_backend_pid()"))
        with get_db_session(isolation_level="serializable") as inner:  # joins
            assert inner.scalar(text("select pg_backend_pid()")) == pid


@POSTGRES
async def test_a_joining_block_may_ask_only_for_options_its_transaction_has(
    db: Database, run: Runner
) -> None:
    await run(join_with_options)
    await assert_no_leaks(db)


async def test_bad_or_unsupported_options_are_named(db: Database) -> None:
    with pytest.raises(ConfigurationError, match="isolation_level must be one of"):
        get_db_session(isolation_level="chaos")
    if db.settings.dialect == "sqlite":
        with pytest.raises(ConfigurationError, match="not available on SQLite"):
            get_db_session(read_only=True)


def commit_yourself() -> None:
    with get_db_session(commit=False) as session:
        session.add(User(email="kept@example.com"))
        session.commit()
        session.add(User(email="kept@example.com"))
        with pytest.raises(exc.IntegrityError):
            session.commit()
        session.rollback()  # and the block ends normally: nothing left to fail at the end
    with pytest.warns(UncommittedChangesWarning), get_db_session(commit=False) as session:
        session.add(User(email="dropped@example.com"))


async def test_commit_false_leaves_committing_to_the_caller(db: Database, run: Runner) -> None:
    await add_users("first@example.com")
    await run(commit_yourself)
    async with db.get_async_db_session() as session:
        emails = (await session.scalars(select(User.email).order_by(User.email))).all()
    assert emails == ["first@example.com", "kept@example.com"]
    await assert_no_leaks(db)


def write_lock_is_free(path: str) -> bool:
    """Whether another connection could take SQLite's write lock right now."""
    probe = sqlite3.connect(path, timeout=0)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.rollback()
        return True
    except sqlite3.OperationalError as error:
        if "locked" not in str(error):
            raise
        return False
    finally:
        probe.close()


def lock_after_a_read(path: str) -> list[bool]:
    seen = []
    with get_db_session() as session:  # the seed's semantics: a read takes no lock
        session.execute(text("select count(*) from atom_t_users"))
        seen.append(write_lock_is_free(path))
    with get_db_session(isolation_level="SERIALIZABLE") as session:
        session.execute(text("select count(*) from atom_t_users"))
        seen.append(write_lock_is_free(path))  # what it read cannot change before it writes
    seen.append(write_lock_is_free(path))
    return seen


@pytest.mark.parametrize("backend", ["sqlite_file"], indirect=True)
async def test_serializable_on_sqlite_locks_at_the_first_read(db: Database) -> None:
    path = str(db.settings.url.database)
    assert await asyncio.to_thread(lock_after_a_read, path) == [True, False, True]
