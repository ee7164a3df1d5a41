"""Database URLs: the forms users write (``postgresql://``, ``postgres://``,
``sqlite:///``, psycopg2 and asyncpg spellings, libpq query names), checked and turned into
the URLs of the async engine and of the legacy layer's sync engine.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ._masking import mask_url
from .exceptions import ConfigurationError, DriverNotInstalledError

__all__ = [
    "ACCEPTED_URL_FORMS",
    "ASYNCPG_COUNTS",
    "ASYNCPG_SECONDS",
    "PSYCOPG_ONLY",
    "Dialect",
    "normalise_url",
    "prepare_threshold",
]

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
#: asyncpg connect() arguments (and SQLAlchemy's asyncpg dialect's) that are counts.
ASYNCPG_COUNTS = (
    "statement_cache_size",
    "prepared_statement_cache_size",
    "max_cached_statement_lifetime",
    "max_cacheable_statement_size",
)
#: psycopg connect() arguments that are no libpq parameters: the sync engine's alone.
PSYCOPG_ONLY = ("prepare_threshold",)
# One URL feeds both drivers, and each rejects the other's parameters (libpq: "invalid
# connection option"; asyncpg: TypeError): each of these goes to its own driver only.
_ASYNCPG_ONLY = ("command_timeout", *ASYNCPG_COUNTS)


def _unsupported(raw: str | URL, reason: str) -> ConfigurationError:
    return ConfigurationError(
        f"unsupported database URL {mask_url(raw)!r}: {reason}. "
        f"Accepted forms: {ACCEPTED_URL_FORMS}"
    )


# A host name, an IP address (v6 without its brackets, perhaps with a zone), a user name.
_PLAUSIBLE = re.compile(r"[\w.:%+-]*")
_QUERY_KEY = re.compile(r"[\w.-]+")


def _parse_url(raw: str | URL) -> URL:
    """``make_url(raw)``, or a :class:`ConfigurationError` that says what is wrong with it.

    Raised outside the ``except`` block: the parser's own error, which may quote the
    password (a non-numeric "port"), must not ride along as the context.

    Raises:
        ConfigurationError: ``raw`` is not a URL (the message says why, without the
            password).
    """  # noqa: DOC501 (_unsupported() is a ConfigurationError)
    url: URL | None = raw if isinstance(raw, URL) else None
    if url is None:
        with contextlib.suppress(ArgumentError, ValueError, TypeError):
            url = make_url(raw)
    # The parser takes the last '@' of the text as the end of the user info (an '@' in the
    # query moves it), and the host is whatever follows: a host or user name that no server
    # could have is a misreading, and may hold part of the password.
    # A second '@' (the password's, unencoded) can also land in the path or the query, and
    # a stray slash can move the user info into the database name.
    if (
        url is None
        or not all(
            _PLAUSIBLE.fullmatch(part) for part in (url.host, url.username) if part is not None
        )
        or (isinstance(raw, str) and raw.count("@") > 1)
        or "@" in (url.database or "")
        or (not url.drivername.startswith("sqlite") and ":" in (url.database or ""))
        or not all(_QUERY_KEY.fullmatch(key) for key in url.query)
        or (url.port is not None and not 0 < url.port <= 65535)
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
    elif "@" in text.partition("://")[2].partition("/")[2]:
        why = (
            "the user info ends up in the database name; write two slashes after the "
            "scheme (scheme://user:password@host/dbname) and percent-encode a '/' in the "
            "user name or password as %2F"
        )
    elif any(c.isspace() for c in text.strip()):
        why = "it contains whitespace; percent-encode a space in the password as %20"
    else:
        why = (
            "the port must be a number from 1 to 65535, and '/', '?', '#', '@' and ':' in "
            "the user name or password must be percent-encoded"
        )
    return f"it could not be parsed ({why})"


def _require(module: str, what: str, install: str) -> None:
    try:
        __import__(module)
    except ImportError as exc:
        raise DriverNotInstalledError(
            f"{what} needs the {module!r} package, which is not installed: pip install {install}"
        ) from exc


def normalise_url(raw: str | URL) -> tuple[URL, URL, Dialect, bool]:
    """(async URL, sync URL, dialect, in-memory) for a URL as users write it.

    Raises:
        ConfigurationError: the URL is not a string, cannot be parsed, or names a backend
            or driver that is not supported.
        DriverNotInstalledError: the URL's driver is not installed.
    """  # noqa: DOC501 (_unsupported() is a ConfigurationError)
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
                _check_seconds(async_query[name], f"{libpq_names.get(name, name)} in the URL")
        for name in ASYNCPG_COUNTS:
            if name in async_query:
                _check_count(async_query[name], f"{name} in the URL")
        if "prepare_threshold" in url.query:
            prepare_threshold(url.query["prepare_threshold"])
        async_query = {k: v for k, v in async_query.items() if k not in PSYCOPG_ONLY}
        sync_query = {
            libpq_names.get(k, k): v for k, v in url.query.items() if k not in _ASYNCPG_ONLY
        }
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


def _check_seconds(value: object, label: str) -> None:
    number = None
    with contextlib.suppress(TypeError, ValueError):
        number = float(value)  # type: ignore[arg-type]
    if number is None:
        raise ConfigurationError(f"{label} must be a number of seconds, got {value!r}")


def _check_count(value: object, label: str) -> None:
    if not (isinstance(value, str) and value.strip().isdigit()):
        raise ConfigurationError(f"{label} must be a whole number >= 0, got {value!r}")


def prepare_threshold(value: object) -> int | None:
    """Psycopg's ``prepare_threshold`` from a URL: a whole number, or ``none`` (never
    prepare).

    Raises:
        ConfigurationError: it is neither.
    """
    text = value.strip().lower() if isinstance(value, str) else None
    if text in {"none", ""}:
        return None
    if text is None or not text.isdigit():
        raise ConfigurationError(
            f"prepare_threshold in the URL must be a whole number >= 0 or 'none', got {value!r}"
        )
    return int(text)
