"""One cell of the matrix: a stack running a workload from N closed-loop clients.

Clients are asyncio tasks (threads for the ``threads`` stack, at most ``THREAD_CAP``); each
repeats: pick a random row, run one operation, record its latency and its wait for a
connection. After a warm-up, a measurement window; an operation counts when it completes
inside it. Operations still in flight at the end of the window are reported too (how many
had waited over a second, and the oldest), since percentiles of completed operations cannot
show clients that never got through. Writes are verified: the counters in the table must
have grown by exactly the number of commits the clients saw succeed.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg

from ._stacks import ROWS, THREAD_CAP, Stack

STARVED_AFTER = 1.0  # seconds in flight at the end of the window


@dataclass
class Cell:
    stack: str
    workload: str
    clients: int
    round: int
    workers: int = 0  # clients actually run (threads are capped)
    ops_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    wait_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    connects: int = 0
    peak_checked_out: int = 0
    peak_server_connections: int | None = None
    peak_rss_mb: float = 0.0
    cpu_us_per_op: float = 0.0
    statements_per_op: float = 0.0
    round_trips_per_op: float | None = None
    ideal_wait_ms: float = 0.0
    p99_wait_vs_ideal: float | None = None
    max_wait_vs_ideal: float | None = None
    connects_per_1k_ops: float = 0.0
    starved: int = 0
    oldest_in_flight_s: float = 0.0
    writes_verified: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentiles(values: list[float], points: tuple[int, ...]) -> dict[str, float]:
    if not values:
        return {f"p{p}": float("nan") for p in points}
    ordered = sorted(values)
    return {
        f"p{p}": round(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] * 1000, 3)
        for p in points
    }


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Monitor:
    """Samples checked-out connections, memory and (PostgreSQL) server connections."""

    def __init__(self, stack: Stack, server_dsn: str | None) -> None:
        self.stack = stack
        self.server_dsn = server_dsn
        self.peak_checked_out = 0
        self.peak_rss = 0.0
        self.peak_server: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Monitor:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        connection = await asyncpg.connect(self.server_dsn) if self.server_dsn else None
        try:
            tick = 0
            while True:
                self.peak_checked_out = max(self.peak_checked_out, self.stack.checked_out())
                self.peak_rss = max(self.peak_rss, _rss_mb())
                if connection is not None and tick % 5 == 0:
                    count = await connection.fetchval(
                        "select count(*) from pg_stat_activity where application_name = $1",
                        self.stack.application_name,
                    )
                    self.peak_server = max(self.peak_server or 0, int(count))
                tick += 1
                await asyncio.sleep(0.02)
        finally:
            if connection is not None:
                await connection.close()


async def run_cell(
    stack: Stack,
    workload: str,
    clients: int,
    round_: int,
    *,
    warmup: float,
    duration: float,
    server_dsn: str | None,
    counter_sum: Any,
) -> Cell:
    """Run one cell; ``counter_sum()`` reads the table's total of counters (writes check)."""
    cell = Cell(stack.name, workload, clients, round_)
    workers = min(clients, THREAD_CAP) if stack.threaded else clients
    cell.workers = workers
    if workers != clients:
        cell.note = f"{workers} threads (capped) for {clients} clients"
    latencies: list[float] = []
    waits: list[float] = []
    errors: Counter[str] = Counter()
    succeeded = 0
    in_flight: dict[int, float] = {}
    window = [float("inf"), float("inf")]
    stopping = threading.Event()
    lock = threading.Lock()

    def record(worker: int, started: float, waited: float | None, error: str | None) -> None:
        nonlocal succeeded
        finished = time.perf_counter()
        in_flight.pop(worker, None)
        with lock:
            if error is not None:
                if window[0] <= finished <= window[1]:
                    errors[error] += 1
                return
            succeeded += 1
            if window[0] <= finished <= window[1]:
                latencies.append(finished - started)
                waits.append(waited or 0.0)

    async def client(worker: int) -> None:
        rng = random.Random(worker)
        while not stopping.is_set():
            key = rng.randint(1, ROWS)
            started = in_flight[worker] = time.perf_counter()
            try:
                waited = await stack.op(workload, key)
            except Exception as error:
                record(worker, started, None, type(error).__name__)
            else:
                record(worker, started, waited, None)

    def thread_client(worker: int, gate: threading.Barrier) -> None:
        rng = random.Random(worker)
        gate.wait()
        while not stopping.is_set():
            key = rng.randint(1, ROWS)
            started = in_flight[worker] = time.perf_counter()
            try:
                waited = stack.op_sync(workload, key)
            except Exception as error:
                record(worker, started, None, type(error).__name__)
            else:
                record(worker, started, waited, None)

    before_sum = await counter_sum() if workload == "write" else 0
    await stack.start()
    try:
        async with _Monitor(stack, server_dsn) as monitor:
            if stack.threaded:
                gate = threading.Barrier(workers + 1)
                threads = [
                    threading.Thread(target=thread_client, args=(i, gate), daemon=True)
                    for i in range(workers)
                ]
                for thread in threads:
                    thread.start()
                await asyncio.to_thread(gate.wait)
                tasks: list[asyncio.Future[Any]] = [
                    asyncio.ensure_future(asyncio.to_thread(thread.join)) for thread in threads
                ]
            else:
                tasks = [asyncio.ensure_future(client(i)) for i in range(workers)]
            await asyncio.sleep(warmup)
            counters = stack.counters
            statements, connects, trips = (
                counters.statements,
                counters.connects,
                counters.round_trips,
            )
            cpu = time.process_time()
            window[0] = time.perf_counter()
            await asyncio.sleep(duration)
            window[1] = time.perf_counter()
            cpu = time.process_time() - cpu
            statements = counters.statements - statements
            trips = counters.round_trips - trips
            cell.connects = stack.counters.connects - connects
            now = time.perf_counter()
            ages = [now - started for started in list(in_flight.values())]
            cell.starved = sum(age > STARVED_AFTER for age in ages)
            cell.oldest_in_flight_s = round(max(ages, default=0.0), 3)
            stopping.set()
            await asyncio.gather(*tasks)
            cell.peak_checked_out = monitor.peak_checked_out
            cell.peak_server_connections = monitor.peak_server
            cell.peak_rss_mb = round(monitor.peak_rss, 1)
    finally:
        await stack.stop()
    measured = window[1] - window[0]
    ops = len(latencies)
    cell.ops_per_s = round(ops / measured, 1)
    cell.latency_ms = _percentiles(latencies, (50, 95, 99))
    cell.wait_ms = {**_percentiles(waits, (50, 99)), "max": round(max(waits, default=0) * 1000, 3)}
    cell.errors = dict(errors)
    cell.cpu_us_per_op = round(cpu / ops * 1e6, 1) if ops else float("nan")
    cell.statements_per_op = round(statements / ops, 2) if ops else float("nan")
    if trips and ops:
        cell.round_trips_per_op = round(trips / ops, 2)
    if ops:
        cell.ideal_wait_ms = round(workers / cell.ops_per_s * 1000, 3)
        cell.p99_wait_vs_ideal = round(cell.wait_ms["p99"] / cell.ideal_wait_ms, 2)
        cell.max_wait_vs_ideal = round(cell.wait_ms["max"] / cell.ideal_wait_ms, 2)
        cell.connects_per_1k_ops = round(cell.connects / ops * 1000, 1)
    if workload == "write":
        cell.writes_verified = await counter_sum() - before_sum == succeeded
    return cell


def median_cell(cells: list[Cell]) -> dict[str, Any]:
    """The median of a cell's rounds, with the spread of its throughput."""
    rates = [cell.ops_per_s for cell in cells]
    middle = sorted(cells, key=lambda cell: cell.ops_per_s)[len(cells) // 2]
    summary = middle.as_dict()
    summary.update(
        ops_per_s=statistics.median(rates),
        ops_per_s_spread=[min(rates), max(rates)],
        rounds=len(cells),
        cpu_us_per_op=statistics.median(cell.cpu_us_per_op for cell in cells),
        errors=dict(sum((Counter(cell.errors) for cell in cells), Counter())),
        writes_verified=None
        if cells[0].writes_verified is None
        else all(cell.writes_verified for cell in cells),
    )
    summary.pop("round")
    return summary
