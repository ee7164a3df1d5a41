"""A second database everywhere: an application with a primary and a reporting database
reaches the reporting one through every entry point, and nesting stays per database."""

from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from atom_async_db import AsyncSessionFactory, Database, run_each
from atom_async_db.testing import client, rollback_transaction
from sync_compat import get_db_for, get_db_session, run_legacy
from tests.helpers import assert_no_leaks


@pytest.fixture
async def reporting(db: Database, tmp_path: Any) -> AsyncIterator[Database]:
    """The reporting database: another SQLite file, or another pool on the PostgreSQL one."""
    url = f"sqlite:///{tmp_path / 'reporting.db'}" if db.settings.dialect == "sqlite" else None
    database = Database(url or db.settings.url)
    async with database.engine.begin() as connection:
        await connection.execute(text("drop table if exists reports"))
        await connection.execute(text("create table reports (name varchar(50))"))
    yield database
    await assert_no_leaks(database)
    async with database.engine.begin() as connection:
        await connection.execute(text("drop table reports"))
    await database.dispose()


def engine_of(session: Session) -> Engine:
    bind = session.get_bind()
    return bind.engine if isinstance(bind, Connection) else bind


async def test_async_entry_points(db: Database, reporting: Database) -> None:
    async with reporting.get_async_db_session() as session:
        assert session.bind is reporting.engine
    async with AsyncSessionFactory(reporting)() as session:
        assert session.bind is reporting.engine
    async with AsyncSessionFactory(reporting).begin() as session:
        assert session.bind is reporting.engine

    async def bind_of(session: AsyncSession, item: int) -> object:
        return session.bind

    assert {o.result for o in await run_each([1, 2], bind_of, database=reporting)} == {
        reporting.engine
    }


async def test_nesting_is_per_database(db: Database, reporting: Database) -> None:
    async with db.get_async_db_session() as primary:
        await primary.execute(text("select 1"))
        async with reporting.get_async_db_session() as report:  # not joined: its own engine
            assert report.bind is reporting.engine
            async with reporting.get_async_db_session() as inner:  # joins the reporting one
                assert inner.bind is await report.connection()
                await inner.execute(text("insert into reports values ('nested')"))
        async with db.get_async_db_session() as inner:  # and the primary's joins primary's
            assert inner.bind is await primary.connection()
    async with reporting.get_async_db_session() as session:
        assert (await session.scalars(text("select name from reports"))).all() == ["nested"]


async def test_fastapi_dependencies(db: Database, reporting: Database) -> None:
    ReportDB = Annotated[AsyncSession, Depends(reporting.get_async_db)]
    ReportTransaction = Annotated[
        AsyncSession, Depends(reporting.get_async_db_transaction, scope="function")
    ]
    SerializableReport = Annotated[
        AsyncSession,
        Depends(reporting.transaction_dependency(isolation_level="SERIALIZABLE"), scope="function"),
    ]
    app = FastAPI()

    @app.post("/reports/{name}")
    async def add(name: str, session: ReportTransaction) -> None:
        assert session.bind is reporting.engine
        await session.execute(text("insert into reports values (:n)"), {"n": name})

    @app.post("/serializable/{name}")
    async def add_serializable(name: str, session: SerializableReport) -> None:
        assert session.bind is reporting.engine
        await session.execute(text("insert into reports values (:n)"), {"n": name})

    @app.get("/reports")
    async def read(session: ReportDB) -> list[str]:
        assert session.bind is reporting.engine
        return list((await session.scalars(text("select name from reports order by 1"))).all())

    async with client(app) as http:
        assert (await http.post("/reports/a")).status_code == 200
        assert (await http.post("/serializable/b")).status_code == 200
        assert (await http.get("/reports")).json() == ["a", "b"]


async def test_the_legacy_api(db: Database, reporting: Database) -> None:
    def legacy_report(name: str) -> Engine:
        with get_db_session(database=reporting) as session:
            session.execute(text("insert into reports values (:n)"), {"n": name})
            return engine_of(session)

    assert await anyio.to_thread.run_sync(legacy_report, "thread") is reporting.sync_engine
    assert await run_legacy(legacy_report, "bridged") is reporting.engine.sync_engine

    app = FastAPI()

    @app.get("/reports")
    def read(session: Annotated[Session, Depends(get_db_for(reporting))]) -> list[str]:
        assert engine_of(session) is reporting.sync_engine
        return list(session.scalars(text("select name from reports order by 1")).all())

    def call() -> Any:
        with TestClient(app) as http:
            return http.get("/reports").json()

    assert await anyio.to_thread.run_sync(call) == ["bridged", "thread"]


async def test_both_databases_in_rolled_back_test_transactions(
    db: Database, reporting: Database
) -> None:
    async with rollback_transaction(db) as primary, rollback_transaction(reporting) as report:
        async with reporting.get_async_db_session() as session:  # joins the reporting test's
            await session.execute(text("insert into reports values ('in the test')"))
        assert (await report.scalars(text("select name from reports"))).all() == ["in the test"]
        await primary.execute(text("select 1"))
    async with reporting.get_async_db_session() as session:
        assert (await session.scalars(text("select name from reports"))).all() == []
