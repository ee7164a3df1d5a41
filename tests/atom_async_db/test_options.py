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
from tests.conftest import assert_no_leaks

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
async def test_options_on_a_block_that_would_join_are_refused(db: Database) -> None:
    async with db.get_async_db_session():
        with pytest.raises(SessionNestingError, match="independent=True"):
            async with db.get_async_db_session(read_only=True):
                pass
        async with db.get_async_db_session(independent=True, read_only=True) as own:
            assert await own.scalar(text("show transaction_read_only")) == "on"


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
    if db.settings.dialect == "sqlite":
        with pytest.raises(ConfigurationError, match="not available on SQLite"):
            get_async_db_session(read_only=True, lock_timeout=1)
        async with get_async_db_session(isolation_level="SERIALIZABLE") as session:
            assert await session.scalar(text("select 1")) == 1
