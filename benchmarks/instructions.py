"""Client instructions per operation, counted by valgrind: a cost figure that this noisy
machine does not blur (CPU time per operation moves by 20-40 % between identical runs;
this count moves by about 1.5 %).

    python -m benchmarks.instructions --url postgresql://postgres@127.0.0.1/test
    python -m benchmarks.instructions                  # embedded SQLite (temp file)

Each stack runs the benchmark's operation (``--workload``, ``read`` by default) from one
client, one operation after another, under ``valgrind --tool=cachegrind``: once for
``--ops`` operations and once for four times as many, so that start-up, imports and warm-up
cancel out of the difference. What is counted is the client process's own instructions
(Python, SQLAlchemy, the driver, the event loop); the kernel's share of each socket call
and the server's work are not. It needs ``valgrind`` (``apt install valgrind``).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from atom_async_db._settings import build_settings

from ._stacks import STACKS, WORKLOADS, prepare

WARM_UP = 50


def count(url: str, stack: str, workload: str, ops: int) -> int:
    """Instructions the client ran for ``ops`` operations (after the warm-up) and all else."""
    command = [
        *("valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"),
        *(sys.executable, "-m", "benchmarks.instructions", "--url", url),
        *("--run", stack, "--workload", workload, "--ops", str(ops)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


async def run(url: str, stack_name: str, workload: str, ops: int) -> None:
    settings = build_settings(url)
    stack = STACKS[stack_name](settings.url, settings.dialect)
    await stack.start()
    try:
        for key in range(1, WARM_UP + 1):
            await stack.op(workload, key)
        for i in range(ops):
            await stack.op(workload, i % 1000 + 1)
    finally:
        await stack.stop()


async def _prepare(url: str) -> None:
    from atom_async_db import Database

    database = Database(url)
    try:
        await prepare(database)
    finally:
        await database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--stacks", default="ours,ours_noping,ours_unguarded,peer,peer_ping")
    parser.add_argument("--workload", default="read", choices=WORKLOADS)
    parser.add_argument("--ops", type=int, default=100, help="the shorter run's operations")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # one run, under valgrind
    args = parser.parse_args()
    if args.run:
        asyncio.run(run(args.url, args.run, args.workload, args.ops))
        return
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt install valgrind)")
    stacks = args.stacks.split(",")
    if unknown := [name for name in stacks if name not in STACKS or STACKS[name].threaded]:
        parser.error(f"not an async stack: {', '.join(unknown)}; choose among {list(STACKS)}")
    with tempfile.TemporaryDirectory() as scratch:
        url = args.url or f"sqlite:///{Path(scratch) / 'bench.db'}"
        asyncio.run(_prepare(url))
        print(f"# client instructions per {args.workload}, one client, {url}\n")
        print("| stack | instructions per op |\n|---|---|")
        for name in stacks:
            short = count(url, name, args.workload, args.ops)
            long = count(url, name, args.workload, 4 * args.ops)
            print(f"| {name} | {(long - short) / (3 * args.ops) / 1000:,.0f}k |", flush=True)


if __name__ == "__main__":
    main()
