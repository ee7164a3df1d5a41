"""pytest plugin: isolated database tests for applications built on atom_async_db.

Registered through the ``pytest11`` entry point, so installing the package enables it.
Each test runs inside a transaction rolled back at its end (``atom_async_db.testing``);
the schema is created once per test session.

Fixtures:

- ``atom_db_metadata``: override it in your ``conftest.py`` to return your
  ``Base.metadata`` (or a list of them); its tables are created once per test session.
- ``atom_database``: the :class:`~atom_async_db.Database` the tests use, configured as the
  default database for the whole test session.
- ``async_db_session``: an ``AsyncSession`` inside the test's rolled-back transaction,
  which every session the code under test opens joins (needs pytest-asyncio).
- ``db_session`` (registered by ``sync_compat``'s own plugin, ``sync_compat.pytest_plugin``):
  the same for sync tests of legacy code.

Once a project overrides ``atom_db_metadata``, every test uses ``atom_database``, also tests
that take no session fixture: none may write to ``DATABASE_URL``'s database.

Options (command line, else environment):

- ``--atom-db-url`` / ``ATOM_TEST_DATABASE_URL``: the database URL; default a SQLite file
  in pytest's temporary directory.
- ``--atom-db-throwaway`` / ``ATOM_TEST_DATABASE_THROWAWAY=1``: on PostgreSQL, create a
  database of its own for this test session and drop it afterwards, so concurrent test
  runs against one server never collide.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import MetaData, create_engine, exc, text
from sqlalchemy.engine import make_url

from . import _default
from ._database import Database
from ._masking import mask_url
from .testing import rollback_transaction

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - async fixtures need it
    pytest_asyncio = None  # type: ignore[assignment]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the plugin's command-line options (``--atom-db-url``, ``--atom-db-throwaway``)."""
    group = parser.getgroup("atom_async_db", "atom_async_db test database")
    group.addoption(
        "--atom-db-url",
        default=None,
        help="database URL for the tests (env ATOM_TEST_DATABASE_URL; default: a SQLite "
        "file in pytest's temporary directory)",
    )
    group.addoption(
        "--atom-db-throwaway",
        action="store_true",
        default=None,
        help="PostgreSQL: create a database for this test session and drop it afterwards "
        "(env ATOM_TEST_DATABASE_THROWAWAY=1)",
    )


@pytest.fixture(scope="session")
def atom_db_metadata() -> MetaData | Sequence[MetaData] | None:
    """The metadata whose tables the tests need.

    Override it in your ``conftest.py``::

    @pytest.fixture(scope="session")
    def atom_db_metadata():
        return Base.metadata
    """
    return None


@pytest.fixture(autouse=True)
def _atom_database_for_every_test(
    request: pytest.FixtureRequest, atom_db_metadata: MetaData | Sequence[MetaData] | None
) -> None:
    """Once a project declares its tables (``atom_db_metadata``), every test runs against
    the test database, including tests that take no session fixture: none of them may
    write to the database of ``DATABASE_URL`` or ``./atom.db``.
    """
    if atom_db_metadata is not None:
        request.getfixturevalue("atom_database")


@pytest.fixture(scope="session")
def atom_database(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    atom_db_metadata: MetaData | Sequence[MetaData] | None,
) -> Iterator[Database]:
    """The tests' database, configured as the default for the whole test session, with the
    tables of ``atom_db_metadata`` created.

    It keeps the session classes of the default database the application configured
    (``configure(async_session_class=...)`` at import, such as SQLModel's); the
    environment's ``ATOM_DB_*`` settings apply to it as to any database.
    """
    config = request.config
    url = config.getoption("--atom-db-url") or os.environ.get("ATOM_TEST_DATABASE_URL")
    if not url:
        url = f"sqlite:///{tmp_path_factory.mktemp('atom_db') / 'test.db'}"
    throwaway = config.getoption("--atom-db-throwaway")
    if throwaway is None:
        throwaway = os.environ.get("ATOM_TEST_DATABASE_THROWAWAY", "") in {"1", "true", "yes"}
    dropper = None
    if throwaway and make_url(url).get_backend_name() in {"postgresql", "postgres"}:
        with _explained(url, "create a throwaway database next to"):
            url, dropper = _create_throwaway_database(url)
    previous = _default.current_default()
    # The application's own session classes (SQLModel's) stay those of its sessions.
    classes: dict[str, Any] = (
        {
            "session_class": previous.settings.session_class,
            "async_session_class": previous.settings.async_session_class,
        }
        if previous is not None
        else {}
    )
    database = _default.configure(url, **classes)
    database._reopens = True  # an app's lifespan may dispose it between tests
    try:
        with _explained(url, "create the tables of atom_db_metadata in"):
            for metadata in _as_list(atom_db_metadata):
                metadata.create_all(database.sync_engine)
        yield database
    finally:
        database._reopens = False
        database.dispose_sync_engine()
        _default.replace_default(previous)
        if dropper is not None:
            dropper()


@contextlib.contextmanager
def _explained(url: str, what: str) -> Iterator[None]:
    """Fail the test session with what could not be done and why, in one line that never
    shows the password: pytest's own report of the driver's frames would show it (their
    arguments hold the connection parameters).
    """
    try:
        yield
    except exc.DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
        pytest.fail(
            f"atom_async_db: cannot {what} the test database {mask_url(url)}: {reason}",
            pytrace=False,
        )


def _drop_abandoned(connection: Any) -> None:
    """Drop throwaway databases left by test runs of this machine that were killed before
    their cleanup (SIGKILL, SIGTERM): their process no longer exists.
    """
    names = connection.scalars(
        text("select datname from pg_database where datname like 'atom\\_test\\_%'")
    ).all()
    for name in names:
        pid = name.split("_")[2]
        if pid.isdigit() and not _process_exists(int(pid)):
            connection.execute(text(f'drop database if exists "{name}" with (force)'))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _as_list(metadata: MetaData | Sequence[MetaData] | None) -> list[MetaData]:
    if metadata is None:
        return []
    if isinstance(metadata, MetaData):
        return [metadata]
    return list(metadata)


def _create_throwaway_database(url: str) -> tuple[str, Any]:
    """Create ``atom_test_<random>`` next to the database of ``url``; return its URL and a
    function that drops it.
    """
    from ._settings import build_settings

    admin_url = build_settings(url).sync_url
    name = f"atom_test_{os.getpid()}_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        _drop_abandoned(connection)
        connection.execute(text(f'create database "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()

    return make_url(url).set(database=name).render_as_string(hide_password=False), drop


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def async_db_session(atom_database: Database) -> AsyncIterator[Any]:
        """An ``AsyncSession`` inside this test's transaction, rolled back after the test;
        every session of the default database joins that transaction meanwhile.
        """
        async with rollback_transaction(atom_database) as session:
            yield session

else:  # pragma: no cover

    @pytest.fixture
    def async_db_session() -> None:
        """Fail: the fixture needs pytest-asyncio."""
        pytest.fail("async_db_session needs pytest-asyncio: pip install pytest-asyncio")
