"""What a ``get_async_db_session()`` costs over a hand-written ``async_sessionmaker`` session.

A stopgap until the full benchmark suite (pool behaviour under concurrency) lands: point
reads by primary key from N concurrent clients, our session against SQLAlchemy's plain
``AsyncSession`` with the same pool sizes, in interleaved rounds; prints the median
throughput and client CPU per operation of each, and their ratio.

    python benchmarks/session_overhead.py                      # embedded SQLite (temp file)
    python benchmarks/session_overhead.py --url postgresql://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import Integer, String
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import atom_async_db


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "bench_overhead_rows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    payload: Mapped[str] = mapped_column(String(50))


async def measure(fn: Callable[[], Awaitable[None]], clients: int, ops: int) -> tuple[float, float]:
    gate = asyncio.Semaphore(clients)

    async def one() -> None:
        async with gate:
            await fn()

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one() for _ in range(ops)))
    return ops / (time.perf_counter() - wall), (time.process_time() - cpu) / ops * 1e6


async def main(url: str, clients: int, ops: int, rounds: int, pre_ping: bool) -> None:
    database = atom_async_db.configure(url, pool_pre_ping=pre_ping)
    settings = database.settings
    async with database.engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)
    async with atom_async_db.get_async_db_session() as session:
        session.add_all(Row(id=i, payload=f"row {i}") for i in range(1, 10_001))

    plain_engine = create_async_engine(
        settings.url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_pre_ping=pre_ping,
    )
    plain_sessions = async_sessionmaker(plain_engine, expire_on_commit=False)
    counter = iter(range(10**9))

    async def ours() -> None:
        async with atom_async_db.get_async_db_session() as session:
            await session.get(Row, next(counter) % 10_000 + 1)

    async def plain() -> None:
        async with plain_sessions() as session:
            await session.get(Row, next(counter) % 10_000 + 1)
            await session.commit()

    results: dict[str, list[tuple[float, float]]] = {"atom_async_db": [], "plain": []}
    for _ in range(rounds):  # interleaved, so machine drift hits both alike
        results["atom_async_db"].append(await measure(ours, clients, ops))
        results["plain"].append(await measure(plain, clients, ops))
    medians = {
        name: (statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs))
        for name, runs in results.items()
    }
    print(f"{database.url}  clients={clients} ops={ops} rounds={rounds} pre_ping={pre_ping}")
    for name, (rate, cpu) in medians.items():
        print(f"  {name:14} {rate:8.0f} ops/s  {cpu:6.0f} us CPU/op")
    ratio = medians["atom_async_db"][0] / medians["plain"][0]
    print(f"  throughput ratio atom_async_db/plain: {ratio:.2f}")
    await plain_engine.dispose()
    await atom_async_db.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--ops", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pre-ping", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        url = args.url or f"sqlite:///{Path(scratch) / 'bench.db'}"
        asyncio.run(main(url, args.clients, args.ops, args.rounds, args.pre_ping))
