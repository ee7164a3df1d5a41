"""sync_compat: the legacy sync API of the seed guide, on the atom_async_db core.

Existing code keeps its two patterns and changes only its import line:

- ``get_db``: FastAPI dependency yielding a request-scoped ``Session`` (no autocommit).
- ``get_db_session()``: context manager that commits on success, rolls back on error and
  always closes.
- ``SessionLocal``: the session factory (``expire_on_commit=False``), for fixtures.
- ``database_manager``: the deprecated module, still working, with warnings.

They use the same configuration as the async core (:func:`atom_async_db.configure` or
``DATABASE_URL``) and its nesting rule. Where the code runs decides how it reaches the
database: from threads and scripts through a sync engine (psycopg, sqlite3); from async
code through :func:`run_legacy`, which puts it on the async pool without blocking the
loop; directly on the event loop's thread it still works but warns
(:class:`~atom_async_db.SyncSessionOnEventLoopWarning`).

An existing ``core/database.py`` becomes::

    from sync_compat import SessionLocal, get_db, get_db_session, run_legacy  # noqa: F401
    from atom_async_db import get_async_db, get_async_db_session  # noqa: F401
"""

from atom_async_db import (
    SyncSessionContextError,
    SyncSessionOnEventLoopError,
    SyncSessionOnEventLoopWarning,
)
from atom_async_db._compat import current_default

from . import database_manager
from ._scopes import get_db, get_db_for, get_db_session, run_legacy
from ._session import LegacySession, LegacySessionFactory, SessionLocal

__all__ = [
    "LegacySession",
    "LegacySessionFactory",
    "SessionLocal",
    "SyncSessionContextError",
    "SyncSessionOnEventLoopError",
    "SyncSessionOnEventLoopWarning",
    "database_manager",
    "dispose",
    "get_db",
    "get_db_for",
    "get_db_session",
    "run_legacy",
]


def dispose() -> None:
    """Shut the default database down from a sync program (the end of a script): new
    sessions are refused, other threads' sessions get ``drain_timeout`` seconds to end,
    and the sync pool is closed (``Database.dispose_sync_engine``).

    Async programs call ``await atom_async_db.dispose()``, which drains and closes both
    pools.

    Raises:
        Nothing of its own (see ``Database.dispose_sync_engine``).
    """
    database = current_default()
    if database is not None:
        database.dispose_sync_engine()
