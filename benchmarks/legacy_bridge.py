"""Legacy sync code from async code: ``run_legacy`` against worker threads, and how long the
event loop stands still meanwhile.

A stopgap until the full benchmark suite lands. 200 concurrent legacy calls, each one
``with get_db_session(): add a row``, through ``run_legacy`` (the async pool) and through
``asyncio.to_thread`` (the sync pool), both pools 5 connections; then, on PostgreSQL, legacy
calls waiting on ``pg_sleep(0.2)`` through ``run_legacy`` against the same code called on
the loop's thread. A ticker task measures the longest stall of the loop in each case.

    python benchmarks/legacy_bridge.py                      # embedded SQLite (temp file)
    python benchmarks/legacy_bridge.py --url postgresql://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import warnings
from collections.abc import Awaitable
from pathlib import Path

from sqlalchemy import Integer, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import atom_async_db
from sync_compat import get_db_session, run_legacy


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "bench_legacy_rows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    payload: Mapped[str] = mapped_column(String(50))


def add_row(payload: str) -> None:  # the legacy code: a seed-style service
    with get_db_session() as db:
        db.add(Row(payload=payload))


def wait_on_the_database() -> None:
    with get_db_session() as db:
        db.execute(text("select pg_sleep(0.2)"))


async def timed(work: Awaitable[object]) -> tuple[float, float]:
    """(seconds the work took, longest gap between two ticks of a 5 ms ticker)."""
    loop = asyncio.get_running_loop()
    finished = False
    longest = 0.0

    async def tick() -> None:
        nonlocal longest
        while not finished:
            before = loop.time()
            await asyncio.sleep(0.005)
            longest = max(longest, loop.time() - before)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    started = time.perf_counter()
    await work
    elapsed = time.perf_counter() - started
    finished = True
    await ticker
    return elapsed, longest


async def main(url: str, rounds: int) -> None:
    database = atom_async_db.configure(
        url, pool_size=5, max_overflow=0, sync_pool_size=5, sync_max_overflow=0
    )
    async with database.engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)
    print(f"{database.url}: 200 concurrent legacy inserts, pools of 5")
    for round_ in range(rounds):
        for name, run in (("run_legacy", run_legacy), ("threads", asyncio.to_thread)):
            calls = (run(add_row, f"{round_}-{i}") for i in range(200))
            elapsed, stall = await timed(asyncio.gather(*calls))
            print(f"  {name:<11} {elapsed:6.2f} s   longest loop stall {stall * 1000:5.0f} ms")
    if database.settings.dialect == "postgresql":
        print("legacy calls waiting 0.2 s on the database")
        calls = (run_legacy(wait_on_the_database) for _ in range(10))
        elapsed, stall = await timed(asyncio.gather(*calls))
        print(
            f"  run_legacy, 10 calls  {elapsed:5.2f} s   longest loop stall {stall * 1000:4.0f} ms"
        )

        async def on_the_loop_thread() -> None:
            with warnings.catch_warnings():  # SyncSessionOnEventLoopWarning: the point here
                warnings.simplefilter("ignore")
                wait_on_the_database()

        elapsed, stall = await timed(on_the_loop_thread())
        print(
            f"  on the loop, 1 call   {elapsed:5.2f} s   longest loop stall {stall * 1000:4.0f} ms"
        )
    async with database.engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
    await atom_async_db.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        url = args.url or f"sqlite:///{Path(directory) / 'bench.db'}"
        asyncio.run(main(url, args.rounds))
