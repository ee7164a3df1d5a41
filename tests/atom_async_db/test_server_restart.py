"""Real server faults on a throwaway cluster: a restart and a stopped server."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from atom_async_db import Database
from tests.conftest import APP_NAME, ThrowawayCluster


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
