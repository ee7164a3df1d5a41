"""Errors and warnings raised by atom_async_db.

Every error derives from :class:`AtomDBError` and every warning from
:class:`AtomDBWarning`, so an application can catch or filter all of them at once; each
also derives from the built-in (or SQLAlchemy) class that code written without this
library already catches. Database errors themselves (``IntegrityError``,
``OperationalError`` ...) are SQLAlchemy's and pass through unchanged::

    AtomDBError                        also Exception
    ├── CommitOutcomeUnknownError      also sqlalchemy.exc.OperationalError
    ├── ConcurrentSessionUseError      also RuntimeError
    ├── ConfigurationError             also ValueError
    │   ├── DriverNotInstalledError    also ImportError
    │   └── EmbeddedDatabaseError
    ├── DatabaseDisposedError          also RuntimeError
    ├── DatabaseUnavailableError       also ConnectionError
    ├── NoEventLoopError               also RuntimeError
    ├── PoolTimeoutError               also sqlalchemy.exc.TimeoutError
    ├── SessionNestingError            also RuntimeError
    ├── SyncSessionContextError        also RuntimeError
    ├── SyncSessionOnEventLoopError    also RuntimeError
    └── TestIsolationError             also RuntimeError
    AtomDBWarning                      also UserWarning
    ├── SyncSessionOnEventLoopWarning
    └── UncommittedChangesWarning
"""

from __future__ import annotations

from sqlalchemy import exc as _sa_exc

__all__ = [
    "AtomDBError",
    "AtomDBWarning",
    "CommitOutcomeUnknownError",
    "ConcurrentSessionUseError",
    "ConfigurationError",
    "DatabaseDisposedError",
    "DatabaseUnavailableError",
    "DriverNotInstalledError",
    "EmbeddedDatabaseError",
    "NoEventLoopError",
    "PoolTimeoutError",
    "SessionNestingError",
    "SyncSessionContextError",
    "SyncSessionOnEventLoopError",
    "SyncSessionOnEventLoopWarning",
    "TestIsolationError",
    "UncommittedChangesWarning",
]


class AtomDBError(Exception):
    """Base class of every error raised by atom_async_db itself."""


class DatabaseDisposedError(AtomDBError, RuntimeError):
    """A session was opened on a database whose shutdown (``dispose()``) has begun.

    Shutdown drains: the sessions already open finish (or are stopped after
    ``drain_timeout``), and nothing new starts, so that no connection is opened on a
    pool that nobody will close. Blocks nested inside a session that was open before
    the shutdown still join it. To start again (tests, scripts), configure the database
    again: :func:`~atom_async_db.configure`, or a new :class:`~atom_async_db.Database`.
    """


class DatabaseUnavailableError(AtomDBError, ConnectionError):
    """A new connection could not be opened: the server is down, unreachable or refused the
    connection at the network level, or did not answer within the connect timeout
    (``pool_timeout``, or ``connect_timeout`` in the URL).

    A subclass of ``ConnectionError`` (an ``OSError``), which is what the driver raised; the
    message names the host and port (never the password) and the driver's error is its
    ``__cause__``. The pool recovers on its own once the server is back.
    """


class PoolTimeoutError(AtomDBError, _sa_exc.TimeoutError):
    """No connection became free within ``pool_timeout``: every connection the pool may
    open is checked out.

    A subclass of SQLAlchemy's ``TimeoutError``, so existing handlers still catch it. The
    message shows the pool's size, overflow and checked-out count and the settings to
    change.
    """


class CommitOutcomeUnknownError(AtomDBError, _sa_exc.OperationalError):
    """The connection was lost while COMMIT was in flight: the transaction may or may not
    have been committed, and only reading the data back can tell.

    Never retried automatically (a retry could apply the work twice). The SQLAlchemy
    error it replaces is its ``__cause__``; ``orig`` is the driver's error.
    """


class ConcurrentSessionUseError(AtomDBError, RuntimeError):
    """One ``AsyncSession`` was used by two tasks at the same time.

    A session and its connection run one operation at a time; give each concurrent task a
    session of its own (``async with get_async_db_session()`` inside the task). Using a
    session from another task *after* the first is done with it is fine.
    """


class ConfigurationError(AtomDBError, ValueError):
    """A setting is wrong: a malformed or unsupported URL, a bad option or environment value.

    The message names the setting, the rejected value (passwords masked) and what is accepted.
    """


class DriverNotInstalledError(ConfigurationError, ImportError):
    """The database driver that a URL needs is not installed; the message names the extra."""


class EmbeddedDatabaseError(ConfigurationError):
    """``DATABASE_URL`` is unset while ``ATOM_DB_REQUIRE_URL`` forbids the SQLite fallback."""


class NoEventLoopError(AtomDBError, RuntimeError):
    """An async engine was asked for outside a running event loop.

    Async engines belong to the loop that uses them; ask for ``Database.engine``
    from inside a coroutine.
    """


class SessionNestingError(AtomDBError, RuntimeError):
    """A nested session cannot be opened the way it was asked for.

    Raised when a block that would join its task's outer transaction asks for options
    (isolation level, read-only, timeouts) that transaction does not have: set them on the
    outermost block, or pass ``independent=True`` (PostgreSQL).

    Raised for ``get_async_db_session(independent=True)`` on SQLite while the same task's
    outer session holds a transaction: SQLite runs one transaction at a time, so the
    independent session would wait for the outer one, which waits for it.
    """


class SyncSessionContextError(AtomDBError, RuntimeError):
    """A legacy sync session whose transaction began inside ``sync_compat.run_legacy`` (on
    the async pool) was used outside it. Finish the transaction where it began: commit,
    roll back or close the session inside the legacy function.
    """


class TestIsolationError(AtomDBError, RuntimeError):
    """A session opened during a test's rolled-back transaction cannot join it, and would
    have written to the test database for real.

    Async code cannot join a sync test's transaction (``db_session``), and legacy code in
    worker threads cannot join an async test's (``async_db_session``): each needs its own
    kind of connection. Test async code with ``async_db_session``, and legacy code with
    ``db_session`` or through ``run_legacy``.
    """

    __test__ = False  # not a test class, whatever pytest's naming rules say


class SyncSessionOnEventLoopError(AtomDBError, RuntimeError):
    """A legacy sync session ran a statement on an event loop's thread in strict mode
    (``sync_on_event_loop="error"``); see :class:`SyncSessionOnEventLoopWarning`.
    """


class AtomDBWarning(UserWarning):
    """Base class of every warning issued by atom_async_db."""


class UncommittedChangesWarning(AtomDBWarning):
    """A request session ended cleanly with changes that were never committed.

    ``get_async_db`` never commits on its own (like the seed's ``get_db``), so those
    changes, including those of nested ``get_async_db_session()`` blocks that joined
    it, were rolled back. Call ``await db.commit()`` in the route. Turn the warning
    into an error with ``warnings.simplefilter("error", UncommittedChangesWarning)``.
    """


class SyncSessionOnEventLoopWarning(AtomDBWarning):
    """A legacy sync session ran a statement on an event loop's thread.

    It works, but the whole loop waits for the database meanwhile: every other request and
    task stands still. Run the legacy code with ``await sync_compat.run_legacy(fn, ...)``,
    which waits on the async pool without blocking, or move it to the async API. Make it
    an error with ``sync_on_event_loop="error"`` (or ``ATOM_DB_SYNC_ON_EVENT_LOOP=error``).
    """
