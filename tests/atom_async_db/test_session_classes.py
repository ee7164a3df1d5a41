"""The application's own session classes (SQLModel's, or its own subclasses) at every entry
point, composed with the library's behaviour rather than replacing it."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlmodel import Session as SQLModelSession
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession

import sync_compat
from atom_async_db import (
    AsyncSessionFactory,
    ConcurrentSessionUseError,
    ConfigurationError,
    Database,
    get_async_db_session,
    run_each,
)
from atom_async_db.fastapi import AsyncDB, AsyncTransaction
from atom_async_db.testing import client
from sync_compat import SessionLocal, get_db, get_db_session, run_legacy
from tests.models import User

MakeDefault = Callable[..., Awaitable[Database]]
EXAMPLE = Path(__file__).parents[2] / "examples" / "sqlmodel_app"


@pytest.fixture
async def sqlmodel_db(make_default: MakeDefault) -> Database:
    """The default database with SQLModel's session classes: the one line of the README."""
    return await make_default(async_session_class=SQLModelAsyncSession)


async def add_users(*emails: str) -> None:
    async with get_async_db_session() as db:
        db.add_all(User(email=email) for email in emails)


# --------------------------------------------------------------------------- SQLModel


@pytest.mark.parametrize("backend_args", ["sqlite_file", "postgres"])
def test_the_sqlmodel_example_passes_its_tests(
    pytester: pytest.Pytester, request: pytest.FixtureRequest, backend_args: str
) -> None:
    for name in ("app.py", "conftest.py", "test_app.py"):
        shutil.copy(EXAMPLE / name, pytester.path / name)
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "asyncio_default_test_loop_scope = function\nfilterwarnings = error\n"
    )
    args = []
    if backend_args == "postgres":
        args = ["--atom-db-url", request.getfixturevalue("postgres_url"), "--atom-db-throwaway"]
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=6)


async def test_every_async_entry_point_hands_out_sqlmodel_sessions(sqlmodel_db: Database) -> None:
    await add_users("ada@example.com")
    query = select(User.email)
    async with get_async_db_session() as db:
        assert isinstance(db, SQLModelAsyncSession)
        assert (await db.exec(query)).all() == ["ada@example.com"]
        async with get_async_db_session() as nested:  # joins: a session of the same class
            assert isinstance(nested, SQLModelAsyncSession)
            nested.add(User(email="bob@example.com"))
        assert sorted((await db.exec(query)).all()) == ["ada@example.com", "bob@example.com"]

    async def count(db: AsyncSession, item: int) -> int:
        assert isinstance(db, SQLModelAsyncSession)
        return len((await db.exec(query)).all()) + item

    assert [outcome.result for outcome in await run_each([0, 10], count)] == [2, 12]

    factory = AsyncSessionFactory()
    async with factory() as db:
        assert isinstance(db, SQLModelAsyncSession)
        assert len((await db.exec(query)).all()) == 2
    async with factory.begin() as db:
        assert isinstance(db, SQLModelAsyncSession)
        db.add(User(email="cy@example.com"))
    async with sqlmodel_db.get_async_db_session() as db:
        assert len((await db.exec(query)).all()) == 3


async def test_fastapi_dependencies_hand_out_sqlmodel_sessions(sqlmodel_db: Database) -> None:
    app = FastAPI()

    @app.post("/users")
    async def create(email: str, db: AsyncTransaction) -> None:
        assert isinstance(db, SQLModelAsyncSession)
        db.add(User(email=email))

    @app.get("/users")
    async def read(db: AsyncDB) -> list[str]:
        assert isinstance(db, SQLModelAsyncSession)
        return list((await db.exec(select(User.email))).all())

    async with client(app) as http:
        assert (await http.post("/users", params={"email": "ada@example.com"})).status_code == 200
        assert (await http.get("/users")).json() == ["ada@example.com"]


async def test_the_legacy_api_hands_out_sqlmodel_sessions(sqlmodel_db: Database) -> None:
    await add_users("ada@example.com")
    query = select(User.email)

    def in_legacy_code() -> list[str]:
        with get_db_session() as db:
            assert isinstance(db, SQLModelSession)
            return list(db.exec(query).all())

    assert await run_legacy(in_legacy_code) == ["ada@example.com"]  # bridged, on the loop

    def in_a_thread() -> list[Any]:
        seen = []
        with get_db_session() as db:
            seen.append(db)
            seen.extend(db.exec(query).all())
        dependency = get_db()
        seen.append(next(dependency))
        dependency.close()
        with SessionLocal() as db:
            seen.append(db)
            seen.extend(db.exec(query).all())
        return seen

    first, email, from_get_db, from_factory, again = await anyio.to_thread.run_sync(in_a_thread)
    assert [email, again] == ["ada@example.com"] * 2
    for session in (first, from_get_db, from_factory):
        assert isinstance(session, SQLModelSession)
        assert isinstance(session, sync_compat.LegacySession)  # the legacy routing is kept


# On SQLite a read runs on the loop's thread and ends before another task can start one, so
# two tasks reading at once do not collide there; with every statement sent to the
# connection's thread, they overlap as they do on PostgreSQL.
OVERLAPPING = {"sqlite_loop_limit": 0}


async def test_the_single_task_check_covers_sqlmodels_exec(make_default: MakeDefault) -> None:
    await make_default(async_session_class=SQLModelAsyncSession, **OVERLAPPING)
    query = select(User).where(User.id > 0)
    with pytest.raises(ConcurrentSessionUseError, match="one session per task"):
        async with get_async_db_session() as db:
            await asyncio.gather(db.exec(query), db.exec(query))


# --------------------------------------------------------------------------- own classes


class CountingAsyncSession(AsyncSession):
    """An application's own class: overrides a method and adds one."""

    gets = 0

    async def get(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        CountingAsyncSession.gets += 1
        return await super().get(*args, **kwargs)

    async def emails(self) -> list[str]:
        return list((await self.scalars(sa_select(User.email))).all())


async def test_an_own_class_keeps_its_overrides_and_gains_the_checks(
    make_default: MakeDefault,
) -> None:
    await make_default(async_session_class=CountingAsyncSession, **OVERLAPPING)
    await add_users("ada@example.com")
    CountingAsyncSession.gets = 0
    async with get_async_db_session() as db:
        assert isinstance(db, CountingAsyncSession)
        assert await db.get(User, 1) is not None
        assert CountingAsyncSession.gets == 1
        assert await db.emails() == ["ada@example.com"]
    with pytest.raises(ConcurrentSessionUseError):
        async with get_async_db_session() as db:
            await asyncio.gather(db.emails(), db.emails())


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"session_class": int}, "session_class must be a subclass of sqlalchemy.orm"),
        (
            {"async_session_class": SQLModelSession},
            "async_session_class must be a subclass of sqlalchemy.ext.asyncio",
        ),
        ({"session_class": "sqlmodel.Session"}, "import path as 'package.module:Name'"),
        ({"session_class": "no_such_module:Session"}, "cannot import 'no_such_module'"),
        ({"session_class": "sqlmodel:NoSuchName"}, "'sqlmodel' has no 'NoSuchName'"),
        (
            {
                "session_class": type("Mine", (Session,), {}),
                "async_session_class": SQLModelAsyncSession,
            },
            "must be a subclass of sqlmodel.orm.session.Session",
        ),
    ],
)
def test_a_wrong_session_class_is_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Database("sqlite://", **options)


def test_one_class_implies_the_other_and_import_paths_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Database("sqlite://", session_class="sqlmodel:Session").settings
    assert (settings.session_class, settings.async_session_class) == (SQLModelSession, AsyncSession)
    monkeypatch.setenv("ATOM_DB_ASYNC_SESSION_CLASS", "sqlmodel.ext.asyncio.session:AsyncSession")
    settings = Database("sqlite://").settings
    assert settings.async_session_class is SQLModelAsyncSession
    assert settings.session_class is SQLModelSession  # its sync_session_class


async def test_session_local_configure_takes_a_class(db: Database) -> None:
    with pytest.raises(ConfigurationError, match=r"takes a subclass of sqlalchemy\.orm\.Session"):
        SessionLocal.configure(class_=int)

    def in_a_thread() -> list[Session]:
        with SessionLocal() as plain:
            pass
        SessionLocal.configure(class_=SQLModelSession)
        try:
            with SessionLocal() as session:
                assert session.exec(select(User)).all() == []
        finally:
            SessionLocal.configure(class_=None)
        return [plain, session]

    plain, session = await anyio.to_thread.run_sync(in_a_thread)
    assert not isinstance(plain, SQLModelSession)
    assert isinstance(session, SQLModelSession)
    assert isinstance(session, sync_compat.LegacySession)


async def test_session_local_configure_holds_wherever_legacy_code_runs(db: Database) -> None:
    def legacy() -> tuple[bool, bool]:
        with get_db_session() as session:
            return session.autoflush, hasattr(session, "exec")

    SessionLocal.configure(class_=SQLModelSession, autoflush=False)
    try:
        in_thread = await anyio.to_thread.run_sync(legacy)
        bridged = await run_legacy(legacy)
    finally:
        SessionLocal.configure(class_=None, autoflush=True)
    assert in_thread == bridged == (False, True)
    assert await run_legacy(legacy) == (True, False)
