"""Metrics export: what the OpenTelemetry and Prometheus exporters share, the buckets
they export and each pool name's figures.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._stats import HISTOGRAMS, PoolCounters, PoolStats, sum_stats

__all__ = ["EXPORT_BOUNDS", "by_name"]

#: Seconds, 0.1 ms to 100 s in steps of 1, 2.5 and 5: bounds of ``_stats.BOUNDS``, so that
#: each exported cumulative count is exact.
EXPORT_BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0,
)  # fmt: skip


def _gone(stats: PoolStats) -> PoolCounters:
    """The counters of ``stats``'s pools that are gone (an event loop's that ended): its
    totals minus those of the pools alive.
    """
    alive = sum_stats(stats.name, stats.pools, PoolCounters())
    rest = PoolCounters(stats.name)
    rest.opened = stats.connections_opened - alive.connections_opened
    rest.closed = stats.connections_closed - alive.connections_closed
    rest.discarded = stats.connections_discarded - alive.connections_discarded
    rest.checkouts = stats.checkouts - alive.checkouts
    rest.timeouts = stats.timeouts - alive.timeouts
    for name in HISTOGRAMS:
        total, kept, histogram = getattr(stats, name), getattr(alive, name), getattr(rest, name)
        histogram.counts = [
            all_ - alive_
            for all_, alive_ in zip(total.bucket_counts, kept.bucket_counts, strict=True)
        ]
        if any(histogram.counts):
            histogram.total = max(0.0, total.sum - kept.sum)
            histogram.maximum = total.max
    return rest


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
        gone.setdefault(stats.name if pool_name is None else pool_name, PoolCounters()).add(
            _gone(stats)
        )
    return {
        name: sum_stats(name, alive.get(name, ()), gone.get(name, PoolCounters()))
        for name in sorted(alive.keys() | gone.keys())
    }
