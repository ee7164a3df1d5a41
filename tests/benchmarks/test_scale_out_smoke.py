"""The scale-out benchmark runs end to end: uvicorn with two workers, direct to PostgreSQL
and through a PgBouncer of its own (small pools, NullPool), driven by wrk. (Speed is
measured by the benchmark, never asserted here.)"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from benchmarks.scale_out import pgbouncer_binary
from tests.fixtures.backends import IN_CI
from tests.helpers import asyncpg_dsn

ROOT = Path(__file__).resolve().parents[2]


def _require(tool: str, found: bool) -> None:
    if not found:
        reason = f"{tool} is not installed (apt install {tool})"
        if IN_CI:
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)


def test_a_tiny_scale_out_run_reports_every_cell(postgres_url: str, tmp_path: Path) -> None:
    _require("wrk", shutil.which("wrk") is not None)
    _require("pgbouncer", pgbouncer_binary() is not None)
    command = [
        sys.executable, "-m", "benchmarks.scale_out", "--url", postgres_url,
        "--seconds", "1", "--warmup", "0", "--workers", "2", "--connections", "20",
        "--configs", "direct,pgbouncer,nullpool", "--out", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "report.md").read_text().startswith("# Scale-out: 2 uvicorn workers")
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert [(c["config"], c["connections"]) for c in cells] == [
        ("direct", 20),
        ("pgbouncer", 20),
        ("nullpool", 20),
    ]
    for cell in cells:
        [measured] = cell["rounds"]
        assert measured["requests"] > 0, cell
        assert measured["max_backends"] > 0, cell
        assert measured["app_cpu_ms_per_request"] > 0, cell
        if cell["config"] != "direct":
            assert measured["unexpected"] == measured["socket_errors"] == 0, cell
            assert measured["too_many_clients_lines"] == 0, cell
            assert measured["max_bouncer_servers"] > 0, cell
    database = json.loads((tmp_path / "results.json").read_text())["database"]
    assert database.startswith("atom_bench_scale_")
    assert not asyncio.run(_database_exists(postgres_url, database))  # dropped at the end


async def _database_exists(url: str, name: str) -> bool:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return bool(await connection.fetchval("select 1 from pg_database where datname = $1", name))
    finally:
        await connection.close()
