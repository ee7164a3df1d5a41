"""Settings: one place that turns a URL, keyword options and environment variables into
validated :class:`Settings`, shared by the async core and the sync compatibility layer.

Precedence: explicit keyword > environment variable > per-dialect default.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from ._masking import mask_mapping, mask_url
from ._urls import ACCEPTED_URL_FORMS, ASYNCPG_SECONDS, Dialect, normalise_url
from ._values import (
    application_name,
    choice,
    class_option,
    int_at_least,
    non_negative_float,
    overflow,
    parse_bool,
    pool_name,
    positive_float,
    recycle,
    url_list,
)
from .exceptions import ConfigurationError, EmbeddedDatabaseError

logger = logging.getLogger("atom_async_db")

#: Where the embedded SQLite database lives when ``DATABASE_URL`` is not set.
EMBEDDED_DATABASE_FILENAME = "atom.db"

__all__ = [
    "ASYNCPG_SECONDS",
    "EMBEDDED_DATABASE_FILENAME",
    "OPTIONS",
    "Dialect",
    "Settings",
    "build_settings",
]

# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class _Option:
    env: str
    parse: Callable[[object, str], Any]
    postgresql: Any
    sqlite: Any


#: Every option ``configure()`` and ``Database()`` accept besides ``url`` and ``engine_options``.
OPTIONS: Mapping[str, _Option] = {
    # SQLite: every transaction holds the database's single write lock (BEGIN IMMEDIATE), so
    # one connection per loop queues sessions in order; more connections only poll the
    # lock in SQLite's busy handler: same throughput, p99 wait twice the ideal queueing wait
    # instead of 1.2-1.4 times (benchmarks/README.md, ours against ours_pool5).
    "pool_size": _Option("ATOM_DB_POOL_SIZE", int_at_least(1), 20, 1),
    "max_overflow": _Option("ATOM_DB_MAX_OVERFLOW", overflow, 30, 0),
    "pool_timeout": _Option("ATOM_DB_POOL_TIMEOUT", positive_float, 30.0, 30.0),
    "pool_recycle": _Option("ATOM_DB_POOL_RECYCLE", recycle, 1800, -1),
    "pool_pre_ping": _Option("ATOM_DB_POOL_PRE_PING", parse_bool, True, False),
    # How long a free connection beyond pool_size is kept before a timer closes it.
    "pool_max_idle": _Option("ATOM_DB_POOL_MAX_IDLE", positive_float, 10.0, 10.0),
    "echo": _Option("ATOM_DB_ECHO", parse_bool, False, False),
    "application_name": _Option(
        "ATOM_DB_APPLICATION_NAME", application_name, "atom_async_db", "atom_async_db"
    ),
    "cleanup_timeout": _Option("ATOM_DB_CLEANUP_TIMEOUT", positive_float, 5.0, 5.0),
    # How long dispose() waits for the sessions open when it starts before it stops them:
    # within the 30 s an orchestrator gives by default between SIGTERM and SIGKILL, after
    # the server's own wait for its requests.
    "drain_timeout": _Option("ATOM_DB_DRAIN_TIMEOUT", non_negative_float, 10.0, 10.0),
    # How long a driver call that a cancellation interrupted may still run so that its
    # connection can be kept (see _cancel); past it, the call is cancelled on the server.
    "cancel_grace": _Option("ATOM_DB_CANCEL_GRACE", non_negative_float, 0.5, 0.5),
    "sqlite_busy_timeout": _Option("ATOM_DB_SQLITE_BUSY_TIMEOUT", positive_float, 30.0, 30.0),
    # How long a SQLite read may hold the event loop's thread before it moves to the
    # connection's thread (see _sqlite_here); 0 sends every statement there.
    "sqlite_loop_limit": _Option("ATOM_DB_SQLITE_LOOP_LIMIT", non_negative_float, 0.005, 0.005),
    # The legacy layer's sync engine (threads, scripts, `def` routes) has a pool of its own,
    # on PostgreSQL sized like the async pool unless set (None). On SQLite it has no limit:
    # its reads take no lock there (see _engine) and the write lock, not the pool, queues
    # writers, while a limit would deadlock a route's session and the service it calls.
    "sync_pool_size": _Option("ATOM_DB_SYNC_POOL_SIZE", int_at_least(1), None, 5),
    "sync_max_overflow": _Option("ATOM_DB_SYNC_MAX_OVERFLOW", overflow, None, -1),
    # A connection pooler between the application and PostgreSQL ("pgbouncer", in any pool
    # mode): no prepared statements that outlive a transaction, and a bounded wait for the
    # pooler's server connections (see _pooler). Also settable in the URL (?server_pooler=).
    "server_pooler": _Option("ATOM_DB_SERVER_POOLER", choice("none", "pgbouncer"), "none", "none"),
    # Read replicas: sessions opened with replica=True go to one of them (see _replicas);
    # a replica behind by more than max_replica_lag seconds, or down, is skipped, which
    # each replica's check (one query, every replica_check_interval at most) tells.
    "replica_urls": _Option("ATOM_DB_REPLICA_URLS", url_list, (), ()),
    "max_replica_lag": _Option("ATOM_DB_MAX_REPLICA_LAG", positive_float, 5.0, 5.0),
    "replica_check_interval": _Option("ATOM_DB_REPLICA_CHECK_INTERVAL", positive_float, 1.0, 1.0),
    # How many processes of this application share the server, for the start-up budget
    # check (see _budget); unset: WEB_CONCURRENCY, which gunicorn and uvicorn read, else 1.
    "worker_processes": _Option("ATOM_DB_WORKER_PROCESSES", int_at_least(1), None, None),
    # Operations (see _leaks, _watch): each off unless set, in seconds.
    # A connection checked out longer than this is reported, with where it was taken.
    "leak_threshold": _Option("ATOM_DB_LEAK_THRESHOLD", positive_float, None, None),
    # A transaction left idle this long between two of its statements (an HTTP call
    # inside a session block) is reported.
    "idle_in_transaction_threshold": _Option(
        "ATOM_DB_IDLE_IN_TRANSACTION_THRESHOLD", positive_float, None, None
    ),
    # Statements slower than this are logged, without their parameters.
    "slow_statement_threshold": _Option(
        "ATOM_DB_SLOW_STATEMENT_THRESHOLD", positive_float, None, None
    ),
    # The pools' name in statistics and metrics; unset: host, port and database.
    "pool_name": _Option("ATOM_DB_POOL_NAME", pool_name, None, None),
    # What a sync session used on an event loop's thread does: warn, or raise (strict).
    "sync_on_event_loop": _Option(
        "ATOM_DB_SYNC_ON_EVENT_LOOP", choice("warn", "error"), "warn", "warn"
    ),
    # The application's own session classes (SQLModel's), which ours are composed with.
    "session_class": _Option(
        "ATOM_DB_SESSION_CLASS", class_option(Session, "sqlmodel.Session"), None, None
    ),
    "async_session_class": _Option(
        "ATOM_DB_ASYNC_SESSION_CLASS",
        class_option(AsyncSession, "sqlmodel.ext.asyncio.session.AsyncSession"),
        None,
        None,
    ),
}


def _session_classes(
    sync: type[Session] | None, asynchronous: type[AsyncSession] | None
) -> tuple[type[Session], type[AsyncSession]]:
    """The sync class of every session (the legacy API's, and the one under each
    ``AsyncSession``) and the ``AsyncSession`` class: one option may imply the other.

    The sync class is the more derived of ``session_class`` and the async class's own
    ``sync_session_class`` (SQLModel's ``AsyncSession`` names SQLModel's ``Session``), so
    that each async method finds the sync method it calls.

    Raises:
        ConfigurationError: neither sync class derives from the other.
    """
    asynchronous = asynchronous or AsyncSession
    beneath = asynchronous.sync_session_class
    sync = sync or Session
    if issubclass(beneath, sync):
        sync = beneath
    elif not issubclass(sync, beneath):
        raise ConfigurationError(
            f"session_class {sync.__qualname__} must be a subclass of "
            f"{beneath.__module__}.{beneath.__qualname__}, the sync_session_class of "
            f"async_session_class {asynchronous.__qualname__}, whose methods call it"
        )
    return sync, asynchronous


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one database; immutable, so engines can be rebuilt from it."""

    url: URL
    """The URL the async engine connects with (asyncpg or aiosqlite)."""
    sync_url: URL
    """The URL the legacy layer's sync engine connects with: the sync driver the original URL
    named (``psycopg2``, ``psycopg``, ``pysqlite``), else psycopg 3 or sqlite3."""
    dialect: Dialect
    memory: bool
    """True for an in-memory SQLite database (a named shared-cache database, see ``_engine``)."""
    pool_size: int
    max_overflow: int
    pool_timeout: float
    pool_recycle: int
    pool_pre_ping: bool
    pool_max_idle: float
    echo: bool
    application_name: str
    cleanup_timeout: float
    drain_timeout: float
    cancel_grace: float
    sqlite_busy_timeout: float
    sqlite_loop_limit: float
    sync_pool_size: int
    sync_max_overflow: int
    sync_on_event_loop: Literal["warn", "error"]
    server_pooler: Literal["none", "pgbouncer"]
    replica_urls: tuple[URL, ...]
    """The async URLs of the read replicas (none: every session goes to ``url``)."""
    max_replica_lag: float
    replica_check_interval: float
    worker_processes: int | None
    leak_threshold: float | None
    idle_in_transaction_threshold: float | None
    slow_statement_threshold: float | None
    pool_name: str | None
    session_class: type[Session]
    """The sync class of every session: the legacy API's, and the one under each
    ``AsyncSession`` (``sqlalchemy.orm.Session`` unless the application names its own)."""
    async_session_class: type[AsyncSession]
    """The class of every ``AsyncSession`` (``sqlalchemy.ext.asyncio.AsyncSession`` unless
    the application names its own); the library composes its own behaviour with both."""
    engine_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def display_url(self) -> str:
        return mask_url(self.url)

    @property
    def stats_name(self) -> str:
        """The pools' name in statistics and metrics: ``pool_name``, else host, port and
        database (``/path/to/file.db`` for SQLite), never the user or password.
        """
        if self.pool_name is not None:
            return self.pool_name
        url = self.url
        if self.dialect == "sqlite":
            return f"sqlite:{url.database or ''}"
        # (A Unix socket's directory, or several hosts, come in the query: ?host=&port=)
        host = url.host or _joined(url.query.get("host")) or "localhost"
        port = url.port or _joined(url.query.get("port")) or 5432
        return f"{host}:{port}/{url.database or ''}"

    # ``pool_timeout`` bounds three waits, each named where it is used:
    @property
    def connect_timeout(self) -> float:
        """Seconds opening a PostgreSQL connection may take, unless the URL sets
        ``connect_timeout`` (asyncpg's own default is 60 s): ``pool_timeout``.
        """
        return self.pool_timeout

    @property
    def test_turn_timeout(self) -> float:
        """Seconds a session waits for its turn on a test transaction's one connection
        (``atom_async_db.testing``): ``pool_timeout``.
        """
        return self.pool_timeout

    def __repr__(self) -> str:
        shown = {
            name: mask_url(value)
            if isinstance(value, URL)
            else tuple(map(mask_url, value))
            if name == "replica_urls"
            else mask_mapping(value)
            if isinstance(value, Mapping)
            else value
            for name, value in vars(self).items()
        }
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())})"


def _joined(value: str | tuple[str, ...] | None) -> str:
    return ",".join(value) if isinstance(value, tuple) else value or ""


# Settings a URL's query may carry, which are ours, not a driver's: libpq would take
# application_name from the URL, but asyncpg takes it only from server_settings (see
# _engine), and server_pooler is no driver's at all.
_OURS_IN_URLS = ("server_pooler", "application_name")


def _set_in(environ: Mapping[str, str], name: str) -> bool:
    """Whether the environment sets option ``name`` (blank is unset, as for every option)."""
    return bool(environ.get(OPTIONS[name].env, "").strip())


def _refuse_prepared_statements(async_url: URL, sync_url: URL) -> None:
    """Behind a pooler, a URL must not turn prepared statements back on.

    Raises:
        ConfigurationError: it does (a cache size other than 0, a ``prepare_threshold``).
    """
    turned_on = [
        f"{name}={url.query[name]}"
        for url, name, off in (
            (async_url, "statement_cache_size", "0"),
            (async_url, "prepared_statement_cache_size", "0"),
            (sync_url, "prepare_threshold", "none"),
        )
        if name in url.query and str(url.query[name]).strip().lower() != off
    ]
    if turned_on:
        raise ConfigurationError(
            f"the URL sets {', '.join(turned_on)}, which turns prepared statements back on, "
            "while server_pooler='pgbouncer' turns them off: behind a pooler in transaction "
            "mode they fail, or return another statement's rows. Remove it from the URL."
        )


def _replica_urls(urls: tuple[str | URL, ...], dialect: Dialect) -> tuple[URL, ...]:
    """The replicas' async URLs.

    Raises:
        ConfigurationError: the database is not PostgreSQL, or a replica URL is invalid or
            not PostgreSQL.
    """
    if dialect != "postgresql":
        raise ConfigurationError(
            "replica_urls are for PostgreSQL streaming replicas; this database is SQLite, "
            "which has none: leave replica_urls unset"
        )
    checked = []
    for raw in urls:
        async_url, _, replica_dialect, _ = normalise_url(raw)
        if replica_dialect != "postgresql":
            raise ConfigurationError(f"replica_urls must be PostgreSQL URLs, got {mask_url(raw)!r}")
        # The primary's settings apply to its replicas.
        checked.append(async_url.difference_update_query(_OURS_IN_URLS))
    return tuple(checked)


def _resolve_url(url: str | URL | None, environ: Mapping[str, str]) -> str | URL:
    if url is not None:
        return url
    from_env = environ.get("DATABASE_URL", "").strip()
    if from_env:
        return from_env
    path = Path.cwd() / EMBEDDED_DATABASE_FILENAME
    if parse_bool(environ.get("ATOM_DB_REQUIRE_URL", ""), "ATOM_DB_REQUIRE_URL"):
        raise EmbeddedDatabaseError(
            "DATABASE_URL is not set and ATOM_DB_REQUIRE_URL forbids the embedded SQLite "
            f"fallback; set DATABASE_URL (accepted forms: {ACCEPTED_URL_FORMS})"
        )
    logger.warning(
        "DATABASE_URL is not set: using the embedded SQLite database %s. Set DATABASE_URL "
        "to use another database, or ATOM_DB_REQUIRE_URL=1 to make this an error.",
        path,
    )
    return f"sqlite+aiosqlite:///{path}"


def build_settings(
    url: str | URL | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    engine_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Settings:
    """Validate ``url`` and ``options`` (falling back to the environment) into :class:`Settings`.

    Raises:
        ConfigurationError: a setting is unknown or invalid (the message names it and
            what it accepts).
    """
    environ = os.environ if environ is None else environ
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        hints = [
            f"{name!r} (did you mean {match[0]!r}?)"
            if (match := difflib.get_close_matches(name, OPTIONS, 1))
            else repr(name)
            for name in unknown
        ]
        raise ConfigurationError(
            f"unknown option {', '.join(hints)}; accepted options: url, engine_options, "
            + ", ".join(OPTIONS)
        )
    async_url, sync_url, dialect, memory = normalise_url(_resolve_url(url, environ))
    values: dict[str, Any] = {}
    for name, option in OPTIONS.items():
        if name in options and options[name] is not None:
            values[name] = option.parse(options[name], name)
        elif environ.get(option.env, "").strip():
            values[name] = option.parse(environ[option.env], option.env)
        else:
            values[name] = getattr(option, dialect)
    for name in _OURS_IN_URLS:
        if name in async_url.query:
            from_url = async_url.query[name]
            async_url = async_url.difference_update_query([name])
            sync_url = sync_url.difference_update_query([name])
            if options.get(name) is None and not _set_in(environ, name):
                values[name] = OPTIONS[name].parse(from_url, f"{name} in the URL")
    if dialect == "sqlite" and values["server_pooler"] != "none":
        raise ConfigurationError(
            "server_pooler is for PostgreSQL behind a connection pooler such as PgBouncer; "
            "this database is SQLite, which runs in the process: leave server_pooler unset"
        )
    if values["server_pooler"] != "none":
        _refuse_prepared_statements(async_url, sync_url)
    if values["replica_urls"]:
        values["replica_urls"] = _replica_urls(values["replica_urls"], dialect)
    values["session_class"], values["async_session_class"] = _session_classes(
        values["session_class"], values["async_session_class"]
    )
    for name in ("pool_size", "max_overflow"):
        if values[f"sync_{name}"] is None:
            values[f"sync_{name}"] = values[name]
    if engine_options is not None and not isinstance(engine_options, Mapping):
        raise ConfigurationError(
            "engine_options must be a mapping of create_async_engine() keywords, "
            f"got {type(engine_options).__name__}"
        )
    return Settings(
        url=async_url,
        sync_url=sync_url,
        dialect=dialect,
        memory=memory,
        engine_options=dict(engine_options or {}),
        **values,
    )
