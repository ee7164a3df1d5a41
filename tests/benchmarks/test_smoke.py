"""The benchmark harness runs end to end and its write check can fail. (Speed itself is
measured by the benchmarks, never asserted here.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from atom_async_db import Database
from atom_async_db._cancel import guard_of
from atom_async_db._settings import build_settings
from benchmarks._runner import run_cell
from benchmarks._stacks import DEFAULT_STACKS, STACKS, Ours, User, prepare

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("backend", ["sqlite_file", "postgres"], indirect=True)
def test_a_tiny_run_reports_every_cell_and_verifies_writes(
    backend_url: str, tmp_path: Path
) -> None:
    command = [
        sys.executable, "-m", "benchmarks", "--quick", "--url", backend_url,
        "--concurrency", "4", "--warmup", "0.1", "--duration", "0.3", "--out", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "## read" in result.stdout and "## write" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    summaries = results["summaries"]
    assert {(s["stack"], s["workload"]) for s in summaries} == {
        (stack, workload) for stack in DEFAULT_STACKS for workload in ("read", "write")
    }
    for summary in summaries:
        assert summary["ops_per_s"] > 0
        assert summary["errors"] == {}
        assert set(summary["latency_ms"]) == {"p50", "p95", "p99"}
        assert set(summary["wait_ms"]) == {"p50", "p99", "max"}
        assert summary["writes_verified"] is (True if summary["workload"] == "write" else None)
    assert (tmp_path / "results.md").read_text().startswith("\n## read")


class ClaimsWritesItNeverMade(Ours):
    name = "claims_writes"

    async def op(self, workload: str, key: int) -> float:
        return await super().op("read", key)  # reports success, writes nothing


async def test_the_write_check_catches_a_stack_that_loses_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    database = Database(url)
    await prepare(database)

    async def counter_sum() -> int:
        async with database.get_async_db_session() as session:
            return int(await session.scalar(select(func.sum(User.counter))) or 0)

    stack = ClaimsWritesItNeverMade(database.settings.url, "sqlite")
    cell = await run_cell(
        stack, "write", 2, 0, warmup=0.05, duration=0.1, server_dsn=None, counter_sum=counter_sum
    )
    assert cell.ops_per_s > 0
    assert cell.writes_verified is False
    await database.dispose()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_the_cancel_storm_command_compares_both_stacks(backend_url: str) -> None:
    command = [
        sys.executable, "-m", "benchmarks.cancel_storm", "--url", backend_url,
        "--tasks", "30", "--mechanisms", "task.cancel",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| plain") or
            line.startswith("| ours")]  # fmt: skip
    assert len(rows) == 2, result.stdout
    assert "µs with the cancellation guard" in result.stdout


@pytest.mark.parametrize("backend", ["sqlite_file", "postgres"], indirect=True)
async def test_the_stacks_that_turn_the_ping_and_the_guard_off(backend_url: str) -> None:
    settings = build_settings(backend_url)
    for name, guarded in (("ours_noping", True), ("ours_unguarded", False)):
        stack = STACKS[name](settings.url, settings.dialect)
        await stack.start()
        assert isinstance(stack, Ours)
        try:
            await prepare(stack.database)
            await stack.op("read", 1)
            async with stack.database.engine.connect() as connection:
                raw = (await connection.get_raw_connection()).driver_connection
            assert (guard_of(raw) is not None) is guarded, name
            if name == "ours_noping":
                assert stack.database.settings.pool_pre_ping is False
        finally:
            await stack.stop()


@pytest.mark.skipif(
    shutil.which("valgrind") is None, reason="needs valgrind (apt install valgrind)"
)
def test_the_instruction_count_command(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "benchmarks.instructions", "--url", f"sqlite:///{tmp_path / 'i.db'}",
        "--stacks", "ours_unguarded", "--ops", "5",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    row = re.search(r"^\| ours_unguarded \| ([\d,]+)k \|$", result.stdout, re.MULTILINE)
    assert row is not None and int(row.group(1).replace(",", "")) > 0, result.stdout


def test_the_sqlite_loop_stall_command_measures_every_case(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "benchmarks.sqlite_loop", "--duration", "0.2", "--out", str(tmp_path)
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [(row["case"], row["sqlite_loop_limit"]) for row in rows] == [
        (case, limit)
        for case in (
            "read, 50 tasks",
            "write, 50 tasks",
            "long read, 1 task",
            "lock wait, 10 tasks",
        )
        for limit in ("5 ms", "0 ms")
    ]
    assert all(row["ops_per_s"] > 0 for row in rows), rows
