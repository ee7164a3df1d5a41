"""URL mapping, options, environment variables and their errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from atom_async_db import (
    ConfigurationError,
    Database,
    DriverNotInstalledError,
    EmbeddedDatabaseError,
    configure,
    get_database,
)
from atom_async_db import _default as default_module
from atom_async_db._settings import build_settings
from tests.helpers import run_python


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DATABASE_URL",
        "ATOM_DB_REQUIRE_URL",
        "ATOM_DB_POOL_SIZE",
        "ATOM_DB_ECHO",
        "ATOM_DB_APPLICATION_NAME",
        "ATOM_DB_POOL_PRE_PING",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(default_module, "_default", None)


@pytest.mark.parametrize(
    ("url", "async_url", "sync_url"),
    [
        (
            "postgresql+asyncpg://u@h/db",
            "postgresql+asyncpg://u@h/db",
            "postgresql+psycopg://u@h/db",
        ),
        (
            "postgresql://u@h:5433/db",
            "postgresql+asyncpg://u@h:5433/db",
            "postgresql+psycopg://u@h:5433/db",
        ),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db", "postgresql+psycopg://u@h/db"),
        (
            "postgresql+psycopg://u@h/db",
            "postgresql+asyncpg://u@h/db",
            "postgresql+psycopg://u@h/db",
        ),
        (
            "postgresql+psycopg2://u@h/db",
            "postgresql+asyncpg://u@h/db",
            "postgresql+psycopg2://u@h/db",
        ),
        (
            "postgresql://u@h/db?sslmode=require&connect_timeout=3",
            "postgresql+asyncpg://u@h/db?ssl=require&timeout=3",
            "postgresql+psycopg://u@h/db?connect_timeout=3&sslmode=require",
        ),
        (
            "postgresql+asyncpg://u@h/db?ssl=require",
            "postgresql+asyncpg://u@h/db?ssl=require",
            "postgresql+psycopg://u@h/db?sslmode=require",
        ),
        (  # each driver's own parameters go to that driver alone
            "postgresql://u@h/db?statement_cache_size=0&prepare_threshold=none"
            "&prepared_statement_cache_size=0&command_timeout=5&sslmode=require",
            "postgresql+asyncpg://u@h/db?command_timeout=5&prepared_statement_cache_size=0"
            "&ssl=require&statement_cache_size=0",
            "postgresql+psycopg://u@h/db?prepare_threshold=none&sslmode=require",
        ),
        (
            "sqlite+aiosqlite:////srv/app.db",
            "sqlite+aiosqlite:////srv/app.db",
            "sqlite+pysqlite:////srv/app.db",
        ),
        (
            "sqlite:////srv/app.db",
            "sqlite+aiosqlite:////srv/app.db",
            "sqlite+pysqlite:////srv/app.db",
        ),
        (
            "sqlite+pysqlite:////srv/app.db",
            "sqlite+aiosqlite:////srv/app.db",
            "sqlite+pysqlite:////srv/app.db",
        ),
    ],
)
def test_accepted_urls_map_to_the_async_and_the_sync_driver(
    url: str, async_url: str, sync_url: str
) -> None:
    settings = build_settings(url, environ={})
    assert settings.url.render_as_string() == async_url
    assert settings.sync_url.render_as_string() == sync_url


def test_sync_pool_defaults() -> None:
    settings = build_settings("postgresql://u@h/db", environ={}, pool_size=7, max_overflow=2)
    assert (settings.sync_pool_size, settings.sync_max_overflow) == (7, 2)
    settings = build_settings(
        "postgresql://u@h/db", environ={"ATOM_DB_SYNC_POOL_SIZE": "3"}, sync_max_overflow=0
    )
    assert (settings.sync_pool_size, settings.sync_max_overflow) == (3, 0)
    settings = build_settings("sqlite:///x.db", environ={})  # the seed's SQLite pool
    assert (settings.sync_pool_size, settings.sync_max_overflow) == (5, -1)


def test_sync_on_event_loop_accepts_warn_or_error() -> None:
    assert build_settings("sqlite://", environ={}).sync_on_event_loop == "warn"
    environ = {"ATOM_DB_SYNC_ON_EVENT_LOOP": "Error"}
    assert build_settings("sqlite://", environ=environ).sync_on_event_loop == "error"
    with pytest.raises(ConfigurationError, match=r"sync_on_event_loop must be one of 'warn'"):
        build_settings("sqlite://", environ={}, sync_on_event_loop="ignore")


def test_relative_sqlite_path_is_resolved_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert build_settings("sqlite:///./app.db", environ={}).url.database == str(tmp_path / "app.db")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite+aiosqlite:///:memory:"])
def test_memory_urls_become_a_named_shared_database(url: str) -> None:
    settings = build_settings(url, environ={})
    assert settings.memory
    assert settings.url.query == {"mode": "memory", "cache": "shared", "uri": "true"}


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("mysql://root:s3cret@h/db", "unknown database dialect 'mysql'"),
        ("postgresql+pg8000://u:s3cret@h/db", "unknown PostgreSQL driver 'pg8000'"),
        ("sqlite+pysqlcipher:///x.db", "unknown SQLite driver 'pysqlcipher'"),
        ("not a url://u:s3cret@", "could not be parsed"),
        ("postgresql+asyncpg//u:s3cret@127.0.0.1", "no '://' after the scheme"),
        ("postgresql://u:s3cret", "the port must be a number"),
        ("postgresql://u:s3@cret@h/db", "percent-encode an '@' in the password as %40"),
        ("host=h user=u password=s3cret", "libpq keyword/value string"),
        ("postgresql:///u:s3cret@h/db", "the user info ends up in the database name"),
        ("postgresql://u:s3cret@x/y@h/db", "more than one '@'"),
        ("postgresql://u:65536/db", "from 1 to 65535"),
    ],
)
def test_bad_urls_are_named_masked_and_explained(url: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Database(url)
    message = str(raised.value)
    assert complaint in message
    assert "s3cret" not in message
    assert (
        "postgresql+asyncpg://" in message and "sqlite+aiosqlite:///" in message
    )  # accepted forms


@pytest.mark.parametrize(
    "url", ["postgresql://app:s3cret@127.0.0.1/db", "postgresql://app@127.0.0.1/db?password=s3cret"]
)
def test_password_never_shows_in_repr_or_url(url: str) -> None:
    database = Database(url)
    assert "s3cret" not in repr(database) and "s3cret" not in database.url
    assert "***" in repr(database)


def test_non_string_url_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="must be a string"):
        Database(42)  # type: ignore[arg-type]


def test_url_timeouts_must_be_numbers() -> None:
    with pytest.raises(ConfigurationError, match="connect_timeout in the URL must be a number"):
        Database("postgresql://u@h/db?connect_timeout=soon")


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("statement_cache_size=off", "statement_cache_size in the URL must be a whole number"),
        ("prepare_threshold=-1", "prepare_threshold in the URL must be a whole number >= 0 or"),
        ("server_pooler=pgbouncr", "server_pooler in the URL must be one of 'none', 'pgbouncer'"),
    ],
)
def test_driver_parameters_in_the_url_are_checked(query: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        Database(f"postgresql://u:s3cret@h/db?{query}")


def test_server_pooler_from_the_url_environment_or_keyword(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = build_settings("postgresql://u@h/db?server_pooler=pgbouncer", environ={})
    assert settings.server_pooler == "pgbouncer"
    assert "server_pooler" not in settings.url.query
    assert "server_pooler" not in settings.sync_url.query
    environ = {"ATOM_DB_SERVER_POOLER": "PgBouncer"}
    assert build_settings("postgresql://u@h/db", environ=environ).server_pooler == "pgbouncer"
    assert build_settings("postgresql://u@h/db", environ={}).server_pooler == "none"
    explicit = build_settings("postgresql://u@h/db?server_pooler=pgbouncer", server_pooler="none")
    assert explicit.server_pooler == "none"
    with pytest.raises(ConfigurationError, match="this database is SQLite"):
        Database("sqlite://", server_pooler="pgbouncer")
    blank = {"ATOM_DB_SERVER_POOLER": "  "}  # blank is unset, as for every option
    from_url = build_settings("postgresql://u@h/db?server_pooler=pgbouncer", environ=blank)
    assert from_url.server_pooler == "pgbouncer"


@pytest.mark.parametrize(
    "query", ["prepare_threshold=0", "statement_cache_size=100", "prepared_statement_cache_size=5"]
)
def test_behind_a_pooler_the_url_cannot_turn_prepared_statements_back_on(query: str) -> None:
    with pytest.raises(ConfigurationError, match=f"the URL sets {query}, which turns prepared"):
        Database(f"postgresql://u:s3cret@h/db?server_pooler=pgbouncer&{query}")


def test_replica_urls_leave_our_own_parameters_to_the_primarys_settings() -> None:
    settings = build_settings(
        "postgresql://u@h/db",
        environ={},
        replica_urls=["postgresql://u@r1/db?server_pooler=pgbouncer&application_name=x&ssl=1"],
    )
    assert dict(settings.replica_urls[0].query) == {"ssl": "1"}


def test_missing_driver_names_the_extra_to_install() -> None:
    output = run_python(
        "import sys; sys.modules['asyncpg'] = None\n"
        "import atom_async_db\n"
        "try:\n"
        "    atom_async_db.Database('postgresql://u:s3cret@h/db')\n"
        "except atom_async_db.DriverNotInstalledError as e:\n"
        "    print(e)\n"
    )
    assert "pip install 'atom_async_db[postgres]'" in output
    assert "s3cret" not in output
    assert issubclass(DriverNotInstalledError, ImportError)


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"pool_size": 0}, "pool_size must be a whole number >= 1, got 0"),
        ({"pool_size": "ten"}, "pool_size must be a whole number >= 1, got 'ten'"),
        ({"pool_size": True}, "pool_size must be a whole number >= 1, got True"),
        ({"max_overflow": -2}, "max_overflow must be a whole number >= 0, or -1 for no limit"),
        ({"pool_timeout": 0}, "pool_timeout must be a number of seconds > 0"),
        ({"pool_recycle": 0}, "pool_recycle must be a whole number of seconds >= 1, or -1"),
        ({"pool_pre_ping": "maybe"}, "pool_pre_ping must be a boolean"),
        ({"application_name": ""}, "application_name must be a non-empty string"),
        ({"pool_szie": 5}, "unknown option 'pool_szie' (did you mean 'pool_size'?)"),
        ({"engine_options": ["echo"]}, "engine_options must be a mapping"),
    ],
)
def test_bad_options_are_named_with_what_is_accepted(
    options: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Database("sqlite://", **options)
    assert complaint in str(raised.value)


def test_environment_sets_options_and_keywords_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOM_DB_POOL_SIZE", "7")
    monkeypatch.setenv("ATOM_DB_POOL_PRE_PING", "off")
    settings = build_settings("postgresql://u@h/db")
    assert (settings.pool_size, settings.pool_pre_ping, settings.max_overflow) == (7, False, 30)
    assert build_settings("postgresql://u@h/db", pool_size=3).pool_size == 3


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("ATOM_DB_POOL_SIZE", "lots", "must be a whole number >= 1, got 'lots'"),
        ("ATOM_DB_POOL_SIZE", "-3", "must be a whole number >= 1, got '-3'"),
        ("ATOM_DB_POOL_SIZE", "2.5", "must be a whole number >= 1, got '2.5'"),
        ("ATOM_DB_MAX_OVERFLOW", "-2", "must be a whole number >= 0, or -1 for no limit"),
        ("ATOM_DB_CANCEL_GRACE", "-1", "must be a number of seconds >= 0, got '-1'"),
        ("ATOM_DB_POOL_TIMEOUT", "0", "must be a number of seconds > 0, got '0'"),
    ],
)
def test_bad_environment_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, complaint: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as raised:
        configure("postgresql://app:s3cret@127.0.0.1/db")
    message = str(raised.value)
    assert f"{variable} {complaint}" in message and "s3cret" not in message


def test_application_name_from_the_url_is_honoured() -> None:
    settings = build_settings("postgresql://u@h/db?application_name=billing", environ={})
    assert settings.application_name == "billing"
    assert "application_name" not in settings.url.query
    assert "application_name" not in settings.sync_url.query


def test_database_url_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/env.db")
    assert get_database().settings.url.database == f"{tmp_path}/env.db"
    assert get_database() is get_database()


def test_fallback_to_embedded_sqlite_logs_one_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="atom_async_db"):
        database = get_database()
        assert get_database() is database
    assert database.settings.url.database == str(tmp_path / "atom.db")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "DATABASE_URL is not set" in warnings[0] and "ATOM_DB_REQUIRE_URL" in warnings[0]


def test_production_setting_forbids_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOM_DB_REQUIRE_URL", "1")
    with pytest.raises(EmbeddedDatabaseError, match="DATABASE_URL is not set"):
        get_database()


async def test_a_postgresql_url_without_a_database_uses_the_user_name_like_libpq(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGDATABASE", raising=False)
    server = make_url(postgres_url)
    url = f"postgresql+asyncpg://postgres@{server.host}:{server.port}"  # no /dbname
    database = Database(url)
    async with database.get_async_db_session() as session:
        assert await session.scalar(text("select current_database()")) == "postgres"
    with Session(database.sync_engine) as session:  # the legacy layer's engine too
        assert session.scalar(text("select current_database()")) == "postgres"
    await database.dispose()
