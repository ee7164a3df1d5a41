"""The readable table, the JSON results and the optional chart."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

COLUMNS = (
    ("stack", "{stack}"),
    ("clients", "{clients}"),
    ("ops/s", "{ops_per_s:.0f}"),
    ("spread", "{spread}"),
    ("vs peer", "{vs_peer}"),
    ("vs peer_ping", "{vs_peer_ping}"),
    ("vs raw", "{vs_raw}"),
    ("lat p50/p99 ms", "{lat}"),
    ("wait p99/max ms", "{wait}"),
    ("p99/max wait ÷ ideal", "{fair}"),
    ("starved", "{starved}"),
    ("errors", "{errors}"),
    ("conns opened (per 1k ops)", "{churn}"),
    ("peak out/server", "{peaks}"),
    ("CPU us/op", "{cpu_us_per_op:.0f}"),
    ("stmts/op", "{statements_per_op:.1f}"),
    ("round trips/op", "{trips}"),
    ("RSS MB", "{peak_rss_mb:.0f}"),
)


def _ratio(value: float, base: float | None) -> str:
    return "" if not base or math.isnan(base) else f"{value / base:.2f}"


def table(summaries: list[dict[str, Any]]) -> str:
    """One table per workload: a row per stack and client count, with ratios."""
    lines: list[str] = []
    for workload in dict.fromkeys(s["workload"] for s in summaries):
        rows = [s for s in summaries if s["workload"] == workload]
        lines += ["", f"## {workload}", ""]
        lines.append("| " + " | ".join(name for name, _ in COLUMNS) + " |")
        lines.append("|" + "---|" * len(COLUMNS))
        for row in rows:
            same = {s["stack"]: s["ops_per_s"] for s in rows if s["clients"] == row["clients"]}
            low, high = row["ops_per_s_spread"]
            errors = ", ".join(f"{k} {v}" for k, v in row["errors"].items()) or "0"
            if row["writes_verified"] is False:
                errors += " LOST WRITES"
            values = {
                **row,
                "spread": f"{low:.0f}-{high:.0f}",
                "vs_peer": _ratio(row["ops_per_s"], same.get("peer")),
                "vs_peer_ping": _ratio(row["ops_per_s"], same.get("peer_ping")),
                "vs_raw": _ratio(row["ops_per_s"], same.get("raw")),
                "lat": f"{row['latency_ms']['p50']:.1f} / {row['latency_ms']['p99']:.1f}",
                "wait": f"{row['wait_ms']['p99']:.1f} / {row['wait_ms']['max']:.0f}",
                "fair": ""
                if row["p99_wait_vs_ideal"] is None
                else f"{row['p99_wait_vs_ideal']} / {row['max_wait_vs_ideal']}",
                "churn": f"{row['connects']} ({row['connects_per_1k_ops']:.1f})",
                "trips": "" if row["round_trips_per_op"] is None else row["round_trips_per_op"],
                "starved": f"{row['starved']} (oldest {row['oldest_in_flight_s']:.1f} s)"
                if row["starved"]
                else "0",
                "errors": errors,
                "peaks": f"{row['peak_checked_out']} / {row['peak_server_connections'] or '-'}",
            }
            lines.append("| " + " | ".join(fmt.format(**values) for _, fmt in COLUMNS) + " |")
        notes = sorted({row["note"] for row in rows if row["note"]})
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines)


def write_results(out: Path, results: dict[str, Any]) -> list[Path]:
    """``results.json``, ``results.md`` and, with matplotlib installed, ``chart.png``."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "results.md"]
    written[0].write_text(json.dumps(results, indent=2, default=str))
    written[1].write_text(results["table"] + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart skipped: pip install 'atom_async_db[bench]' (matplotlib) to get chart.png")
        return written
    summaries = results["summaries"]
    workloads = list(dict.fromkeys(s["workload"] for s in summaries))
    figure, axes = plt.subplots(2, len(workloads), figsize=(6 * len(workloads), 8), squeeze=False)
    for column, workload in enumerate(workloads):
        for stack in dict.fromkeys(s["stack"] for s in summaries):
            rows = [s for s in summaries if s["workload"] == workload and s["stack"] == stack]
            clients = [s["clients"] for s in rows]
            axes[0][column].plot(clients, [s["ops_per_s"] for s in rows], marker="o", label=stack)
            axes[1][column].plot(clients, [s["latency_ms"]["p99"] for s in rows], marker="o")
        axes[0][column].set_title(f"{workload}: throughput (ops/s)")
        axes[1][column].set_title(f"{workload}: p99 latency (ms)")
        for row in (0, 1):
            axes[row][column].set_xscale("log")
            axes[row][column].set_xlabel("clients")
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(out / "chart.png", dpi=100)
    written.append(out / "chart.png")
    return written
