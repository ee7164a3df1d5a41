"""Event loops, threads and fork: the default database keeps working wherever it is used."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import func, select

from atom_async_db import Database, NoEventLoopError, get_async_db_session
from tests.helpers import APP_NAME, our_backends, reset_schema, run_python
from tests.models import User

MakeDefault = Callable[..., Awaitable[Database]]

FIVE_RUNS = """
import asyncio, sys
from sqlalchemy import func, select
import atom_async_db
from tests.models import Base, User

atom_async_db.configure(sys.argv[1], application_name=sys.argv[2])

async def setup():
    async with atom_async_db.get_database().engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)

async def job(i):
    async with atom_async_db.get_async_db_session() as db:
        db.add(User(email=f"run{i}@example.com"))
    async with atom_async_db.get_async_db_session() as db:
        return (await db.execute(select(func.count()).select_from(User))).scalar()

asyncio.run(setup())
print([asyncio.run(job(i)) for i in range(5)])
"""


def test_five_asyncio_runs_in_one_script_under_dev_mode(backend_url: str) -> None:
    # -X dev -W error: any "attached to a different loop", "Event loop is closed",
    # ResourceWarning or unclosed-connection warning fails the child.
    output = run_python(FIVE_RUNS, backend_url, APP_NAME)
    assert output.strip().splitlines()[-1] == "[1, 2, 3, 4, 5]"


async def test_engines_are_per_loop_and_closed_with_their_loop(db: Database, backend: str) -> None:
    def other_loop() -> tuple[object, int]:
        async def use() -> tuple[object, int]:
            async with get_async_db_session() as session:
                session.add(User(email="thread@example.com"))
            return db.engine, db.engine.pool.checkedout()

        return asyncio.run(use())

    engine, checked_out = await asyncio.to_thread(other_loop)
    assert engine is not db.engine and checked_out == 0
    assert len(db._engines.engines()) == 1  # the thread's engine went with its loop
    if backend == "postgres":
        # only this loop's pooled connection is left on the server
        assert len(await our_backends(db.url)) == 1


async def test_four_threads_each_with_a_loop_share_the_default(
    make_default: Callable[..., Awaitable[Database]], backend: str
) -> None:
    # Each loop has a pool of its own: 4 x (5 + 5) stays within the server's max_connections.
    db = await make_default(pool_size=5, max_overflow=5)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        async def many() -> None:
            async def one(i: int) -> None:
                async with get_async_db_session() as session:
                    session.add(User(email=f"t{n}-{i}@example.com"))

            await asyncio.gather(*(one(i) for i in range(50)))
            assert db.engine.pool.checkedout() == 0

        try:
            asyncio.run(many())
        except BaseException as error:  # reported to the test thread below
            errors.append(error)

    def run_threads() -> None:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
            if backend == "sqlite_memory":  # one loop at a time: see test_engine
                thread.join()
        for thread in threads:
            thread.join()

    await asyncio.to_thread(run_threads)
    assert errors == []
    async with get_async_db_session() as session:
        assert (await session.execute(select(func.count()).select_from(User))).scalar() == 200


def test_engine_outside_a_loop_is_a_clear_error() -> None:
    with pytest.raises(NoEventLoopError, match="inside a coroutine"):
        _ = Database("sqlite://").engine


@pytest.mark.parametrize("loop_test", range(3))
async def test_a_module_level_database_serves_each_tests_own_loop(
    loop_test: int, backend: str, backend_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # pytest-asyncio gives every test a new loop; one Database must follow.
    if backend == "sqlite_file":
        backend_url = f"sqlite:///{tmp_path_factory.getbasetemp() / 'module-level.db'}"
    if backend not in MODULE_LEVEL:
        MODULE_LEVEL[backend] = Database(backend_url, application_name=APP_NAME)
    database = MODULE_LEVEL[backend]
    if loop_test == 0:
        await reset_schema(database)
    async with database.get_async_db_session() as session:
        session.add(User(email=f"loop{loop_test}@example.com"))
        count = (await session.execute(select(func.count()).select_from(User))).scalar()
    assert count == loop_test + 1


MODULE_LEVEL: dict[str, Database] = {}

FORK = """
import asyncio, os, sys
from sqlalchemy import text
import atom_async_db

db = atom_async_db.configure(sys.argv[1], application_name=sys.argv[2])

async def backend_pids(n):
    pids = set()
    for _ in range(n):
        async with atom_async_db.get_async_db_session() as s:
            pids.add((await s.execute(text("select pg_backend_pid()"))).scalar())
    return pids

async def main():
    parent_before = await backend_pids(5)
    child = os.fork()
    if child == 0:
        code = 0
        try:
            async def child_main():
                pids = await backend_pids(100)
                await atom_async_db.dispose()
                return pids
            pids = asyncio.run(child_main())
            code = 0 if not (pids & parent_before) else 3
        except BaseException as e:
            print("child failed:", repr(e), flush=True)
            code = 4
        os._exit(code)
    parent_after = await backend_pids(100)
    _, status = os.waitpid(child, 0)
    reused = parent_after <= parent_before
    print("child exit", os.waitstatus_to_exitcode(status), "parent reused", reused)

asyncio.run(main())
"""


def test_fork_child_never_reuses_the_parents_connections(postgres_url: str) -> None:
    output = run_python(FORK, postgres_url, APP_NAME)
    assert "child exit 0 parent reused True" in output
