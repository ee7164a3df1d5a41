"""Read replicas on a real streaming replica of the throwaway cluster: where sessions go
(``pg_is_in_recovery()`` on the session's own connection), read-your-writes in one
request, a replica stopped and started mid-run, and a lagging one (replay paused)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

import atom_async_db
from atom_async_db import ConfigurationError, Database
from atom_async_db import _default as default_module
from atom_async_db.fastapi import AsyncReplicaDB
from tests.fixtures.replica import StreamingReplica
from tests.helpers import APP_NAME, serve

pytestmark = [pytest.mark.postgres, pytest.mark.cluster]


async def where(database: Database, **options: Any) -> str:
    """Where a ``replica=True`` session of ``database`` went."""
    async with database.get_async_db_session(replica=True, **options) as session:
        in_recovery = await session.scalar(text("select pg_is_in_recovery()"))
    return "replica" if in_recovery else "primary"


async def in_a_task_of_its_own(work: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``work`` in a task of its own: its writes do not send this task's reads to the
    primary (read-your-writes follows the task)."""
    return await asyncio.create_task(work())


async def until_sessions_go(database: Database, place: str) -> None:
    """Open replica sessions until one goes to ``place`` (each a real session)."""
    async with asyncio.timeout(20):
        while await where(database) != place:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # the replica's next check comes on a timer


@pytest.fixture
async def replicated(
    pg_replica: StreamingReplica,
) -> AsyncIterator[Callable[..., Awaitable[Database]]]:
    made: list[Database] = []

    async def make(**options: Any) -> Database:
        database = Database(
            pg_replica.primary.url,
            application_name=APP_NAME,
            replica_urls=[pg_replica.url],
            **options,
        )
        made.append(database)

        async def create() -> None:
            async with database.engine.begin() as connection:
                await connection.execute(text("drop table if exists replicated"))
                await connection.execute(text("create table replicated (id int primary key)"))

        await in_a_task_of_its_own(create)
        await pg_replica.caught_up()
        return database

    yield make
    for database in made:
        await database.dispose()


async def test_read_only_sessions_go_to_the_replica_and_the_rest_to_the_primary(
    replicated: Callable[..., Awaitable[Database]],
) -> None:
    database = await replicated()
    assert await where(database) == "replica"
    assert await where(database, isolation_level="REPEATABLE READ") == "replica"
    async with database.get_async_db_session() as session:  # the seed's default: primary
        assert await session.scalar(text("select pg_is_in_recovery()")) is False
    (status,) = database.replica_status()
    assert status.usable and status.lag is not None and status.lag < 1, status
    assert "127.0.0.1" in status.server


async def test_a_task_that_wrote_reads_its_writes_on_the_primary(
    replicated: Callable[..., Awaitable[Database]],
) -> None:
    database = await replicated()
    assert await where(database) == "replica"
    async with database.get_async_db_session() as session:
        await session.execute(text("insert into replicated values (1)"))
        # inside the primary's session, a replica block joins it and sees its write
        async with database.get_async_db_session(replica=True) as joined:
            assert await joined.scalar(text("select count(*) from replicated")) == 1
            assert await joined.scalar(text("select pg_is_in_recovery()")) is False
    assert await where(database) == "primary"  # from now on, for this task
    assert await in_a_task_of_its_own(lambda: where(database)) == "primary"  # and its children


async def test_read_your_writes_in_one_request_and_replicas_for_the_next(
    replicated: Callable[..., Awaitable[Database]], monkeypatch: pytest.MonkeyPatch
) -> None:
    database = await replicated()
    monkeypatch.setattr(default_module, "_default", database)
    app = FastAPI()

    @app.post("/items/{item}")
    async def add(item: int) -> dict[str, Any]:
        async with atom_async_db.get_async_db_session() as session:
            await session.execute(text("insert into replicated values (:id)"), {"id": item})
        async with atom_async_db.get_async_db_session(replica=True) as session:
            seen = await session.scalar(
                text("select count(*) from replicated where id = :id"), {"id": item}
            )
            recovery = await session.scalar(text("select pg_is_in_recovery()"))
        return {"seen": seen, "replica": recovery}

    @app.get("/where")
    async def read(db: AsyncReplicaDB) -> dict[str, Any]:
        return {"replica": await db.scalar(text("select pg_is_in_recovery()"))}

    # A real server: each request is a task of its own. (Under httpx's ASGITransport every
    # request runs in the test's own task, so after a write the test's later requests
    # read from the primary too.)
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        for item in range(5):
            posted = (await client.post(f"/items/{item}")).json()
            assert posted == {"seen": 1, "replica": False}
            assert (await client.get("/where")).json() == {"replica": True}


async def test_a_stopped_replica_is_skipped_and_used_again_when_it_is_back(
    replicated: Callable[..., Awaitable[Database]],
    pg_replica: StreamingReplica,
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = await replicated(replica_check_interval=0.2)
    assert await where(database) == "replica"  # its pool now holds a connection to it
    pg_replica.pg_ctl("stop")
    try:
        with caplog.at_level(logging.WARNING, logger="atom_async_db"):
            for _ in range(20):  # no read fails: each goes to the primary, read-only
                assert await where(database) == "primary"
        assert "is skipped: down" in caplog.text
        assert "read-only sessions go to the primary" in caplog.text
        (status,) = database.replica_status()
        assert not status.usable and status.reason.startswith("down"), status

        async def write_in_a_replica_session() -> None:
            async with database.get_async_db_session(replica=True) as session:
                await session.execute(text("insert into replicated values (99)"))

        with pytest.raises(Exception, match="read-only transaction"):
            await in_a_task_of_its_own(write_in_a_replica_session)
    finally:
        pg_replica.pg_ctl("start")
    await until_sessions_go(database, "replica")
    assert database.replica_status()[0].usable


async def test_a_replica_behind_by_more_than_max_replica_lag_is_skipped(
    replicated: Callable[..., Awaitable[Database]], pg_replica: StreamingReplica
) -> None:
    database = await replicated(max_replica_lag=0.5, replica_check_interval=0.1)
    assert await where(database) == "replica"

    async def write(item: int) -> None:
        async with database.get_async_db_session() as session:
            await session.execute(text("insert into replicated values (:id)"), {"id": item})

    await pg_replica.sql("select pg_wal_replay_pause()")
    try:
        await in_a_task_of_its_own(lambda: write(1))
        await until_sessions_go(database, "primary")  # once 0.5 s behind, at the next check
        (status,) = database.replica_status()
        assert status.lag is not None and status.lag > 0.5 and "behind" in status.reason
    finally:
        await pg_replica.sql("select pg_wal_replay_resume()")
    await until_sessions_go(database, "replica")
    async with database.get_async_db_session(replica=True) as session:
        assert await session.scalar(text("select count(*) from replicated")) == 1


def test_replica_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="this database is SQLite"):
        Database("sqlite://", replica_urls=["postgresql://u@replica/db"])
    with pytest.raises(ConfigurationError, match="replica_urls must be PostgreSQL URLs"):
        Database("postgresql://u@h/db", replica_urls=["sqlite:///x.db"])
    with pytest.raises(ConfigurationError, match="must be a list of database URLs") as raised:
        Database("postgresql://u@h/db", replica_urls=42)
    settings = Database(
        "postgresql://u@h/db", replica_urls="postgresql://u:s3cret@r1/db, postgresql://u@r2/db"
    ).settings
    assert [url.host for url in settings.replica_urls] == ["r1", "r2"]
    assert "s3cret" not in repr(settings) and "s3cret" not in str(raised.value)


async def test_concurrent_first_sessions_share_one_check_and_serializable_reads_the_primary(
    replicated: Callable[..., Awaitable[Database]], monkeypatch: pytest.MonkeyPatch
) -> None:
    database = await replicated()
    replicas = database._replicas
    assert replicas is not None
    checks = 0
    check = type(replicas)._check

    async def counted(self: Any, replica: Any) -> None:
        nonlocal checks
        checks += 1
        await check(self, replica)

    monkeypatch.setattr(type(replicas), "_check", counted)
    places = await asyncio.gather(*(where(database) for _ in range(50)))
    assert places == ["replica"] * 50
    assert checks == 1  # (each of the 50 ran one before)
    # A hot standby refuses SERIALIZABLE transactions: those go to the primary.
    assert await where(database, isolation_level="SERIALIZABLE") == "primary"


async def test_no_replica_session_opens_once_dispose_has_begun(
    replicated: Callable[..., Awaitable[Database]],
) -> None:
    database = await replicated(drain_timeout=5)
    release = asyncio.Event()

    async def holder() -> None:
        async with database.get_async_db_session() as session:
            await session.execute(text("select 1"))
            await release.wait()

    held = asyncio.create_task(holder())
    await asyncio.sleep(0)  # the holder opens its session
    disposing = asyncio.create_task(database.dispose())
    await asyncio.sleep(0)  # dispose() begins: it waits for the holder
    with pytest.raises(atom_async_db.DatabaseDisposedError):
        async with database.get_async_db_session(replica=True):
            pass
    release.set()
    await asyncio.gather(held, disposing)


async def test_without_replicas_a_replica_session_is_the_primarys_read_only(
    postgres_url: str,
) -> None:
    database = Database(postgres_url, application_name=APP_NAME)
    assert await where(database) == "primary"

    async def write() -> None:
        async with database.get_async_db_session(replica=True) as session:
            await session.execute(text("create temporary table scratch (id int)"))

    with pytest.raises(Exception, match="read-only transaction"):
        await write()  # as on a replica, or on the primary when every replica is gone
    with pytest.raises(ConfigurationError, match="drop independent=True"):
        database.get_async_db_session(replica=True, independent=True)
    async with database.get_async_db_session() as outer:  # it joins an open session
        await outer.execute(text("select 1"))
        async with database.get_async_db_session(replica=True) as joined:
            # (it writes: its outer session's transaction is not read-only)
            await joined.execute(text("create temporary table scratch (id int)"))
    await database.dispose()
