"""Per-session options take effect on the session's own transaction and are gone for the
next user of the same connection (a pool of one makes it the same connection)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncSession

from atom_async_db import (
    ConfigurationError,
    Database,
    SessionNestingError,
    get_async_db_session,
    transaction_dependency,
)
from atom_async_db.testing import client
from tests.helpers import assert_no_leaks

MakeDefault = Callable[..., Awaitable[Database]]
ReadOnlyDB = Annotated[
    AsyncSession, Depends(transaction_dependency(read_only=True), scope="function")
]
POSTGRES = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


async def show(db: Database, setting: str) -> str:
    async with db.get_async_db_session() as session:
        return str(await session.scalar(text(f"show {setting}")))


@POSTGRES
async def test_each_option_applies_and_does_not_leak(make_default: MakeDefault) -> None:
    db = await make_default(pool_size=1, max_overflow=0)
    settings = ("transaction_isolation", "statement_timeout", "lock_timeout")
    defaults = {s: await show(db, s) for s in (*settings, "transaction_read_only")}
    async with db.get_async_db_session(
        isolation_level="serializable", lock_timeout=0.5, statement_timeout=2
    ) as session:
        assert await session.scalar(text("show transaction_isolation")) == "serializable"
        assert await session.scalar(text("show lock_timeout")) == "500ms"
        assert await session.scalar(text("show statement_timeout")) == "2s"
    with pytest.raises(exc.DBAPIError, match="read-only transaction"):
        async with db.get_async_db_session(read_only=True) as session:
            await session.execute(text("create temporary table nope (id int)"))
    with pytest.raises(exc.DBAPIError, match="statement timeout"):
        async with db.get_async_db_session(statement_timeout=0.1) as session:
            await session.execute(text("select pg_sleep(2)"))
    for setting, value in defaults.items():  # the same connection, back to its defaults
        assert await show(db, setting) == value, setting
    await assert_no_leaks(db)


@POSTGRES
async def test_a_joining_block_may_ask_only_for_options_its_transaction_has(db: Database) -> None:
    async with db.get_async_db_session() as outer:
        with pytest.raises(SessionNestingError, match="independent=True") as raised:
            async with db.get_async_db_session(read_only=True):
                pass
        assert "read_only=True" in str(raised.value) and "no options" in str(raised.value)
        async with db.get_async_db_session(independent=True, read_only=True) as own:
            assert await own.scalar(text("show transaction_read_only")) == "on"
        await outer.execute(text("select 1"))
    async with db.get_async_db_session(isolation_level="SERIALIZABLE", read_only=True) as outer:
        pid = await outer.scalar(text("select pg_backend_pid()"))
        for same in ({"isolation_level": "serializable"}, {"read_only": True}, {}):
            async with db.get_async_db_session(**same) as inner:  # joins: the same backend
                assert await inner.scalar(text("select pg_backend_pid()")) == pid
                assert await inner.scalar(text("show transaction_isolation")) == "serializable"
        with pytest.raises(SessionNestingError, match="lock_timeout=1"):
            async with db.get_async_db_session(read_only=True, lock_timeout=1):
                pass


@pytest.mark.parametrize("backend", ["sqlite_file", "sqlite_memory"], indirect=True)
async def test_serializable_joins_on_sqlite_where_every_transaction_is(db: Database) -> None:
    async with db.get_async_db_session() as outer:
        await outer.execute(text("create table joined (id int)"))
        async with db.get_async_db_session(isolation_level="SERIALIZABLE") as inner:
            await inner.execute(text("insert into joined values (1)"))
        # joined: the inner block's row is in the outer transaction, not committed yet
        assert outer.in_transaction()
        assert await outer.scalar(text("select count(*) from joined")) == 1
    async with db.get_async_db_session() as session:
        assert await session.scalar(text("select count(*) from joined")) == 1
        await session.execute(text("drop table joined"))


@POSTGRES
async def test_the_transaction_dependency_takes_options(db: Database) -> None:
    app = FastAPI()

    @app.get("/read-only")
    async def read_only(session: ReadOnlyDB) -> str:
        return str(await session.scalar(text("show transaction_read_only")))

    async with client(app) as http:
        assert (await http.get("/read-only")).json() == "on"
    await assert_no_leaks(db)


async def test_bad_or_unsupported_options_are_named(db: Database) -> None:
    with pytest.raises(ConfigurationError, match="isolation_level must be one of"):
        get_async_db_session(isolation_level="chaos")
    with pytest.raises(ConfigurationError, match="statement_timeout must be a number"):
        get_async_db_session(statement_timeout=-1)
    # wrong types too (found by a review: they raised AttributeError, TypeError, ...)
    with pytest.raises(ConfigurationError, match="isolation_level must be one of"):
        get_async_db_session(isolation_level=1)  # type: ignore[arg-type]
    for bad in ("5", float("inf"), float("nan"), True):
        with pytest.raises(ConfigurationError, match="statement_timeout must be a number"):
            get_async_db_session(statement_timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="read_only must be True or False"):
        get_async_db_session(read_only="false")  # type: ignore[arg-type]
    if db.settings.dialect == "sqlite":
        with pytest.raises(ConfigurationError, match="not available on SQLite"):
            get_async_db_session(read_only=True, lock_timeout=1)
        async with get_async_db_session(isolation_level="SERIALIZABLE") as session:
            assert await session.scalar(text("select 1")) == 1


@POSTGRES
async def test_a_timeout_below_a_millisecond_is_one_not_off(db: Database) -> None:
    # (lock_timeout: a statement_timeout of 1 ms could cancel the SHOW itself)
    async with db.get_async_db_session(lock_timeout=0.0004) as session:
        assert await session.scalar(text("show lock_timeout")) == "1ms"
