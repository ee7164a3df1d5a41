"""The third-party internals the library relies on, each checked to still exist, with
what breaks if an upgrade removes it. The same list stands in ``_cancel``'s docstring; a
version bound in pyproject.toml caps each driver at what was verified
(``make test-newest`` runs the suite on the newest releases)."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import weakref
from collections.abc import Callable
from pathlib import Path

import aiosqlite
import pytest
import sqlalchemy.ext.asyncio.session
from sqlalchemy.dialects.postgresql.asyncpg import (
    AsyncAdapt_asyncpg_connection,
    PGDialect_asyncpg,
)
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session, SessionTransaction

from atom_async_db import _cancel


async def _aiosqlite_connection(tmp_path: Path) -> aiosqlite.Connection:
    # (as the library opens them: usable from the loop's thread too)
    return await aiosqlite.connect(tmp_path / "fence.db", check_same_thread=False)


async def aiosqlite_conn_is_the_sqlite3_connection(tmp_path: Path) -> None:
    # _sqlite_here: cursors made and closed, and empty rollbacks answered, on the loop's thread
    connection = await _aiosqlite_connection(tmp_path)
    try:
        assert isinstance(connection._conn, sqlite3.Connection)
    finally:
        await connection.close()


async def aiosqlite_cursor_wraps_a_sqlite3_cursor(tmp_path: Path) -> None:
    # _sqlite_here: a cursor (of a subclass) built by hand around a sqlite3 cursor, whose
    # statements run on the loop's thread; without it every statement makes a trip
    connection = await _aiosqlite_connection(tmp_path)
    try:
        cursor = aiosqlite.Cursor(connection, connection._conn.cursor())
        assert isinstance(cursor._cursor, sqlite3.Cursor)
        assert cursor._conn is connection
        cursor._cursor.close()
    finally:
        await connection.close()


async def aiosqlite_thread_is_reachable(tmp_path: Path) -> None:
    # _connector: each connection's thread made a daemon, or an unclosed one keeps the process
    connection = aiosqlite.connect(tmp_path / "fence.db")
    assert hasattr(connection, "_thread")
    await connection
    await connection.close()


async def sqlalchemy_begins_a_transaction_with_dialect_do_begin(tmp_path: Path) -> None:
    # _engine: SQLite's BEGIN IMMEDIATE is sent from the async dialect's do_begin; without
    # it transactions would begin deferred, and a read then a write fail "database is locked"
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'fence.db'}")
    begun: list[object] = []
    engine.dialect.do_begin = begun.append  # type: ignore[method-assign]
    async with engine.begin() as connection:
        await connection.exec_driver_sql("select 1")
    await engine.dispose()
    assert len(begun) == 1


async def asyncpg_driver_object_types_exist(tmp_path: Path) -> None:
    # _proxies: the driver objects whose awaitable methods are guarded
    from asyncpg.cursor import Cursor
    from asyncpg.prepared_stmt import PreparedStatement
    from asyncpg.transaction import Transaction

    assert all(inspect.isclass(kind) for kind in (Cursor, PreparedStatement, Transaction))


async def sqlalchemy_asyncpg_adapter_starts_transactions(tmp_path: Path) -> None:
    # _ping: a session's transaction begun at checkout (its BEGIN is the pre-ping)
    assert callable(AsyncAdapt_asyncpg_connection._start_transaction)
    assert "_transaction" in inspect.getsource(AsyncAdapt_asyncpg_connection.__init__)


async def sqlalchemy_asyncpg_dialect_sets_readonly_and_deferrable(tmp_path: Path) -> None:
    # _ping: patched to end the unused BEGIN before they change the connection
    assert callable(PGDialect_asyncpg.set_readonly) and callable(PGDialect_asyncpg.set_deferrable)


async def sqlalchemy_async_conn_dialect_exists(tmp_path: Path) -> None:
    # _pool: the async pool's dialect, which awaits the driver's close and rollback
    from sqlalchemy.pool.base import _AsyncConnDialect

    assert inspect.isclass(_AsyncConnDialect)


async def sqlalchemy_session_connection_for_bind(tmp_path: Path) -> None:
    # _tracked: where a session takes its connection (the pre-ping hooks in there)
    assert callable(Session._connection_for_bind)


async def sqlalchemy_session_transaction_connections(tmp_path: Path) -> None:
    # _nesting: whether an outer session holds a connection (SQLite's independent rule)
    session = Session()
    transaction = session.begin()
    assert isinstance(transaction, SessionTransaction) and transaction._connections == {}
    session.close()


async def sqlalchemy_async_session_proxies_sync_methods(tmp_path: Path) -> None:
    # _tracked: the AsyncSession methods wrapped one task at a time
    for name in ("commit", "connection", "execute", "flush", "get", "get_one", "merge",
                 "refresh", "run_sync", "scalar", "scalars", "stream", "stream_scalars",
                 "delete"):  # fmt: skip
        assert inspect.iscoroutinefunction(
            getattr(sqlalchemy.ext.asyncio.session.AsyncSession, name)
        )


async def sqlalchemy_connection_record_starttime_is_set_before_connecting(
    tmp_path: Path,
) -> None:
    # _stats: how long a connection took to open is measured from the record's starttime
    import time

    from sqlalchemy import create_engine, event

    called: list[float] = []

    def creator() -> sqlite3.Connection:
        called.append(time.time())
        return sqlite3.connect(tmp_path / "fence.db")

    engine = create_engine("sqlite://", creator=creator)
    seen: list[float] = []

    @event.listens_for(engine.pool, "connect")
    def _connected(_dbapi_connection: object, record: object) -> None:
        seen.append(record.starttime)  # type: ignore[attr-defined]

    engine.connect().close()
    engine.dispose()
    assert len(seen) == 1 and seen[0] <= called[0]


async def sqlalchemy_pool_logger_namespace(tmp_path: Path) -> None:
    # _pool: our pools log under sqlalchemy.pool, as SQLAlchemy's own do
    from sqlalchemy.log import _qual_logger_name_for_cls

    from atom_async_db._pool import FairAsyncPool

    assert _qual_logger_name_for_cls(FairAsyncPool) == "sqlalchemy.pool.impl.FairAsyncPool"


async def asyncio_future_blocking_protocol(tmp_path: Path) -> None:
    # _cancel: the stand-in a task awaits instead of the driver's future
    future = asyncio.get_running_loop().create_future()
    assert hasattr(future, "_asyncio_future_blocking")
    future.cancel()


async def asyncio_task_uncancel(tmp_path: Path) -> None:
    # _cancel: a cancellation withdrawn while it is re-armed for later delivery
    assert callable(asyncio.current_task().uncancel)  # type: ignore[union-attr]


async def asyncio_get_running_loop_without_raising(tmp_path: Path) -> None:
    # _engine, sync_compat: "is a loop running in this thread?" without an exception
    assert asyncio._get_running_loop() is asyncio.get_running_loop()


async def weakset_data_is_its_set_of_references(tmp_path: Path) -> None:
    # _cancel: the hot path tests "any task re-armed?" on the WeakSet's own set
    assert isinstance(weakref.WeakSet().data, set)  # type: ignore[attr-defined]


INTERNALS: list[Callable[[Path], object]] = [
    aiosqlite_conn_is_the_sqlite3_connection,
    aiosqlite_cursor_wraps_a_sqlite3_cursor,
    aiosqlite_thread_is_reachable,
    sqlalchemy_begins_a_transaction_with_dialect_do_begin,
    asyncpg_driver_object_types_exist,
    sqlalchemy_asyncpg_adapter_starts_transactions,
    sqlalchemy_asyncpg_dialect_sets_readonly_and_deferrable,
    sqlalchemy_async_conn_dialect_exists,
    sqlalchemy_session_connection_for_bind,
    sqlalchemy_session_transaction_connections,
    sqlalchemy_async_session_proxies_sync_methods,
    sqlalchemy_connection_record_starttime_is_set_before_connecting,
    sqlalchemy_pool_logger_namespace,
    asyncio_future_blocking_protocol,
    asyncio_task_uncancel,
    asyncio_get_running_loop_without_raising,
    weakset_data_is_its_set_of_references,
]


@pytest.mark.parametrize("check", INTERNALS, ids=lambda check: check.__name__)
async def test_a_third_party_internal_we_rely_on_is_still_there(
    check: Callable[[Path], object], tmp_path: Path
) -> None:
    await check(tmp_path)  # type: ignore[misc]


def test_the_cancellation_guards_docstring_lists_the_same_internals() -> None:
    listed = str(_cancel.__doc__)
    assert [c.__name__ for c in INTERNALS if c.__name__ not in listed] == []
