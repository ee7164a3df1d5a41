"""``atom-db check``: connect with the configured settings, and report the server, the
settings in effect, the round-trip time and what may go wrong under load.

The settings are the application's: ``--url``, else ``DATABASE_URL``, else the embedded
SQLite file, and every other option from its ``ATOM_DB_*`` variable. Warnings, printed
without changing the exit status:

- PostgreSQL: the pools' worst case (each worker process's async pool, per event loop,
  plus the legacy layer's sync pool, times the processes) above what the server accepts
  (``max_connections`` less ``superuser_reserved_connections``), or behind PgBouncer
  above its ``max_client_conn`` (and in session mode its ``default_pool_size``); the
  arithmetic is the start-up check's (``_startup``), with both pools counted.
- A pool without a limit (``max_overflow=-1``; on PostgreSQL ``sync_max_overflow`` too).
- A SQLite file that was not in WAL mode (``PRAGMA journal_mode`` on the file, read
  before connecting), or that stays out of it on this connection. Connecting turns WAL
  on, as the application's first connection does; WAL persists in the file.
- What the library itself logs while connecting (a pooler that answers unannounced, the
  embedded fallback).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sqlite3
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import exc
from sqlalchemy.engine import URL, make_url

from .._database import Database
from .._masking import MASK, mask_mapping, mask_url
from .._settings import OPTIONS, Settings
from .._startup import FACTS_QUERY, budget, pgbouncer_config, worker_count
from ..exceptions import ConfigurationError, DatabaseUnavailableError
from ._command import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, Command, fail, positive_seconds

__all__ = ["COMMAND"]

_PINGS = 5
_EPILOG = """\
exit status:
  0   connected (the warnings, if any, are printed above the last line)
  2   cannot connect: the message says what failed (the password masked)
  64  bad usage or configuration: the message names the setting

examples:
  atom-db check                                   # DATABASE_URL and ATOM_DB_* as the app
  atom-db check --url postgresql://app@db/atom    # another database, same ATOM_DB_*
  WEB_CONCURRENCY=4 atom-db check                 # the budget of 4 worker processes"""


class _Unreachable(Exception):
    """The database could not be reached or read; the message says why (masked)."""


class _Collector(logging.Handler):
    """The library's warnings while the check runs, to print among the check's own."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclasses.dataclass
class _Report:
    lines: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    version: str = ""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help="the database URL (default: DATABASE_URL, else the embedded SQLite ./atom.db)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=5.0,
        metavar="S",
        help="seconds each ping, the connection included, may take (default: 5)",
    )


def _run(args: argparse.Namespace) -> int:
    raw_url = args.url if args.url is not None else os.environ.get("DATABASE_URL", "").strip()
    secrets = _passwords([raw_url, os.environ.get("ATOM_DB_REPLICA_URLS", "")])
    library = logging.getLogger("atom_async_db")
    collector = _Collector()
    library.addHandler(collector)
    try:
        try:
            database = Database(args.url)
        except ConfigurationError as error:
            return fail("check", _scrub(f"configuration error: {error}", secrets), EXIT_USAGE)
        settings = database.settings
        secrets |= _passwords([settings.url, settings.sync_url, *settings.replica_urls])
        source = "--url" if args.url is not None else "DATABASE_URL" if raw_url else "default"
        _print(_settings_lines(settings, source, os.environ), secrets)
        try:
            report = asyncio.run(_inspect(database, args.timeout))
        except (_Unreachable, DatabaseUnavailableError) as error:
            message = str(error)
            if not message.startswith("cannot connect"):
                message = f"cannot connect: {message}"
            return fail("check", _scrub(message, secrets), EXIT_UNAVAILABLE)
    finally:
        library.removeHandler(collector)
    report.warnings[:0] = [
        message
        for message in collector.messages
        if not message.startswith("connection budget")  # (ours counts both pools)
    ]
    report.warnings += _unlimited_pools(settings)
    lines = [*report.lines, ""]
    if report.warnings:
        lines += ["warnings", *(f"  - {warning}" for warning in report.warnings), ""]
    count = len(report.warnings)
    plural = "" if count == 1 else "s"
    lines.append(f"OK: connected to {report.version}; {count or 'no'} warning{plural}")
    _print(lines, secrets)
    return EXIT_OK


async def _inspect(database: Database, limit: float) -> _Report:
    """Connect, ping, and read what the server says about itself; each step within
    ``limit`` seconds.

    Raises:
        _Unreachable: the SQLite file does not exist, or a query after the ping failed.
        DatabaseUnavailableError: the ping failed (what ``Database.ping`` raises).
    """
    settings = database.settings
    report = _Report()
    path = _sqlite_file(settings)
    before = None
    if path is not None:
        if not path.exists():
            raise _Unreachable(
                f"the SQLite file {path} does not exist (the application creates it at its "
                "first connection); run the check where the application runs, or pass --url"
            )
        before = _journal_mode_of(path)
    try:
        connect = await database.ping(timeout=limit)
        trips = [await database.ping(timeout=limit) for _ in range(_PINGS)]
        async with asyncio.timeout(limit), database.engine.connect() as connection:
            if settings.dialect == "postgresql":
                version = await connection.exec_driver_sql("SHOW server_version")
                report.version = f"PostgreSQL {version.scalar_one()}"
                facts: Any = (await connection.exec_driver_sql(FACTS_QUERY)).one()
                after = None
            else:
                version = await connection.exec_driver_sql("SELECT sqlite_version()")
                report.version = f"SQLite {version.scalar_one()}"
                mode = await connection.exec_driver_sql("PRAGMA journal_mode")
                after = str(mode.scalar_one()).lower()
        pgbouncer = None
        if settings.server_pooler != "none":
            pgbouncer = await asyncio.to_thread(pgbouncer_config, settings)
    except DatabaseUnavailableError:
        raise  # (an OSError: what the ping says is enough)
    except TimeoutError:  # (an OSError too)
        raise _Unreachable(
            f"the database {settings.display_url} did not answer within {limit:g} s"
        ) from None
    except (exc.SQLAlchemyError, OSError) as error:
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise _Unreachable(
            f"the database {settings.display_url} failed a query: {type(error).__name__}: "
            f"{first_line}"
        ) from error
    finally:
        await database.dispose()
    report.lines += [
        "server",
        f"  {'version':<32}{report.version}",
        f"  {'first ping':<32}{_ms(connect)} (with a new connection)",
        f"  {'round trip':<32}{_ms(statistics.median(trips))} (median of {_PINGS} pings)",
    ]
    if settings.dialect == "postgresql":
        _budget(settings, int(facts[1]), int(facts[2]), pgbouncer, report)
    elif path is not None:
        _journal_mode(path, before, after, report)
    return report


def _budget(
    settings: Settings,
    max_connections: int,
    reserved: int,
    pgbouncer: dict[str, str] | None,
    report: _Report,
) -> None:
    """The pools' worst case against what the server, or PgBouncer, accepts: the
    start-up check's arithmetic, with both pools counted.
    """
    found = budget(settings, {"async", "sync"}, max_connections, reserved, pgbouncer)
    report.lines += [
        "",
        "connection budget",
        f"  {'server accepts':<32}{max_connections - reserved} (max_connections "
        f"{max_connections} - superuser_reserved_connections {reserved})",
        f"  {'this application, worst case':<32}{found.arithmetic}",
    ]
    if settings.server_pooler != "none":
        if pgbouncer is None:
            report.lines.append(
                f"  {'PgBouncer':<32}its limits could not be read (SHOW CONFIG on its admin "
                "console needs the user in admin_users or stats_users)"
            )
        else:
            report.lines.append(
                f"  {'PgBouncer':<32}max_client_conn {pgbouncer.get('max_client_conn')}, "
                f"pool_mode {pgbouncer.get('pool_mode')}, default_pool_size "
                f"{pgbouncer.get('default_pool_size')}"
            )
    report.warnings += [
        f"{warning} (The sync pool counts when legacy sync code runs in these processes; "
        "with more than one event loop per process, add an async pool per loop.)"
        for warning in found.warnings
    ]


def _unlimited_pools(settings: Settings) -> list[str]:
    """The warnings for a pool without a limit, which no server budget can fit (SQLite's
    sync pool has none by design: its write lock, not the pool, queues the writers).
    """
    unlimited = ["max_overflow"] if settings.max_overflow == -1 else []
    if settings.dialect == "postgresql" and settings.sync_max_overflow == -1:
        unlimited.append("sync_max_overflow")
    return [
        f"{name}=-1: the pool has no limit, so a burst opens as many connections as it has "
        "callers, until the server refuses them; set a number"
        for name in unlimited
    ]


def _sqlite_file(settings: Settings) -> Path | None:
    if settings.dialect != "sqlite" or settings.memory or not settings.url.database:
        return None
    return Path(settings.url.database)


def _journal_mode_of(path: Path) -> str | None:
    """The file's journal mode, read without changing anything; None if it cannot be read."""
    try:
        connection = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    except sqlite3.Error:
        return None
    finally:
        connection.close()


def _journal_mode(path: Path, before: str | None, after: str | None, report: _Report) -> None:
    shown = f"{before or 'unknown'} (before connecting), {after} (on this connection)"
    report.lines += ["", "SQLite file", f"  {'path':<32}{path}", f"  {'journal_mode':<32}{shown}"]
    if after != "wal":
        report.warnings.append(
            f"{path} is in journal_mode={after}, not WAL, and stayed so when this check "
            "asked for WAL: another process holds it open in that mode, the file system "
            "has no shared memory (a network file system), or the file is read-only. "
            "Outside WAL, readers and the writer block each other"
        )
    elif before not in (None, "wal"):
        report.warnings.append(
            f"{path} was in journal_mode={before}, not WAL, until this check connected and "
            "turned WAL on (as the application's first connection does; it persists in the "
            "file). A tool that recreates the file, or sets another journal mode, undoes it"
        )


def _settings_lines(settings: Settings, source: str, environ: Mapping[str, str]) -> list[str]:
    """The effective settings, one a line, each URL and password masked; those that the
    environment set say which variable did.
    """
    url_source = {
        "--url": "from --url",
        "DATABASE_URL": "from DATABASE_URL",
        "default": "the embedded default: DATABASE_URL is not set",
    }[source]
    lines = [f"atom-db check: {mask_url(settings.url)} ({url_source})", "", "settings"]
    for field in dataclasses.fields(settings):
        value = _shown(getattr(settings, field.name))
        option = OPTIONS.get(field.name)
        if option is not None and environ.get(option.env, "").strip():
            value += f"  (from {option.env})"
        lines.append(f"  {field.name:<32}{value}")
    workers, worker_source = worker_count(settings)
    lines.append(f"  {'(worker processes)':<32}{workers} ({worker_source})")
    return [*lines, ""]


def _shown(value: Any) -> str:
    if isinstance(value, URL):
        return mask_url(value)
    if isinstance(value, tuple):
        return ", ".join(_shown(item) for item in value) or "none"
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, Mapping):
        return repr(mask_mapping(value)) if value else "{}"
    if value is None:
        return "unset"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _passwords(urls: Iterable[str | URL]) -> set[str]:
    """The passwords in ``urls``, to scrub from anything printed (``mask_url`` is the
    first defence; this one catches a driver's message that would quote one).
    """
    found: set[str] = set()
    for url in urls:
        if not url:
            continue
        for text in str(url).split(",") if isinstance(url, str) else [url]:
            try:
                parsed = make_url(text) if isinstance(text, str) else text
            except Exception:
                continue
            for password in (parsed.password, parsed.query.get("password")):
                if isinstance(password, str) and len(password) >= 4:
                    found.add(password)
                    found.add(quote(password, safe=""))
    return found


def _scrub(text: str, secrets: set[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _print(lines: list[str], secrets: set[str]) -> None:
    print(_scrub("\n".join(lines), secrets), flush=True)


COMMAND = Command(
    name="check",
    help="connect with the configured settings and report what may go wrong",
    description=(__doc__ or "").strip(),
    add_arguments=_add_arguments,
    run=_run,
    epilog=_EPILOG,
)
