"""The HTTP benchmark runs end to end: real uvicorn servers, the built-in client, every
workload's status checked. (Speed is measured by the benchmark, never asserted here.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_tiny_http_run_reports_every_cell(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "benchmarks.http", "--client", "python", "--rounds", "1",
        "--duration", "0.3", "--warmup", "0", "--stacks", "plain,asyncdb,sync_def",
        "--out", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "load by the built-in asyncio client" in result.stdout
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert {(c["stack"], c["workload"]) for c in cells} == {
        (stack, workload)
        for stack in ("plain", "asyncdb", "sync_def")
        for workload in ("read", "write", "notfound", "read200")
    }
    for cell in cells:
        [measured] = cell["rounds"]
        assert measured["requests"] > 0, cell
        assert measured["unexpected"] == measured["socket_errors"] == 0, cell
        assert measured["cpu_ms_per_request"] > 0, cell
