"""How long SQLite statements hold the event loop: the SQLite fast path against every
statement sent to aiosqlite's thread (``sqlite_loop_limit=0``).

A ticker task sleeps 1 ms at a time and records how late it wakes: the longest and the
99th-percentile lateness are how long other tasks (a request, a health probe) could not
run. Cases, each with the default limit (5 ms) and with ``sqlite_loop_limit=0``:

- ``read`` / ``write``: 50 tasks, each a loop of sessions (a primary-key read; an UPDATE
  and COMMIT), for ``--duration`` seconds; ops/s alongside.
- ``long read``: one task, a read that takes about a quarter of a second (a count over a
  cross join), repeated. Run here, it is stopped at the limit and moved.
- ``lock wait``: another connection (another process, say) holds the write lock for
  0.2 s while 10 tasks begin transactions: the BEGINs must wait off the loop.

    python -m benchmarks.sqlite_loop
    python -m benchmarks.sqlite_loop --duration 5 --out benchmarks/results/sqlite-loop
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text, update

from atom_async_db import Database

from ._stacks import ROWS, User, prepare

TICK = 0.001


async def _with_ticker(work: Awaitable[int]) -> tuple[int, float, float, float]:
    """(operations ``work`` reports, seconds, longest and p99 lateness of a 1 ms ticker)."""
    loop = asyncio.get_running_loop()
    late: list[float] = []
    done = False

    async def tick() -> None:
        while not done:
            before = loop.time()
            await asyncio.sleep(TICK)
            late.append(loop.time() - before - TICK)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    started = time.perf_counter()
    operations = await work
    elapsed = time.perf_counter() - started
    done = True
    await ticker
    late.sort()
    p99 = late[int(len(late) * 0.99)] if late else 0.0
    return operations, elapsed, max(late, default=0.0), p99


async def _clients(database: Database, clients: int, duration: float, write: bool) -> int:
    stop_at = time.perf_counter() + duration
    counts = [0] * clients

    async def client(n: int) -> None:
        key = n
        while time.perf_counter() < stop_at:
            key = key % ROWS + 1
            async with database.get_async_db_session(commit=write) as session:
                if write:
                    change = update(User).where(User.id == key).values(counter=User.counter + 1)
                    await session.execute(change)
                else:
                    await session.get(User, key)
            counts[n] += 1

    await asyncio.gather(*(client(n) for n in range(clients)))
    return sum(counts)


async def _long_reads(database: Database, duration: float) -> int:
    stop_at = time.perf_counter() + duration
    reads = 0
    table = User.__tablename__
    pairs = text(  # 4 million pairs: about a quarter of a second
        f"select count(*) from {table} a, {table} b where a.id <= 2000 and b.id <= 2000"
    )
    while time.perf_counter() < stop_at or reads == 0:
        async with database.get_async_db_session(commit=False) as session:
            await session.scalar(pairs)
        reads += 1
    return reads


async def _lock_wait(database: Database, path: Path) -> int:
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    asyncio.get_running_loop().call_later(0.2, holder.commit)

    async def begin() -> None:
        async with database.get_async_db_session() as session:
            await session.execute(text("select 1"))

    await asyncio.gather(*(begin() for _ in range(10)))
    holder.close()
    return 10


async def run(path: Path, duration: float) -> list[dict[str, Any]]:
    cases: list[tuple[str, Callable[[Database], Awaitable[int]]]] = [
        ("read, 50 tasks", lambda db: _clients(db, 50, duration, write=False)),
        ("write, 50 tasks", lambda db: _clients(db, 50, duration, write=True)),
        ("long read, 1 task", lambda db: _long_reads(db, duration)),
        ("lock wait, 10 tasks", lambda db: _lock_wait(db, path)),
    ]
    setup = Database(f"sqlite:///{path}")
    await prepare(setup)
    async with setup.get_async_db_session() as session:
        assert await session.scalar(select(func.count()).select_from(User)) == ROWS
    await setup.dispose()
    rows = []
    for name, case in cases:
        for limit in (None, 0.0):
            options = {} if limit is None else {"sqlite_loop_limit": limit}
            database = Database(f"sqlite:///{path}", **options)
            async with database.get_async_db_session() as session:  # open the connection
                await session.execute(text("select 1"))
            operations, elapsed, longest, p99 = await _with_ticker(case(database))
            await database.dispose()
            label = f"{database.settings.sqlite_loop_limit * 1000:g} ms"
            rows.append(
                {
                    "case": name,
                    "sqlite_loop_limit": label,
                    "ops_per_s": operations / elapsed,
                    "longest_stall_ms": longest * 1000,
                    "p99_stall_ms": p99 * 1000,
                }
            )
            print(
                f"| {name} | {label} | {operations / elapsed:,.0f} | "
                f"{longest * 1000:.1f} | {p99 * 1000:.1f} |",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per case")
    parser.add_argument("--out", type=Path, help="directory for results.json")
    args = parser.parse_args()
    print("| case | sqlite_loop_limit | ops/s | longest loop stall ms | p99 stall ms |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        rows = asyncio.run(run(Path(scratch) / "loop.db", args.duration))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
