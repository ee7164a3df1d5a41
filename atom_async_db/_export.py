"""Metrics export: what the OpenTelemetry and Prometheus exporters share, the buckets
they export and each pool name's figures.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._stats import PoolCounters, PoolStats, sum_stats

__all__ = ["EXPORT_BOUNDS", "by_name"]

#: Seconds, 0.1 ms to 100 s in steps of 1, 2.5 and 5: bounds of ``_stats.BOUNDS``, so that
#: each exported cumulative count is exact.
EXPORT_BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0,
)  # fmt: skip


def by_name(sources: Iterable[tuple[PoolStats, str | None]]) -> dict[str, PoolStats]:
    """The figures of each pool name, from ``(database.pool_stats(), pool_name)`` pairs:
    the pools alive of each name summed (``.pools`` holds them: empty when none is), and
    the counts of pools that are gone under their database's name.
    """
    alive: dict[str, list[PoolStats]] = {}
    gone: dict[str, PoolCounters] = {}
    for stats, pool_name in sources:
        for pool in stats.pools:
            alive.setdefault(pool.name if pool_name is None else pool_name, []).append(pool)
        if stats.retired is not None:
            name = stats.name if pool_name is None else pool_name
            gone.setdefault(name, PoolCounters()).add_snapshot(stats.retired)
    return {
        name: sum_stats(name, alive.get(name, ()), gone.get(name, PoolCounters()))
        for name in sorted(alive.keys() | gone.keys())
    }
