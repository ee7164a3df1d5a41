"""``python -m benchmarks``: pool behaviour under concurrency, atom_async_db against the
hand-written SQLAlchemy setup, the raw driver and the legacy sync layer.

    python -m benchmarks                    # the default run, embedded SQLite (a temp file)
    python -m benchmarks --quick            # under a minute
    python -m benchmarks --url postgresql://postgres@127.0.0.1/test --full --out results/

Stacks run interleaved (their order rotates each round) so that drift of this machine hits
them alike; each figure is the median of the rounds, with the spread of the throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy
from sqlalchemy import func, select, text

import atom_async_db
from atom_async_db import Database
from atom_async_db._masking import mask_url
from atom_async_db._settings import build_settings

from ._report import table, write_results
from ._runner import Cell, median_cell, run_cell
from ._stacks import DEFAULT_STACKS, STACKS, THREAD_CAP, WORKLOADS, User, prepare

PROFILES = {
    # name: (clients, workloads, stacks, rounds, warmup s, duration s)
    "quick": ((10, 50), ("read", "write"), DEFAULT_STACKS, 1, 0.3, 1.0),
    "default": ((10, 50, 200, 1000), ("read", "write"), DEFAULT_STACKS, 3, 0.5, 2.0),
    "full": (
        (1, 10, 50, 200, 1000),
        WORKLOADS,
        (*DEFAULT_STACKS, "ours_pool5", "peer_nullpool"),
        3,
        1.0,
        3.0,
    ),
}


def _csv(kind: type, allowed: tuple[str, ...] | None = None) -> Any:
    def parse(value: str) -> tuple[Any, ...]:
        items = tuple(kind(item) for item in value.split(",") if item)
        if allowed is not None:
            unknown = [item for item in items if item not in allowed]
            if unknown:
                raise argparse.ArgumentTypeError(
                    f"unknown {', '.join(unknown)}; choose from {', '.join(allowed)}"
                )
        return items

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--url", help="database URL (default: a temporary SQLite file)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a run of under a minute")
    size.add_argument("--full", action="store_true", help="add 1 client, pool 5, NullPool, long")
    parser.add_argument("--stacks", type=_csv(str, tuple(STACKS)))
    parser.add_argument("--workloads", type=_csv(str, WORKLOADS))
    parser.add_argument("--concurrency", type=_csv(int), help="client counts, e.g. 10,50,200")
    parser.add_argument("--duration", type=float, help="seconds measured per cell")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per cell")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per cell")
    parser.add_argument("--out", type=Path, help="directory for results.json/.md and chart.png")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace, url: str) -> int:
    profile = "quick" if args.quick else "full" if args.full else "default"
    clients, workloads, stacks, rounds, warmup, duration = PROFILES[profile]
    clients = args.concurrency or clients
    workloads = args.workloads or workloads
    stacks = args.stacks or stacks
    rounds = args.rounds or rounds
    warmup = args.warmup if args.warmup is not None else warmup
    duration = args.duration or duration

    settings = build_settings(url)
    setup = Database(url)
    await prepare(setup)
    server_dsn = None
    max_connections = None
    if settings.dialect == "postgresql":
        server_dsn = settings.url.set(drivername="postgresql").render_as_string(hide_password=False)
        connection = await asyncpg.connect(server_dsn)
        max_connections = int(await connection.fetchval("show max_connections"))
        await connection.close()

    async def counter_sum() -> int:
        async with setup.get_async_db_session() as session:
            return int(await session.scalar(select(func.sum(User.counter))) or 0)

    cells: list[Cell] = []
    total = len(workloads) * len(clients) * rounds * len(stacks)
    print(f"{mask_url(settings.url)}: {profile} run, {total} cells of {warmup}+{duration} s")
    started = time.perf_counter()
    done = 0
    skipped: set[str] = set()
    for workload in workloads:
        for count in clients:
            for round_ in range(rounds):
                order = stacks[round_ % len(stacks) :] + stacks[: round_ % len(stacks)]
                for name in order:
                    done += 1
                    stack = STACKS[name](settings.url, settings.dialect)
                    needs = count if name == "peer_nullpool" else 0
                    if max_connections and needs > max_connections - 10:
                        skipped.add(
                            f"{name} skipped at {count} clients: it needs a connection per "
                            f"client and the server allows max_connections={max_connections}"
                        )
                        continue
                    cell = await run_cell(
                        stack, workload, count, round_,
                        warmup=warmup, duration=duration,
                        server_dsn=server_dsn, counter_sum=counter_sum,
                    )  # fmt: skip
                    cells.append(cell)
                    errors = sum(cell.errors.values())
                    print(
                        f"[{done}/{total}] {workload:9} {count:5} clients  {name:13} "
                        f"{cell.ops_per_s:8.0f} ops/s  p99 {cell.latency_ms['p99']:8.1f} ms"
                        + (f"  errors {errors}" if errors else "")
                        + ("  LOST WRITES" if cell.writes_verified is False else ""),
                        flush=True,
                    )
    summaries = []
    for workload in workloads:
        for count in clients:
            for name in stacks:
                key = (workload, count, name)
                group = [c for c in cells if (c.workload, c.clients, c.stack) == key]
                if group:
                    summaries.append(median_cell(group))
    report = table(summaries) + "".join(f"\n- {note}" for note in sorted(skipped))
    print(report)
    print(f"\n{time.perf_counter() - started:.0f} s; threads capped at {THREAD_CAP}")
    lost = [s for s in summaries if s["writes_verified"] is False]
    if args.out:
        results = {
            "url": mask_url(settings.url),
            "profile": profile,
            "settings": {"warmup": warmup, "duration": duration, "rounds": rounds},
            "versions": {
                "python": platform.python_version(),
                "sqlalchemy": sqlalchemy.__version__,
                "asyncpg": asyncpg.__version__,
                "atom_async_db": atom_async_db.__version__,
            },
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "max_connections": max_connections,
            "cells": [c.as_dict() for c in cells],
            "summaries": summaries,
            "table": report,
        }
        for path in write_results(args.out, results):
            print(f"wrote {path}")
    async with setup.engine.begin() as connection:
        await connection.execute(text("DROP TABLE IF EXISTS bench_users"))
    await setup.dispose()
    if lost:
        print("LOST WRITES: a stack reported more commits than the table holds", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        url = args.url or f"sqlite:///{Path(scratch) / 'bench.db'}"
        return asyncio.run(run(args, url))


if __name__ == "__main__":
    sys.exit(main())
