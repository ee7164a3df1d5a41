"""atom_async_db: async-first SQLAlchemy session management.

``get_async_db`` (FastAPI dependency) and ``get_async_db_session()`` (context manager
for services, workers and scripts) on a process-wide default database configured by
:func:`configure` or ``DATABASE_URL``; PostgreSQL through asyncpg, SQLite through
aiosqlite. FastAPI helpers live in :mod:`atom_async_db.fastapi`, the legacy sync API in
the ``sync_compat`` package.
"""

from ._database import Database
from ._default import (
    configure,
    dispose,
    get_async_db,
    get_async_db_replica,
    get_async_db_session,
    get_async_db_transaction,
    get_database,
    transaction_dependency,
)
from ._factory import AsyncSessionFactory
from ._hooks import on_commit, savepoint
from ._replicas import ReplicaStatus
from ._retry import is_conflict, retry_on_conflict
from ._settings import EMBEDDED_DATABASE_FILENAME
from ._stats import HistogramStats, PoolStats
from ._workers import ItemOutcome, run_each, stream_each
from .exceptions import (
    AtomDBError,
    AtomDBWarning,
    CommitOutcomeUnknownError,
    ConcurrentSessionUseError,
    ConfigurationError,
    DatabaseDisposedError,
    DatabaseUnavailableError,
    DriverNotInstalledError,
    EmbeddedDatabaseError,
    NoEventLoopError,
    PoolTimeoutError,
    SessionNestingError,
    SyncSessionContextError,
    SyncSessionOnEventLoopError,
    SyncSessionOnEventLoopWarning,
    TestIsolationError,
    UncommittedChangesWarning,
)

__all__ = [
    "EMBEDDED_DATABASE_FILENAME",
    "AsyncSessionFactory",
    "AtomDBError",
    "AtomDBWarning",
    "CommitOutcomeUnknownError",
    "ConcurrentSessionUseError",
    "ConfigurationError",
    "Database",
    "DatabaseDisposedError",
    "DatabaseUnavailableError",
    "DriverNotInstalledError",
    "EmbeddedDatabaseError",
    "HistogramStats",
    "ItemOutcome",
    "NoEventLoopError",
    "PoolStats",
    "PoolTimeoutError",
    "ReplicaStatus",
    "SessionNestingError",
    "SyncSessionContextError",
    "SyncSessionOnEventLoopError",
    "SyncSessionOnEventLoopWarning",
    "TestIsolationError",
    "UncommittedChangesWarning",
    "configure",
    "dispose",
    "get_async_db",
    "get_async_db_replica",
    "get_async_db_session",
    "get_async_db_transaction",
    "get_database",
    "is_conflict",
    "on_commit",
    "retry_on_conflict",
    "run_each",
    "savepoint",
    "stream_each",
    "transaction_dependency",
]

__version__ = "0.1.0"
