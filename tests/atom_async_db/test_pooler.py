"""Behind a real PgBouncer (Debian's), in transaction and session mode: the load of an
application (both engines) without one error or wrong answer when ``server_pooler`` is set,
the same load failing without it (with the note naming the setting), and the waits for the
pooler's server connections bounded by ``pool_timeout``."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from atom_async_db import Database, PoolTimeoutError
from atom_async_db._pooler import POOLER_NOTE
from sync_compat import get_db_session, run_legacy
from tests.fixtures.pgbouncer import PgBouncer
from tests.helpers import APP_NAME

pytestmark = [pytest.mark.postgres, pytest.mark.cluster]

TASKS, SESSIONS = 200, 5
THREADS, THREAD_SESSIONS = 20, 50


async def _create_table(database: Database) -> None:
    async with database.engine.begin() as connection:
        await connection.execute(text("drop table if exists bounced"))
        await connection.execute(
            text("create table bounced (id serial primary key, task int, n int, note text)")
        )


async def _unit(database: Database, task: int, n: int) -> None:
    """One session as routes write them: statements of different shapes, parameters of
    different types, a nested block, an option, and every fifth through legacy code."""
    if n % 5 == 4:
        await run_legacy(_legacy_unit, database, task, n)
        return
    options: dict[str, Any] = {"statement_timeout": 5} if n % 2 else {}
    async with database.get_async_db_session(**options) as session:
        await session.execute(
            text("insert into bounced (task, n, note) values (:task, :n, :note)"),
            {"task": task, "n": n, "note": f"t{task}"},
        )
        async with database.get_async_db_session() as nested:
            count = (
                await nested.execute(
                    text("select count(*) from bounced where task = :task"), {"task": task}
                )
            ).scalar_one()
        assert count == n + 1, (task, n, count)
        note = (
            await session.execute(
                text("select note from bounced where task = :task and n = :n"),
                {"task": task, "n": n},
            )
        ).scalar_one()
        assert note == f"t{task}"


def _legacy_unit(database: Database, task: int, n: int) -> None:
    with get_db_session(database=database) as session:
        session.execute(
            text("insert into bounced (task, n, note) values (:task, :n, :note)"),
            {"task": task, "n": n, "note": f"t{task}"},
        )
        count = session.execute(
            text("select count(*) from bounced where task = :task"), {"task": task}
        ).scalar_one()
        assert count == n + 1, (task, n, count)


async def _async_load(
    database: Database, errors: list[BaseException] | None = None
) -> Counter[str]:
    """TASKS tasks of SESSIONS sessions each; what failed, by the error's first words."""
    failures: Counter[str] = Counter()

    async def worker(task: int) -> None:
        for n in range(SESSIONS):
            try:
                await _unit(database, task, n)
            except Exception as error:
                failures[_kind(error)] += 1
                if errors is not None:
                    errors.append(error)
                return  # the task's later counts would be off by the lost row

    await asyncio.gather(*(worker(task) for task in range(TASKS)))
    return failures


# Two statements of one signature (int -> int) with different answers: a statement
# prepared under one name on one server connection and run on another answers wrongly.
_PLUS_ONE = text("select cast(:v as integer) + 1")
_TIMES_TEN = text("select cast(:v as integer) * 10")


def _sync_load(
    database: Database, errors: list[BaseException] | None = None
) -> tuple[Counter[str], int]:
    """THREADS threads of THREAD_SESSIONS sessions on the sync engine, each running both
    statements (half the threads prepare one first, half the other); failures by kind,
    and how many answers were wrong."""
    failures: Counter[str] = Counter()
    wrong = 0
    lock = threading.Lock()

    def thread(number: int) -> None:
        nonlocal wrong
        first, second = (_PLUS_ONE, _TIMES_TEN) if number % 2 else (_TIMES_TEN, _PLUS_ONE)
        for n in range(THREAD_SESSIONS):
            try:
                with get_db_session(database=database) as session:
                    a = session.execute(first, {"v": n}).scalar_one()
                    b = session.execute(second, {"v": n}).scalar_one()
            except Exception as error:
                with lock:
                    failures[_kind(error)] += 1
                    if errors is not None:
                        errors.append(error)
                continue
            expected = (n + 1, n * 10) if number % 2 else (n * 10, n + 1)
            if (a, b) != expected:
                with lock:
                    wrong += 1

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(THREADS)]
    for each in threads:
        each.start()
    for each in threads:
        each.join()
    return failures, wrong


def _kind(error: BaseException) -> str:
    return " ".join(str(error).split()[:6])


def _through(bouncer: PgBouncer, **options: Any) -> Callable[[], Database]:
    return lambda: Database(
        bouncer.url,
        application_name=APP_NAME,
        sync_pool_size=THREADS,
        **options,
    )


async def test_a_whole_application_load_through_pgbouncer_in_transaction_mode(
    start_pgbouncer: Callable[..., PgBouncer],
) -> None:
    bouncer = start_pgbouncer("transaction", pool_size=20)
    database = _through(bouncer, server_pooler="pgbouncer")()
    await _create_table(database)
    for _ in range(2):  # twice: the second round reuses every pooled connection
        assert await _async_load(database) == Counter()
        sync_failures, wrong = await asyncio.to_thread(_sync_load, database)
        assert (sync_failures, wrong) == (Counter(), 0)
        await _create_table(database)
    assert database.engine.pool.checkedout() == 0
    await database.dispose()


async def test_without_the_setting_the_same_load_fails_and_the_errors_name_it(
    start_pgbouncer: Callable[..., PgBouncer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    bouncer = start_pgbouncer("transaction", pool_size=20)
    database = _through(bouncer)()
    with caplog.at_level(logging.WARNING, logger="atom_async_db"):
        await _create_table(database)
    assert "answered as a connection pooler does" in caplog.text
    assert "server_pooler='pgbouncer'" in caplog.text

    errors: list[BaseException] = []
    failures = await _async_load(database, errors)
    assert sum(failures.values()) > TASKS // 2, failures
    sync_errors: list[BaseException] = []
    sync_failures, wrong = await asyncio.to_thread(_sync_load, database, sync_errors)
    assert sum(sync_failures.values()) + wrong > 0, (sync_failures, wrong)
    for error in errors + sync_errors:
        if "prepared statement" in str(error):
            assert POOLER_NOTE in getattr(error, "__notes__", []), error
    await database.dispose()


async def test_direct_to_postgresql_there_is_no_warning(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    database = Database(postgres_url, application_name=APP_NAME)
    with caplog.at_level(logging.WARNING, logger="atom_async_db"):
        async with database.get_async_db_session() as session:
            await session.execute(text("select 1"))
    assert "connection pooler" not in caplog.text
    await database.dispose()


async def test_an_independent_session_waiting_for_the_poolers_last_server_connection_times_out(
    start_pgbouncer: Callable[..., PgBouncer],
) -> None:
    """Each task holds one of the pooler's 4 server connections in its session and opens an
    independent one, which needs a fifth: without a bound on that wait, nothing ever ends
    (the pooler queues the BEGIN; our pool had a connection to give)."""
    bouncer = start_pgbouncer("transaction", pool_size=4)
    database = _through(bouncer, server_pooler="pgbouncer", pool_timeout=1)()
    holding = 0
    all_held = asyncio.Event()
    outcomes: Counter[str] = Counter()
    messages: list[str] = []

    async def task() -> None:
        nonlocal holding
        try:
            async with database.get_async_db_session() as outer:
                await outer.execute(text("select 1"))
                holding += 1
                if holding == 4:
                    all_held.set()
                await all_held.wait()
                async with database.get_async_db_session(independent=True) as inner:
                    await inner.execute(text("select 1"))
            outcomes["done"] += 1
        except PoolTimeoutError as error:
            messages.append(str(error))
            outcomes["timed out"] += 1

    async with asyncio.timeout(30):
        await asyncio.gather(*(task() for _ in range(6)))
    assert outcomes["timed out"] >= 1, outcomes
    assert sum(outcomes.values()) == 6
    assert all("independent=True" in m and "default_pool_size" in m for m in messages)
    assert database.engine.pool.checkedout() == 0
    async with database.get_async_db_session() as session:  # the pool still serves
        assert (await session.execute(text("select 1"))).scalar_one() == 1
    await database.dispose()


@pytest.mark.parametrize(("max_overflow", "timed_out"), [(3, True), (0, False)])
async def test_in_session_mode_a_pool_larger_than_the_poolers_waits_a_bounded_time(
    start_pgbouncer: Callable[..., PgBouncer], max_overflow: int, timed_out: bool
) -> None:
    """In session mode each of our connections holds one of the pooler's server connections
    for as long as it is open, idle in our pool too: a pool that may open more than the
    pooler has leaves the surplus waiting (forever, before the bound); one that fits queues
    in our pool instead."""
    bouncer = start_pgbouncer("session", pool_size=3)
    database = _through(
        bouncer,
        server_pooler="pgbouncer",
        pool_size=3,
        max_overflow=max_overflow,
        pool_timeout=1,
    )()
    held = asyncio.Event()
    holding = 0
    outcomes: Counter[str] = Counter()

    async def session() -> None:
        nonlocal holding
        try:
            async with database.get_async_db_session() as db:
                await db.execute(text("select 1"))
                holding += 1
                if holding == 3:
                    held.set()
                await held.wait()  # the three that got one hold it while the others ask
            outcomes["done"] += 1
        except PoolTimeoutError:
            outcomes["timed out"] += 1

    async with asyncio.timeout(30):
        await asyncio.gather(*(session() for _ in range(5)))
    assert (outcomes["timed out"] > 0) is timed_out, outcomes
    assert sum(outcomes.values()) == 5
    await database.dispose()


@pytest.mark.parametrize(
    "query",
    [
        "server_pooler=pgbouncer",
        # by hand, each driver's parameter in the one URL (each went to both before)
        "statement_cache_size=0&prepared_statement_cache_size=0&prepare_threshold=none",
    ],
)
async def test_the_database_url_alone_can_say_so(
    start_pgbouncer: Callable[..., PgBouncer], query: str
) -> None:
    bouncer = start_pgbouncer("transaction", pool_size=20)
    database = Database(f"{bouncer.url}?{query}", application_name=APP_NAME, sync_pool_size=THREADS)
    await _create_table(database)
    assert await _async_load(database) == Counter()
    assert await asyncio.to_thread(_sync_load, database) == (Counter(), 0)
    await database.dispose()


async def test_an_application_pool_class_is_honoured_nullpool_behind_pgbouncer(
    start_pgbouncer: Callable[..., PgBouncer], caplog: pytest.LogCaptureFixture
) -> None:
    bouncer = start_pgbouncer("transaction", pool_size=20)
    database = _through(
        bouncer, server_pooler="pgbouncer", engine_options={"poolclass": NullPool}
    )()
    assert isinstance(database.engine.pool, NullPool)  # (it was replaced by ours before)
    await _create_table(database)
    assert await _async_load(database) == Counter()
    with caplog.at_level(logging.WARNING, logger="atom_async_db"):
        await database.dispose()
    assert "failed" not in caplog.text  # (NullPool has no close(), which was called)
