"""Real server faults on a throwaway cluster: restarts (also under load), a stopped or
unreachable server, a wrong password."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import Counter

import pytest
from sqlalchemy import exc, make_url, text
from sqlalchemy.exc import DBAPIError, OperationalError

from atom_async_db import CommitOutcomeUnknownError, Database, DatabaseUnavailableError
from atom_async_db._classify import CONNECTION_LOST_NOTE
from tests.fixtures.cluster import ThrowawayCluster
from tests.helpers import APP_NAME

SENTINEL = "Sentinel-Pw-8c1e"


async def backend_pid(database: Database) -> int:
    async with database.get_async_db_session() as session:
        return int((await session.execute(text("select pg_backend_pid()"))).scalar_one())


async def test_pool_recovers_after_a_server_restart(pg_cluster: ThrowawayCluster) -> None:
    database = Database(pg_cluster.url, application_name=APP_NAME, pool_size=2)
    before = await backend_pid(database)
    pg_cluster.pg_ctl("restart")
    # pool_pre_ping (on by default) finds the dead pooled connection and reconnects.
    after = await backend_pid(database)
    assert after != before
    assert database.engine.pool.checkedout() == 0
    await database.dispose()


async def test_stopped_server_gives_an_error_without_the_password(
    pg_cluster: ThrowawayCluster,
) -> None:
    url = pg_cluster.url.replace("postgres@", "postgres:s3cret@")
    database = Database(url, application_name=APP_NAME, pool_timeout=5)
    pg_cluster.pg_ctl("stop")
    try:
        with pytest.raises((OperationalError, DBAPIError, OSError)) as raised:
            await backend_pid(database)
        assert "s3cret" not in str(raised.value) and "s3cret" not in repr(database)
        assert database.engine.pool.checkedout() == 0
    finally:
        pg_cluster.pg_ctl("start")
    assert await backend_pid(database) > 0  # and it works again once the server is back
    await database.dispose()


async def test_server_stopped_and_restarted_under_load_loses_nothing(
    pg_cluster: ThrowawayCluster,
) -> None:
    database = Database(
        pg_cluster.url, application_name=APP_NAME, pool_size=5, max_overflow=0, pool_timeout=5
    )
    async with database.engine.begin() as connection:
        await connection.execute(text("drop table if exists restart_rows"))
        await connection.execute(text("create table restart_rows (id int primary key)"))
    committed: set[int] = set()
    failed: set[int] = set()
    unknown: set[int] = set()
    failure_seconds: list[float] = []
    errors: Counter[str] = Counter()
    unclear: list[Exception] = []
    next_id = iter(range(1_000_000))
    enough_before, enough_down, enough_after = asyncio.Event(), asyncio.Event(), asyncio.Event()
    stopping = False
    loop = asyncio.get_running_loop()

    async def writer() -> None:
        while not stopping:
            row = next(next_id)
            started = loop.time()
            try:
                async with database.get_async_db_session() as session:
                    await session.execute(text(f"insert into restart_rows values ({row})"))
            except CommitOutcomeUnknownError:
                unknown.add(row)
            except Exception as error:
                failed.add(row)
                failure_seconds.append(loop.time() - started)
                errors[type(error).__name__] += 1
                if not is_clear(error):
                    unclear.append(error)
                if len(failed) >= 50:
                    enough_down.set()
                await asyncio.sleep(0.01)  # pacing: a down server answers at once
            else:
                committed.add(row)
                if len(committed) >= 200:
                    enough_before.set()
                if enough_down.is_set() and len(committed) >= 400:
                    enough_after.set()

    writers = [asyncio.create_task(writer()) for _ in range(20)]
    await enough_before.wait()
    await asyncio.to_thread(pg_cluster.pg_ctl, "stop")  # under load: in-flight work is cut
    await enough_down.wait()
    await asyncio.to_thread(pg_cluster.pg_ctl, "start")
    async with asyncio.timeout(60):
        await enough_after.wait()  # the same process recovered, no restart needed
    stopping = True
    await asyncio.gather(*writers)

    async with database.get_async_db_session() as session:
        present = set((await session.scalars(text("select id from restart_rows"))).all())
    assert committed <= present, "a commit reported as successful is missing"
    assert not (failed & present), "work reported as failed before its commit is there"
    assert max(failure_seconds) < 5, "a request hung past pool_timeout while the server was down"
    assert unclear == [], f"errors that do not say the server went away: {unclear[:3]}"
    print(
        f"\nrestart under load: {len(committed)} committed, {len(failed)} failed "
        f"({dict(errors)}), {len(unknown)} unknown outcomes ({len(unknown & present)} of them "
        f"committed), slowest failure {max(failure_seconds):.3f} s"
    )
    assert database.engine.pool.checkedout() == 0
    await database.dispose()


def is_clear(error: Exception) -> bool:
    """The error says the server went away: it could not be reached, it closed the
    connection (our note), or its own message says it is shutting down."""
    if isinstance(error, DatabaseUnavailableError):
        return True
    text_seen = str(error) + "".join(getattr(error, "__notes__", []))
    return isinstance(error, exc.DBAPIError) and (
        CONNECTION_LOST_NOTE in text_seen
        or "administrator command" in text_seen
        or "shutting down" in text_seen
    )


async def test_unreachable_server_fails_fast_and_clearly(postgres_url: str) -> None:
    url = make_url(postgres_url).set(port=1, password=SENTINEL)
    database = Database(url, application_name=APP_NAME, pool_timeout=2)
    with pytest.raises(DatabaseUnavailableError) as raised:
        await backend_pid(database)
    message = str(raised.value)
    assert "127.0.0.1:1" in message and "check that it is running" in message
    assert isinstance(raised.value, ConnectionError)
    assert SENTINEL not in message + repr(database)
    await database.dispose()


async def test_wrong_password_is_explained_and_never_shown(
    pg_cluster: ThrowawayCluster, caplog: pytest.LogCaptureFixture
) -> None:
    right = "right-" + SENTINEL
    await pg_cluster.require_password("app_login", right)
    caplog.set_level(logging.DEBUG)
    wrong_url = f"postgresql://app_login:{SENTINEL}@127.0.0.1:{pg_cluster.port}/postgres"
    wrong = Database(wrong_url, application_name=APP_NAME, echo=True)
    with pytest.raises(exc.DBAPIError) as raised:
        await backend_pid(wrong)
    text_seen = "".join(traceback.format_exception(raised.value))
    assert "password authentication failed" in text_seen
    assert "check the user name and password" in text_seen
    await wrong.dispose()
    right_url = wrong_url.replace(SENTINEL, right)
    database = Database(right_url, application_name=APP_NAME, echo=True)
    assert await backend_pid(database) > 0
    await database.dispose()
    everything = text_seen + repr(wrong) + repr(database) + caplog.text
    assert SENTINEL not in everything
