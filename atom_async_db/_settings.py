"""Settings: one place that turns a URL, keyword options and environment variables into
validated :class:`Settings`, shared by the async core and the sync compatibility layer.

Precedence: explicit keyword > environment variable > per-dialect default.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ._masking import mask_mapping, mask_url
from .exceptions import ConfigurationError, DriverNotInstalledError, EmbeddedDatabaseError

logger = logging.getLogger("atom_async_db")

#: Where the embedded SQLite database lives when ``DATABASE_URL`` is not set.
EMBEDDED_DATABASE_FILENAME = "atom.db"

Dialect = Literal["postgresql", "sqlite"]

# URL driver -> the sync driver the legacy layer uses for it.
_POSTGRES_DRIVERS = {
    "": "psycopg",
    "asyncpg": "psycopg",
    "psycopg": "psycopg",
    "psycopg2": "psycopg2",
}
_SQLITE_DRIVERS = {"": "pysqlite", "aiosqlite": "pysqlite", "pysqlite": "pysqlite"}
ACCEPTED_URL_FORMS = (
    "postgresql+asyncpg://user:password@host:5432/dbname (also postgresql://, postgres://, "
    "postgresql+psycopg://, postgresql+psycopg2://), "
    "sqlite+aiosqlite:///path/to/file.db (also sqlite:///path/to/file.db), "
    "sqlite://, sqlite:/// or sqlite:///:memory: for an in-memory database"
)
# libpq spellings that asyncpg names differently, so existing deployments' URLs work as they are.
_ASYNCPG_QUERY_RENAMES = {"sslmode": "ssl", "connect_timeout": "timeout"}
#: asyncpg connect() arguments in seconds, which it needs as numbers (a URL gives strings).
ASYNCPG_SECONDS = ("timeout", "command_timeout")


# --------------------------------------------------------------------------- options


def _parse_bool(value: object, label: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
    raise ConfigurationError(f"{label} must be a boolean (true/false, 1/0, yes/no), got {value!r}")


def _number(value: object, label: str, kind: type[int] | type[float], expectation: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigurationError(f"{label} must be {expectation}, got {value!r}")
    try:
        number = kind(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise ConfigurationError(f"{label} must be {expectation}, got {value!r}") from None
    if kind is int and isinstance(value, float) and number != value:
        raise ConfigurationError(f"{label} must be {expectation}, got {value!r}")
    return number


def _int_at_least(minimum: int) -> Callable[[object, str], int]:
    expectation = f"a whole number >= {minimum}"

    def parse(value: object, label: str) -> int:
        number = int(_number(value, label, int, expectation))
        if number < minimum:
            raise ConfigurationError(f"{label} must be {expectation}, got {value!r}")
        return number

    return parse


def _positive_float(value: object, label: str) -> float:
    number = _number(value, label, float, "a number of seconds > 0")
    if not number > 0:
        raise ConfigurationError(f"{label} must be a number of seconds > 0, got {value!r}")
    return number


def _non_negative_float(value: object, label: str) -> float:
    number = _number(value, label, float, "a number of seconds >= 0")
    if not number >= 0:
        raise ConfigurationError(f"{label} must be a number of seconds >= 0, got {value!r}")
    return number


def _recycle(value: object, label: str) -> int:
    expectation = "a whole number of seconds >= 1, or -1 to never recycle"
    number = int(_number(value, label, int, expectation))
    if number != -1 and number < 1:
        raise ConfigurationError(f"{label} must be {expectation}, got {value!r}")
    return number


def _choice(*choices: str) -> Callable[[object, str], str]:
    def parse(value: object, label: str) -> str:
        lowered = value.strip().lower() if isinstance(value, str) else value
        if lowered not in choices:
            raise ConfigurationError(
                f"{label} must be one of {', '.join(map(repr, choices))}, got {value!r}"
            )
        return str(lowered)

    return parse


def _overflow(value: object, label: str) -> int:
    expectation = "a whole number >= 0, or -1 for no limit"
    number = int(_number(value, label, int, expectation))
    if number < -1:
        raise ConfigurationError(f"{label} must be {expectation}, got {value!r}")
    return number


def _application_name(value: object, label: str) -> str:
    if not isinstance(value, str) or not value or len(value.encode()) > 63:
        raise ConfigurationError(
            f"{label} must be a non-empty string of at most 63 bytes, got {value!r}"
        )
    return value


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
    "pool_size": _Option("ATOM_DB_POOL_SIZE", _int_at_least(1), 20, 1),
    "max_overflow": _Option("ATOM_DB_MAX_OVERFLOW", _overflow, 30, 0),
    "pool_timeout": _Option("ATOM_DB_POOL_TIMEOUT", _positive_float, 30.0, 30.0),
    "pool_recycle": _Option("ATOM_DB_POOL_RECYCLE", _recycle, 1800, -1),
    "pool_pre_ping": _Option("ATOM_DB_POOL_PRE_PING", _parse_bool, True, False),
    "echo": _Option("ATOM_DB_ECHO", _parse_bool, False, False),
    "application_name": _Option(
        "ATOM_DB_APPLICATION_NAME", _application_name, "atom_async_db", "atom_async_db"
    ),
    "cleanup_timeout": _Option("ATOM_DB_CLEANUP_TIMEOUT", _positive_float, 5.0, 5.0),
    # How long dispose() waits for the sessions open when it starts before it stops them:
    # within the 30 s an orchestrator gives by default between SIGTERM and SIGKILL, after
    # the server's own wait for its requests.
    "drain_timeout": _Option("ATOM_DB_DRAIN_TIMEOUT", _non_negative_float, 10.0, 10.0),
    # How long a driver call that a cancellation interrupted may still run so that its
    # connection can be kept (see _cancel); past it, the call is cancelled on the server.
    "cancel_grace": _Option("ATOM_DB_CANCEL_GRACE", _non_negative_float, 0.5, 0.5),
    "sqlite_busy_timeout": _Option("ATOM_DB_SQLITE_BUSY_TIMEOUT", _positive_float, 30.0, 30.0),
    # The legacy layer's sync engine (threads, scripts, `def` routes) has a pool of its own,
    # on PostgreSQL sized like the async pool unless set (None). On SQLite it has no limit:
    # its reads take no lock there (see _engine) and the write lock, not the pool, queues
    # writers, while a limit would deadlock a route's session and the service it calls.
    "sync_pool_size": _Option("ATOM_DB_SYNC_POOL_SIZE", _int_at_least(1), None, 5),
    "sync_max_overflow": _Option("ATOM_DB_SYNC_MAX_OVERFLOW", _overflow, None, -1),
    # What a sync session used on an event loop's thread does: warn, or raise (strict).
    "sync_on_event_loop": _Option(
        "ATOM_DB_SYNC_ON_EVENT_LOOP", _choice("warn", "error"), "warn", "warn"
    ),
}


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
    echo: bool
    application_name: str
    cleanup_timeout: float
    drain_timeout: float
    cancel_grace: float
    sqlite_busy_timeout: float
    sync_pool_size: int
    sync_max_overflow: int
    sync_on_event_loop: Literal["warn", "error"]
    engine_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def display_url(self) -> str:
        return mask_url(self.url)

    # ``pool_timeout`` bounds three waits, each named where it is used:
    @property
    def connect_timeout(self) -> float:
        """Seconds opening a PostgreSQL connection may take, unless the URL sets
        ``connect_timeout`` (asyncpg's own default is 60 s): ``pool_timeout``."""
        return self.pool_timeout

    @property
    def test_turn_timeout(self) -> float:
        """Seconds a session waits for its turn on a test transaction's one connection
        (``atom_async_db.testing``): ``pool_timeout``."""
        return self.pool_timeout

    def __repr__(self) -> str:
        shown = {
            name: mask_url(value)
            if isinstance(value, URL)
            else mask_mapping(value)
            if isinstance(value, Mapping)
            else value
            for name, value in vars(self).items()
        }
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())})"


def _resolve_url(url: str | URL | None, environ: Mapping[str, str]) -> str | URL:
    if url is not None:
        return url
    from_env = environ.get("DATABASE_URL", "").strip()
    if from_env:
        return from_env
    path = Path.cwd() / EMBEDDED_DATABASE_FILENAME
    if _parse_bool(environ.get("ATOM_DB_REQUIRE_URL", ""), "ATOM_DB_REQUIRE_URL"):
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


def _unsupported(raw: str | URL, reason: str) -> ConfigurationError:
    return ConfigurationError(
        f"unsupported database URL {mask_url(raw)!r}: {reason}. "
        f"Accepted forms: {ACCEPTED_URL_FORMS}"
    )


# A host name, an IP address (v6 without its brackets, perhaps with a zone), a user name.
_PLAUSIBLE = re.compile(r"[\w.:%+-]*")


def _parse_url(raw: str | URL) -> URL:
    """``make_url(raw)``, or a :class:`ConfigurationError` that says what is wrong with it.

    Raised outside the ``except`` block: the parser's own error, which may quote the
    password (a non-numeric "port"), must not ride along as the context.
    """
    url: URL | None = raw if isinstance(raw, URL) else None
    if url is None:
        with contextlib.suppress(ArgumentError, ValueError, TypeError):
            url = make_url(raw)
    # The parser takes the last '@' of the text as the end of the user info (an '@' in the
    # query moves it), and the host is whatever follows: a host or user name that no server
    # could have is a misreading, and may hold part of the password.
    if url is None or not all(
        _PLAUSIBLE.fullmatch(part) for part in (url.host, url.username) if part is not None
    ):
        raise _unsupported(raw, _why_unparsable(str(raw)))
    return url


def _why_unparsable(text: str) -> str:
    if "://" not in text:
        if "=" in text and not text.lstrip().lower().startswith(("postgres", "sqlite")):
            why = (
                "it looks like a libpq keyword/value string (host=... dbname=...), not a URL; "
                "write it as postgresql://user:password@host:port/dbname"
            )
        else:
            why = "there is no '://' after the scheme"
    elif text.count("@") > 1:
        why = "it has more than one '@'; percent-encode an '@' in the password as %40"
    elif any(c.isspace() for c in text.strip()):
        why = "it contains whitespace; percent-encode a space in the password as %20"
    else:
        why = (
            "the port must be a number, and '/', '?', '#', '@' and ':' in the user name or "
            "password must be percent-encoded"
        )
    return f"it could not be parsed ({why})"


def _require(module: str, what: str, install: str) -> None:
    try:
        __import__(module)
    except ImportError as exc:
        raise DriverNotInstalledError(
            f"{what} needs the {module!r} package, which is not installed: pip install {install}"
        ) from exc


def _normalise_url(raw: str | URL) -> tuple[URL, URL, Dialect, bool]:
    """(async URL, sync URL, dialect, in-memory) for a URL as users write it."""
    if not isinstance(raw, (str, URL)):
        raise ConfigurationError(f"the database URL must be a string, got {type(raw).__name__}")
    url = _parse_url(raw)
    backend, _, driver = url.drivername.partition("+")
    if backend in {"postgresql", "postgres"}:
        if driver and driver not in _POSTGRES_DRIVERS:
            raise _unsupported(raw, f"unknown PostgreSQL driver {driver!r}")
        other_secrets = [key for key in url.query if "pass" in key.lower() and key != "password"]
        if other_secrets:
            raise _unsupported(
                raw,
                f"its query sets {', '.join(map(repr, other_secrets))}, which this library does "
                "not pass on (names are case-sensitive); the login password goes in the user "
                "info (postgresql://user:password@host/dbname) or as ?password=",
            )
        if "password" in url.query:
            # libpq reads a password from the query too; kept there, SQLAlchemy would show
            # it in every repr of the URL and the engine, so it moves where it is hidden.
            password = url.query["password"]
            if not isinstance(password, str):  # ?password=a&password=b
                raise _unsupported(raw, "its query sets password more than once")
            url = url.set(password=password).difference_update_query(["password"])
        # No database name: asyncpg and libpq both default it (PGDATABASE, else the user
        # name), so it is left to them.
        _require("asyncpg", "PostgreSQL", "'atom_async_db[postgres]'")
        libpq_names = {v: k for k, v in _ASYNCPG_QUERY_RENAMES.items()}
        async_query = {_ASYNCPG_QUERY_RENAMES.get(k, k): v for k, v in url.query.items()}
        for name in ASYNCPG_SECONDS:
            if name in async_query:
                label = f"{libpq_names.get(name, name)} in the URL"
                _number(async_query[name], label, float, "a number of seconds")
        sync_query = {libpq_names.get(k, k): v for k, v in url.query.items()}
        return (
            url.set(drivername="postgresql+asyncpg", query=async_query),
            url.set(drivername=f"postgresql+{_POSTGRES_DRIVERS[driver]}", query=sync_query),
            "postgresql",
            False,
        )
    if backend == "sqlite":
        if driver and driver not in _SQLITE_DRIVERS:
            raise _unsupported(raw, f"unknown SQLite driver {driver!r}")
        if url.username or url.password or url.host or "password" in url.query:
            raise _unsupported(
                raw,
                "a SQLite URL names a file, and has no user, password or host "
                "(sqlite:///relative/path.db, sqlite:////absolute/path.db)",
            )
        _require("aiosqlite", "SQLite", "aiosqlite")
        database = url.database or ""
        if database in {"", ":memory:"}:
            # Each plain ":memory:" connection is a database of its own; a named shared-cache
            # database lets every connection of every event loop and thread see the same data.
            name = f"atom-memory-{secrets.token_hex(8)}"
            memory_url = URL.create(
                "sqlite+aiosqlite",
                database=f"file:{name}",
                query={"mode": "memory", "cache": "shared", "uri": "true"},
            )
            return memory_url, memory_url.set(drivername="sqlite+pysqlite"), "sqlite", True
        if url.query.get("uri") not in {"true", "1"}:
            # Resolve now, so a later chdir() cannot point another loop or thread elsewhere.
            database = os.path.abspath(database)
        file_url = url.set(database=database)
        return (
            file_url.set(drivername="sqlite+aiosqlite"),
            file_url.set(drivername="sqlite+pysqlite"),
            "sqlite",
            False,
        )
    raise _unsupported(raw, f"unknown database dialect {backend!r}")


def build_settings(
    url: str | URL | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    engine_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Settings:
    """Validate ``url`` and ``options`` (falling back to the environment) into :class:`Settings`.

    Raises :class:`ConfigurationError` naming the wrong setting and what it accepts.
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
    async_url, sync_url, dialect, memory = _normalise_url(_resolve_url(url, environ))
    values: dict[str, Any] = {}
    for name, option in OPTIONS.items():
        if name in options and options[name] is not None:
            values[name] = option.parse(options[name], name)
        elif environ.get(option.env, "").strip():
            values[name] = option.parse(environ[option.env], option.env)
        else:
            values[name] = getattr(option, dialect)
    if "application_name" in async_url.query:
        # libpq takes it from the URL, asyncpg only from server_settings: move it there.
        from_url = async_url.query["application_name"]
        async_url = async_url.difference_update_query(["application_name"])
        sync_url = sync_url.difference_update_query(["application_name"])
        if "application_name" not in options and not environ.get("ATOM_DB_APPLICATION_NAME"):
            values["application_name"] = _application_name(from_url, "application_name in the URL")
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
