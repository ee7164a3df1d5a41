"""The pytest plugin, run as real pytest sessions (pytester, in subprocesses) on a small
application: isolation between tests, one transaction shared by a route, a service and
legacy code, application-level rollbacks, test order and loop scopes, on both backends."""

from __future__ import annotations

import pytest
from sqlalchemy import make_url

APP = """
from fastapi import Depends, FastAPI
from sqlalchemy import String, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from atom_async_db import get_async_db, get_async_db_session
from sync_compat import get_db_session


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "plugin_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)


app = FastAPI()


@app.post("/items", status_code=201)
async def create_item(name: str, db: AsyncSession = Depends(get_async_db)) -> dict:
    db.add(Item(name=name))
    await db.commit()
    return {"name": name}


@app.get("/items")
async def list_items(db: AsyncSession = Depends(get_async_db)) -> list:
    return list((await db.scalars(select(Item.name).order_by(Item.name))).all())


async def add_item(name: str) -> None:  # a service
    async with get_async_db_session() as db:
        db.add(Item(name=name))


def add_item_legacy(name: str) -> None:  # legacy code, seed style
    with get_db_session() as db:
        db.add(Item(name=name))


async def count_items(db) -> int:
    return int(await db.scalar(select(func.count(Item.id))))
"""

CONFTEST = """
import pytest
from app import Base


@pytest.fixture(scope="session")
def atom_db_metadata():
    return Base.metadata
"""

TESTS = """
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app import Item, add_item, add_item_legacy, app, count_items
from atom_async_db import get_async_db_session
from atom_async_db.testing import client
from sync_compat import get_db_session, run_legacy


async def test_a_commit_is_seen_in_its_test(async_db_session):
    async with get_async_db_session() as db:
        db.add(Item(name="committed"))
    assert await count_items(async_db_session) == 1


async def test_b_nothing_survives_the_previous_test(async_db_session):
    assert await count_items(async_db_session) == 0


async def test_route_service_and_legacy_share_the_transaction(async_db_session):
    async with client(app) as http:
        assert (await http.post("/items", params={"name": "route"})).status_code == 201
        await add_item("service")
        await run_legacy(add_item_legacy, "legacy")
        assert (await http.get("/items")).json() == ["legacy", "route", "service"]
    assert await count_items(async_db_session) == 3


async def test_an_application_rollback_keeps_the_test_isolated(async_db_session):
    await add_item("kept")
    with pytest.raises(IntegrityError):
        async with get_async_db_session() as db:
            db.add(Item(name="kept"))  # duplicate: this block alone rolls back
    await add_item("after")
    assert await count_items(async_db_session) == 2


def test_sync_legacy_code_in_a_thread_joins_db_session(db_session):
    import threading

    worker = threading.Thread(target=add_item_legacy, args=("thread",))
    worker.start()
    worker.join()
    with get_db_session() as db:
        db.add(Item(name="here"))
    assert db_session.scalar(select(func.count(Item.id))) == 2


def test_sync_nothing_survives_either(db_session):
    assert db_session.scalar(select(func.count(Item.id))) == 0
"""

ORDER = [
    "test_a_commit_is_seen_in_its_test",
    "test_b_nothing_survives_the_previous_test",
    "test_route_service_and_legacy_share_the_transaction",
    "test_an_application_rollback_keeps_the_test_isolated",
    "test_sync_legacy_code_in_a_thread_joins_db_session",
    "test_sync_nothing_survives_either",
]


@pytest.fixture(params=["sqlite_file", "postgres"])
def plugin_args(request: pytest.FixtureRequest, tmp_path: object) -> list[str]:
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        return ["--atom-db-url", url, "--atom-db-throwaway"]
    return []  # the plugin's default: a SQLite file in pytest's temporary directory


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(app=APP, test_app=TESTS)
    pytester.makeconftest(CONFTEST)
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "asyncio_default_test_loop_scope = function\nfilterwarnings = error\n"
    )
    return pytester


@pytest.mark.parametrize("order", ["forward", "reversed"])
def test_each_test_is_isolated_in_any_order(
    project: pytest.Pytester, plugin_args: list[str], order: str
) -> None:
    names = ORDER if order == "forward" else ORDER[::-1]
    result = project.runpytest_subprocess(*plugin_args, *(f"test_app.py::{n}" for n in names))
    result.assert_outcomes(passed=len(ORDER))


def test_module_loop_scope_works_too(project: pytest.Pytester, plugin_args: list[str]) -> None:
    project.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = module\n"
        "asyncio_default_test_loop_scope = module\nfilterwarnings = error\n"
    )
    result = project.runpytest_subprocess(*plugin_args)
    result.assert_outcomes(passed=len(ORDER))


def test_a_failing_assertion_on_leaked_data_is_reported(
    project: pytest.Pytester, plugin_args: list[str]
) -> None:
    # The isolation checks can fail: committing outside the test transaction (a session of
    # its own database) leaks into the next test, and the plugin's tests notice.
    project.makepyfile(
        test_leak="""
from sqlalchemy import text
from atom_async_db import Database
from app import count_items


async def test_a_writes_around_the_plugin(atom_database):
    other = Database(atom_database.settings.url)
    async with other.get_async_db_session() as db:
        await db.execute(text("insert into plugin_items (name) values ('leak')"))
    await other.dispose()


async def test_b_sees_it(async_db_session):
    assert await count_items(async_db_session) == 0
"""
    )
    result = project.runpytest_subprocess(*plugin_args, "test_leak.py")
    result.assert_outcomes(passed=1, failed=1)


def test_tests_without_a_session_fixture_still_use_the_test_database(
    project: pytest.Pytester, plugin_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    project.makepyfile(
        test_plain="""
from app import add_item


async def test_forgot_the_fixture():
    await add_item("no fixture")
"""
    )
    result = project.runpytest_subprocess(*plugin_args, "test_plain.py")
    result.assert_outcomes(passed=1)
    assert not (project.path / "atom.db").exists()  # never the embedded default


def test_an_apps_lifespan_in_one_test_leaves_the_next_its_database(
    project: pytest.Pytester, plugin_args: list[str]
) -> None:
    # The app's lifespan disposes the default database (the plugin's) as it ends, as an
    # app entered with `with TestClient(app):` does; every later test still needs it.
    project.makepyfile(
        test_lifespan="""
from atom_async_db.fastapi import lifespan
from app import add_item, app, count_items


async def test_a_the_app_starts_and_stops(async_db_session):
    async with lifespan(app):
        await add_item("during")
    assert await count_items(async_db_session) == 1


async def test_b_and_again(async_db_session):
    async with lifespan(app):
        await add_item("again")
    assert await count_items(async_db_session) == 1


def test_c_sync_too(db_session):
    from sqlalchemy import func, select
    from app import Item
    assert db_session.scalar(select(func.count(Item.id))) == 0
"""
    )
    result = project.runpytest_subprocess(*plugin_args, "test_lifespan.py")
    result.assert_outcomes(passed=3)


@pytest.mark.parametrize("throwaway", [[], ["--atom-db-throwaway"]])
def test_a_test_database_that_cannot_be_reached_is_explained_without_its_password(
    project: pytest.Pytester, postgres_url: str, throwaway: list[str]
) -> None:
    secret = "s3cr3tPW-sentinel"
    url = make_url(postgres_url).set(username="atom_no_such_role", password=secret)
    result = project.runpytest_subprocess(
        "--atom-db-url", url.render_as_string(hide_password=False), *throwaway
    )
    output = result.stdout.str() + result.stderr.str()
    assert "atom_async_db: cannot create" in output
    assert 'role "atom_no_such_role" does not exist' in output
    assert secret not in output
