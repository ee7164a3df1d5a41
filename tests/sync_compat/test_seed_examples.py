"""Every code example of the seed guide, unchanged but for its import line, on every
backend, run from worker threads (sync engine) and through ``run_legacy`` (async pool)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm.exc import DetachedInstanceError

import atom_async_db
from atom_async_db import Database, SyncSessionOnEventLoopError, SyncSessionOnEventLoopWarning
from tests.helpers import run_python
from tests.sync_compat import conftest
from tests.sync_compat import seed_examples as seed
from tests.sync_compat.conftest import Runner
from tests.sync_compat.core.models import Post, User

MISSING = "no-such-user"


async def add_users(*emails: str, **fields: Any) -> list[str]:
    return await conftest.add_users(*emails, model=User, **fields)


async def fetch_user(user_id: str) -> User:
    async with atom_async_db.get_async_db_session() as db:
        user = await db.get(User, user_id)
    assert user is not None
    return user


async def seed_emails() -> set[str]:
    async with atom_async_db.get_async_db_session() as db:
        return set((await db.execute(select(User.email))).scalars())


async def test_user_service_create_get_update(db: Database, run: Runner) -> None:
    service = seed.UserService()
    created = await run(service.create_user, "ada@example.com", "Ada")
    assert created.id is not None
    assert created.first_name == "Ada"  # readable after the session closed

    fetched = await run(service.get_user, created.id)
    assert (fetched.id, fetched.email) == (created.id, "ada@example.com")
    assert await run(service.get_user, MISSING) is None

    assert await run(service.update_user, created.id, "Grace") is True
    assert (await fetch_user(created.id)).first_name == "Grace"
    assert await run(service.update_user, MISSING, "Nobody") is False


async def test_create_user_rolls_back_on_error(db: Database, run: Runner) -> None:
    service = seed.UserService()
    await run(service.create_user, "taken@example.com", "First")
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await run(service.create_user, "taken@example.com", "Second")
    assert await seed_emails() == {"taken@example.com"}


async def test_background_task_runs_on_the_loop_with_a_warning(db: Database) -> None:
    # The seed's background task is `async def` around sync database code: awaited, it
    # runs on the loop's thread, which it blocks, so it works and warns.
    [user_id] = await add_users("bg@example.com")
    with pytest.warns(SyncSessionOnEventLoopWarning, match="run_legacy") as caught:
        await seed.process_user_data_async(user_id)
    assert {warning.filename for warning in caught} == {seed.__file__}
    assert (await fetch_user(user_id)).processed is True

    with pytest.warns(SyncSessionOnEventLoopWarning):
        await seed.process_user_data_async(MISSING)  # logs "not found", returns


async def test_background_task_is_an_error_in_strict_mode(make_default: object) -> None:
    await make_default(sync_on_event_loop="error")  # type: ignore[operator]
    [user_id] = await add_users("strict@example.com")
    with pytest.raises(SyncSessionOnEventLoopError, match="run_legacy"):
        await seed.process_user_data_async(user_id)
    assert (await fetch_user(user_id)).processed is False


async def test_migration_script(
    db: Database, run: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    legacy = await add_users("l1@example.com", "l2@example.com", "l3@example.com", status="legacy")
    [current] = await add_users("now@example.com")
    await run(seed.migrate_users)
    assert capsys.readouterr().out == "Migrated 3 users\n"
    for user_id in legacy:
        user = await fetch_user(user_id)
        assert (user.status, user.version) == ("active", 2)
    assert (await fetch_user(current)).version == 1


@pytest.mark.parametrize("backend", ["sqlite_file", "postgres"], indirect=True)
async def test_migration_script_as_a_program(db: Database, backend_url: str) -> None:
    # A fresh interpreter with only DATABASE_URL, as the seed's scripts run: no warning, no
    # ResourceWarning for an unclosed connection at exit (-X dev -W error).
    [user_id] = await add_users("old@example.com", status="legacy")
    code = (
        "from tests.sync_compat.seed_examples import migrate_users\n"
        "if __name__ == '__main__':\n"
        "    migrate_users()\n"
    )
    output = run_python(code, env={"DATABASE_URL": backend_url})
    assert output == "Migrated 1 users\n"
    assert (await fetch_user(user_id)).status == "active"


async def test_anti_pattern_fixes(db: Database, run: Runner) -> None:
    [user_id] = await add_users("one@example.com")
    await run(seed.process_user, user_id)  # `user.name` is not a column: nothing to save
    await run(seed.keep_transactions_short)
    user = await run(seed.get_user, user_id)
    assert (user.id, user.email) == (user_id, "one@example.com")


async def test_exceptions_roll_back(db: Database, run: Runner) -> None:
    [user_id] = await add_users("u@example.com")
    await run(seed.update_user, user_id, {"first_name": "Updated", "data_count": 5})
    user = await fetch_user(user_id)
    assert (user.first_name, user.data_count) == ("Updated", 5)

    with pytest.raises(ValueError, match=f"User {MISSING} not found"):
        await run(seed.update_user, MISSING, {"first_name": "Ghost"})


async def test_transfer_data_is_one_transaction(db: Database, run: Runner) -> None:
    source, target = await add_users("from@example.com", "to@example.com", data_count=3)
    await run(seed.transfer_data, source, target)
    assert (await fetch_user(source)).data_count == 2
    assert (await fetch_user(target)).data_count == 4
    with pytest.raises(AttributeError):  # target missing: nothing of the transfer is saved
        await run(seed.transfer_data, source, MISSING)
    assert (await fetch_user(source)).data_count == 2


async def test_eager_loading_survives_the_session(db: Database, run: Runner) -> None:
    async with atom_async_db.get_async_db_session() as session:
        session.add(User(email="author@example.com", posts=[Post(title="a"), Post(title="b")]))
    [user] = await run(seed.eager_load_relationships)
    assert sorted(post.title for post in user.posts) == ["a", "b"]


async def test_performance_tips(db: Database, run: Runner) -> None:
    await run(seed.batch_operations, [{"email": f"bulk{i}@example.com"} for i in range(100)])
    rows = await run(seed.select_only_needed_columns)
    assert len(rows) == 100
    assert {tuple(row._fields) for row in rows} == {("id", "email")}
    found = await run(seed.use_indexes, "bulk7@example.com")
    assert found.email == "bulk7@example.com"
    async with atom_async_db.get_async_db_session() as session:
        assert await session.scalar(select(func.count(User.id))) == 100


async def test_troubleshooting_cases(db: Database, run: Runner) -> None:
    async with atom_async_db.get_async_db_session() as session:
        session.add(User(email="t@example.com", posts=[Post(title="p")]))
    assert await run(seed.get_user_email, "any") == "t@example.com"
    # The guide's "Session is closed" BAD version works here: expire_on_commit=False keeps
    # loaded columns readable after the block.
    assert await run(seed.get_user_email_bad, "any") == "t@example.com"
    # What stays an error is a lazy relationship read after the block (eager-load it).
    with pytest.raises(DetachedInstanceError):
        await run(seed.posts_after_close_bad)
