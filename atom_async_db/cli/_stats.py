"""``atom-db stats``: an application's connection pools, read from its ``/metrics``
(``atom_async_db.prometheus``) and shown as a table, one row per pool, refreshed in place.

The figures are OpenTelemetry's database-client metrics as Prometheus names them, each
labelled with ``db_client_connection_pool_name``: connections used and idle, the pool's
maximum, the callers waiting, timeouts and checkouts since the process started, and the
wait and use percentiles read from the histograms' buckets. A percentile so read is the
upper bound of the bucket that holds it: "≤ 2.5 ms" means at most 2.5 ms. When refreshing,
the rates are those since the previous refresh.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from .._masking import mask_url
from ._command import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, Command, fail, positive_seconds

__all__ = ["COMMAND"]

POOL = "db_client_connection_pool_name"
_STATE = "db_client_connection_state"
_CLEAR = "\033[H\033[2J"  # cursor home, clear the screen
_EPILOG = """\
exit status:
  0   shown (--once), or ended with Ctrl-C
  2   the URL could not be fetched, or is not Prometheus text
  64  bad usage, or prometheus_client is not installed

examples:
  atom-db stats http://127.0.0.1:8000             # /metrics appended, every 2 s
  atom-db stats http://app:8000/metrics --once    # one table, for scripts"""

# sample name -> the figure it is, for the samples that are one number per pool
_GAUGES = {
    "db_client_connection_max": "max",
    "db_client_connection_pending_requests": "waiting",
    "db_client_connection_timeouts_total": "timeouts",
    "atom_db_checkouts_total": "checkouts",
}
_HISTOGRAMS = {
    "db_client_connection_wait_time_seconds_bucket": "wait",
    "db_client_connection_use_time_seconds_bucket": "use",
}


class _FetchError(Exception):
    """The metrics could not be fetched or parsed; the message says why."""


@dataclass
class _Pool:
    """One pool's figures in one exposition."""

    figures: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


@dataclass
class _Frame:
    at: float  # time.monotonic() of the fetch
    pools: dict[str, _Pool]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url",
        help="the application's /metrics URL, or its base URL (an empty path gets /metrics)",
    )
    parser.add_argument("--once", action="store_true", help="print one table and exit")
    parser.add_argument(
        "--interval",
        type=positive_seconds,
        default=2.0,
        metavar="S",
        help="seconds between refreshes (default: 2)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=5.0,
        metavar="S",
        help="seconds a fetch may take (default: 5)",
    )


def metrics_url(url: str) -> str:
    """``url`` with ``http://`` when it has no scheme, and ``/metrics`` when no path."""
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/metrics")
    return urlunsplit(parts)


def _run(args: argparse.Namespace) -> int:
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        return fail(
            "stats",
            "reading /metrics needs prometheus_client: pip install 'atom_async_db[prometheus]'",
            EXIT_USAGE,
        )
    url = metrics_url(args.url)
    shown_url = mask_url(url)
    tty = sys.stdout.isatty()
    previous: _Frame | None = None
    try:
        while True:
            try:
                text = _fetch(url, args.timeout)
                frame = _Frame(time.monotonic(), _parse(text, text_string_to_metric_families))
            except _FetchError as error:
                if previous is None or args.once:
                    return fail("stats", f"cannot read {shown_url}: {error}", EXIT_UNAVAILABLE)
                print(f"{time.strftime('%H:%M:%S')}  cannot read {shown_url}: {error}", flush=True)
            else:
                table = render(frame, previous, f"{shown_url} at {time.strftime('%H:%M:%S')}")
                sys.stdout.write((_CLEAR if tty else "") + table + ("" if tty else "\n"))
                sys.stdout.flush()
                previous = frame
            if args.once:
                return EXIT_OK
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def _fetch(url: str, timeout: float) -> str:
    """The body at ``url``.

    Raises:
        _FetchError: the server could not be reached, or answered with an error.
    """
    request = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            charset = response.headers.get_content_charset() or "utf-8"
            return str(response.read().decode(charset, errors="replace"))
    except urllib.error.HTTPError as error:
        raise _FetchError(f"HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise _FetchError(str(error.reason)) from None
    except (OSError, ValueError) as error:  # a timeout while reading; a malformed URL
        raise _FetchError(f"{type(error).__name__}: {error}") from None


def _parse(text: str, families_of: Callable[[str], Iterable[object]]) -> dict[str, _Pool]:
    """Each pool's figures in Prometheus exposition ``text``, by pool (its name, and any
    label of the exporter's own beyond the pool name and the connection state).

    Raises:
        _FetchError: ``text`` is not Prometheus text.
    """
    pools: dict[str, _Pool] = {}
    try:
        samples = [sample for family in families_of(text) for sample in family.samples]  # type: ignore[attr-defined]
    except Exception as error:  # the parser raises ValueError, IndexError, ...
        raise _FetchError(f"not Prometheus text ({type(error).__name__}: {error})") from None
    for sample in samples:
        name, labels, value = sample.name, dict(sample.labels), float(sample.value)
        if POOL not in labels:
            continue
        state = labels.pop(_STATE, None)
        bound = labels.pop("le", None)
        pool_name = labels.pop(POOL)
        extra = ",".join(f"{key}={labels[key]}" for key in sorted(labels))
        pool = pools.setdefault(f"{pool_name}{{{extra}}}" if extra else pool_name, _Pool())
        if name == "db_client_connection_count" and state in ("used", "idle"):
            pool.figures[state] = pool.figures.get(state, 0.0) + value
        elif name in _GAUGES:
            pool.figures[_GAUGES[name]] = value
        elif name in _HISTOGRAMS and bound is not None:
            pool.buckets.setdefault(_HISTOGRAMS[name], []).append((float(bound), value))
    return pools


def bucket_bound(buckets: list[tuple[float, float]], quantile: float) -> float | None:
    """The upper bound of the bucket holding the sample of rank ``quantile`` in cumulative
    ``(le, count)`` buckets (``inf`` for the last); None without samples.
    """
    ordered = sorted(buckets)
    total = ordered[-1][1] if ordered else 0.0
    if total <= 0:
        return None
    rank = quantile * total
    return next(bound for bound, seen in ordered if seen >= rank)


def _bound_text(buckets: list[tuple[float, float]] | None, quantile: float) -> str:
    bound = bucket_bound(buckets or [], quantile)
    if bound is None:
        return "-"
    if bound == math.inf:
        finite = [b for b, _ in buckets or [] if b != math.inf]
        return f"> {_duration(max(finite))}" if finite else "-"
    return f"≤ {_duration(bound)}"


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"  # noqa: RUF001 (the micro sign is meant)
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value == int(value) else f"{value:g}"


def _rate(frame: _Frame, previous: _Frame | None, key: str, figure: str) -> str:
    if previous is None or key not in previous.pools:
        return "-"
    now, before = frame.pools[key].figures.get(figure), previous.pools[key].figures.get(figure)
    elapsed = frame.at - previous.at
    if now is None or before is None or now < before or elapsed <= 0:
        return "-"  # (a counter that went back: the application restarted)
    return f"{(now - before) / elapsed:.1f}"


_COLUMNS = ("used", "idle", "max", "waiting", "timeouts", "checkouts")


def render(frame: _Frame, previous: _Frame | None, title: str) -> str:
    """The table of ``frame``: one row per pool; rates since ``previous`` when given."""
    if not frame.pools:
        return (
            f"{title}\nno atom_async_db pool figures there (db_client_connection_* "
            f"labelled {POOL}): is atom_async_db.prometheus serving it, and has the "
            "application opened its database yet?\n"
        )
    header = ["pool", *_COLUMNS]
    rates = previous is not None
    if rates:
        header += ["checkouts/s", "timeouts/s"]
    header += ["wait p50", "wait p99", "use p50", "use p99"]
    rows = [header]
    for key in sorted(frame.pools):
        pool = frame.pools[key]
        row = [key, *(_number(pool.figures.get(column)) for column in _COLUMNS)]
        if rates:
            row += [
                _rate(frame, previous, key, "checkouts"),
                _rate(frame, previous, key, "timeouts"),
            ]
        for histogram in ("wait", "use"):
            buckets = pool.buckets.get(histogram)
            row += [_bound_text(buckets, 0.50), _bound_text(buckets, 0.99)]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    note = "percentiles: the bound of the histogram bucket that holds them, since start"
    return f"{title}\n" + "\n".join(lines) + f"\n({note})\n"


COMMAND = Command(
    name="stats",
    help="show an application's connection pools from its /metrics, refreshed",
    description=(__doc__ or "").strip(),
    add_arguments=_add_arguments,
    run=_run,
    epilog=_EPILOG,
)
