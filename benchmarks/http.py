"""The HTTP benchmark: a FastAPI request end to end, through each stack, behind uvicorn.

For each stack (``_http_app``) a uvicorn server runs in a process of its own on a free
loopback port; a load generator drives it (``wrk`` when it is installed, else a built-in
asyncio client: the report says which) in rounds whose stack order rotates. Per stack and
workload: requests per second, p50/p99 latency, the server's CPU per request (its
process's utime + stime over the requests served) and the responses that were not what
the route answers (non-2xx, or anything but 404 for ``notfound``) and socket errors.

Workloads: ``read`` (GET a random row, 10 connections), ``write`` (POST: UPDATE ...
RETURNING and commit, 50 connections), ``notfound`` (GET a missing row: 404, 10
connections) and ``read200`` (GET at 200 connections)::

    python -m benchmarks.http --url postgresql://postgres@127.0.0.1/test
    python -m benchmarks.http --stacks plain,asyncdb --workloads read --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from atom_async_db import Database
from benchmarks._http_app import STACKS
from benchmarks._stacks import ROWS, prepare

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = {  # name: (method, connections, expected status)
    "read": ("GET", 10, 200),
    "write": ("POST", 50, 200),
    "notfound": ("GET", 10, 404),
    "read200": ("GET", 200, 200),
}
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Load:
    """What one load run measured."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    unexpected: int  # responses other than the route's status
    socket_errors: int


@dataclass
class Cell:
    stack: str
    workload: str
    rounds: list[dict[str, float]] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.rounds)


# --------------------------------------------------------------------------- load generators


def _ids(workload: str) -> tuple[int, int]:
    """The ids a workload asks for: rows that exist, or none that do (``notfound``)."""
    return (ROWS + 1, 2 * ROWS) if workload == "notfound" else (1, ROWS)


def run_wrk(
    port: int,
    workload: str,
    seconds: float,
    *,
    connections: int | None = None,
    timeout: float | None = None,
) -> Load:
    """wrk on ``workload``, with its connections unless ``connections`` says otherwise;
    ``timeout`` (s): wrk's request timeout (its default 2 s leaves slower requests out of
    the latency histogram and counts them as timeouts)."""
    method, default_connections, expected = WORKLOADS[workload]
    connections = connections or default_connections
    low, high = _ids(workload)
    path = f"'/items/' .. math.random({low}, {high})"
    script = f'wrk.method = "{method}"\nrequest = function() return wrk.format(nil, {path}) end\n'

    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script)
    try:
        output = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
             *([f"--timeout={timeout:g}s"] if timeout else []),
             "-s", lua.name, f"http://127.0.0.1:{port}/"],
            capture_output=True, text=True, check=True, timeout=seconds + (timeout or 0) + 60,
        ).stdout  # fmt: skip
    finally:
        os.unlink(lua.name)
    summary = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", output)
    if summary is None:
        raise RuntimeError(f"no request count in wrk's output:\n{output[-2000:]}")
    requests = int(summary.group(1))
    elapsed = float(summary.group(2)) * {"ms": 0.001, "s": 1, "m": 60}[summary.group(3)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    unexpected = int(non2xx.group(1)) if non2xx else 0
    if expected == 404:  # every answer should be a 404: the others are the unexpected ones
        unexpected = requests - unexpected
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return Load(
        requests=requests,
        seconds=elapsed,
        p50_ms=_wrk_ms(output, "50%"),
        p99_ms=_wrk_ms(output, "99%"),
        unexpected=unexpected,
        socket_errors=sum(map(int, errors.groups())) if errors else 0,
    )


def _wrk_ms(output: str, percentile: str) -> float:
    match = re.search(rf"^\s+{re.escape(percentile)}\s+([\d.]+)(us|ms|s)", output, re.MULTILINE)
    if match is None:
        return float("nan")
    return float(match.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[match.group(2)]


async def run_python_client(port: int, workload: str, seconds: float) -> Load:
    """A keep-alive HTTP/1.1 client per connection, as many as the workload has."""
    method, connections, expected = WORKLOADS[workload]
    low, high = _ids(workload)
    latencies: list[float] = []
    unexpected = errors = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal unexpected, errors
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            errors += 1
            return
        try:
            while time.perf_counter() < deadline:
                path = f"/items/{random.randint(low, high)}"
                started = time.perf_counter()
                writer.write(
                    f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n".encode()
                )
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if int(status_line.split()[1]) != expected:
                    unexpected += 1
        except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
            errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return Load(
        requests=len(latencies),
        seconds=elapsed,
        p50_ms=pick(0.50) if latencies else float("nan"),
        p99_ms=pick(0.99) if latencies else float("nan"),
        unexpected=unexpected,
        socket_errors=errors,
    )


# --------------------------------------------------------------------------- servers


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (uvicorn's workers), from /proc, children first."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in children.read_text().split()]
        except OSError:  # a thread that ended meanwhile
            continue
    return found + [below for child in found for below in _descendants(child)]


def _tree_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its live descendants."""
    total = 0.0
    for each in (pid, *_descendants(pid)):
        try:
            total += _cpu_seconds(each)
        except (OSError, IndexError):  # a process that exited meanwhile
            continue
    return total


class Server:
    """uvicorn serving the app of one stack, in a process of its own (with ``workers`` > 1,
    a master and that many worker processes); ``env``: more environment for the app;
    ``log``: a file for the server's stderr (default: this process's); ``log_level``:
    uvicorn's."""

    def __init__(
        self,
        stack: str,
        url: str,
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        log_level: str = "warning",
    ) -> None:
        self.port = _free_port()
        environment = {
            **os.environ, "BENCH_STACK": stack, "BENCH_URL": url, "PYTHONPATH": str(ROOT),
            **(env or {}),
        }  # fmt: skip
        more = ["--workers", str(workers)] if workers > 1 else []
        self._log = log.open("ab") if log is not None else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "benchmarks._http_app:app", "--host",
             "127.0.0.1", "--port", str(self.port), "--log-level", log_level,
             "--no-access-log", *more],
            cwd=ROOT, env=environment, stderr=self._log,
        )  # fmt: skip
        try:
            self._wait_until_serving()
        except BaseException:
            self.stop()
            raise

    def _wait_until_serving(self) -> None:
        give_up_at = time.monotonic() + 30
        while time.monotonic() < give_up_at:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)  # polling a port that is not open yet
        raise RuntimeError("the server did not start within 30 s")

    def cpu(self) -> float:
        """CPU seconds of the server: its process and its workers'."""
        return _tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for pid in _descendants(self.process.pid):  # uvicorn's workers, if any
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            self.process.kill()
            self.process.wait()
        finally:
            if self._log is not None:
                self._log.close()


# --------------------------------------------------------------------------- the run


def measure(
    server: Server, workload: str, seconds: float, warmup: float, use_wrk: bool
) -> dict[str, float]:
    def load(duration: float) -> Load:
        if use_wrk:
            return run_wrk(server.port, workload, duration)
        return asyncio.run(run_python_client(server.port, workload, duration))

    if warmup:
        load(warmup)
    before = server.cpu()
    result = load(seconds)
    cpu = server.cpu() - before
    return {
        **asdict(result),
        "rps": result.requests / result.seconds if result.seconds else 0.0,
        "cpu_ms_per_request": 1000 * cpu / result.requests if result.requests else float("nan"),
    }


def _ratio(mine: float, plain: Cell | None, key: str) -> str:
    return f"{mine / plain.median(key):.2f}" if plain and plain.median(key) else "–"


def report(cells: dict[tuple[str, str], Cell], stacks: list[str], workloads: list[str]) -> str:
    lines = []
    for workload in workloads:
        method, connections, expected = WORKLOADS[workload]
        lines += [
            f"\n## {workload}: {method} /items/{{id}}, {connections} connections, "
            f"expects {expected}\n",
            "| stack | req/s (spread) | vs plain | CPU ms/req | vs plain | p50 ms | p99 ms "
            "| p99 vs plain | unexpected | socket errors |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        plain = cells.get(("plain", workload))
        for stack in stacks:
            cell = cells[(stack, workload)]
            rps, cpu, p99 = (cell.median(k) for k in ("rps", "cpu_ms_per_request", "p99_ms"))
            spread = (
                f"{min(r['rps'] for r in cell.rounds):.0f}–{max(r['rps'] for r in cell.rounds):.0f}"
            )

            unexpected = sum(r["unexpected"] for r in cell.rounds)
            socket_errors = sum(r["socket_errors"] for r in cell.rounds)
            cells_text = [
                stack,
                f"{rps:.0f} ({spread})",
                _ratio(rps, plain, "rps"),
                f"{cpu:.3f}",
                _ratio(cpu, plain, "cpu_ms_per_request"),
                f"{cell.median('p50_ms'):.1f}",
                f"{p99:.1f}",
                _ratio(p99, plain, "p99_ms"),
                f"{unexpected:.0f}",
                f"{socket_errors:.0f}",
            ]
            lines.append(f"| {' | '.join(cells_text)} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http", description=__doc__)
    parser.add_argument("--url", help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--stacks", default=",".join(STACKS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per cell")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--out", type=Path, help="directory for results.json and results.md")
    args = parser.parse_args(argv)
    for name, allowed in (("stacks", STACKS), ("workloads", tuple(WORKLOADS))):
        chosen = getattr(args, name).split(",")
        unknown = sorted(set(chosen) - set(allowed))
        if unknown:
            parser.error(f"unknown {name} {unknown}; choose from {', '.join(allowed)}")
        setattr(args, name, chosen)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)
    client = "wrk" if use_wrk else "the built-in asyncio client"
    with tempfile.TemporaryDirectory() as scratch:
        url = args.url or f"sqlite:///{Path(scratch) / 'bench.db'}"
        database = Database(url)

        async def setup() -> None:
            await prepare(database)
            await database.dispose()

        asyncio.run(setup())
        cells = {(s, w): Cell(s, w) for s in args.stacks for w in args.workloads}
        for round_number in range(args.rounds):
            shift = round_number % len(args.stacks)
            for stack in args.stacks[shift:] + args.stacks[:shift]:
                server = Server(stack, url)
                try:
                    for workload in args.workloads:
                        result = measure(server, workload, args.duration, args.warmup, use_wrk)
                        cells[(stack, workload)].rounds.append(result)
                        print(
                            f"round {round_number + 1} {stack} {workload}: "
                            f"{result['rps']:.0f} req/s, "
                            f"{result['cpu_ms_per_request']:.3f} ms CPU/req",
                            file=sys.stderr,
                        )
                finally:
                    server.stop()
    command = " ".join(argv if argv is not None else sys.argv[1:])
    header = (
        f"# HTTP benchmark: {args.rounds} rounds of {args.duration:g} s, load by {client}, "
        f"medians\n\n`python -m benchmarks.http {command}`"
    )
    text = header + "\n" + report(cells, args.stacks, args.workloads)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(text + "\n")
        (args.out / "results.json").write_text(
            json.dumps({"client": client, "cells": [asdict(c) for c in cells.values()]}, indent=1)
        )
    bad = sum(r["unexpected"] + r["socket_errors"] for c in cells.values() for r in c.rounds)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
