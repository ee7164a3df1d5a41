"""Errors and warnings raised by atom_async_db.

Every error derives from :class:`AtomDBError` and every warning from
:class:`AtomDBWarning`, so an application can catch or filter all of them at once.
Database errors themselves (``IntegrityError``, ``OperationalError`` ...) are
SQLAlchemy's and pass through unchanged.
"""

from __future__ import annotations

__all__ = [
    "AtomDBError",
    "AtomDBWarning",
    "ConfigurationError",
    "DriverNotInstalledError",
    "EmbeddedDatabaseError",
    "NoEventLoopError",
    "SessionNestingError",
    "SyncSessionContextError",
    "SyncSessionOnEventLoopError",
    "SyncSessionOnEventLoopWarning",
    "UncommittedChangesWarning",
]


class AtomDBError(Exception):
    """Base class of every error raised by atom_async_db itself."""


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

    Raised for ``get_async_db_session(independent=True)`` on SQLite while the same task's
    outer session holds a transaction: SQLite runs one transaction at a time, so the
    independent session would wait for the outer one, which waits for it.
    """


class SyncSessionContextError(AtomDBError, RuntimeError):
    """A legacy sync session whose transaction began inside ``sync_compat.run_legacy`` (on
    the async pool) was used outside it. Finish the transaction where it began: commit,
    roll back or close the session inside the legacy function."""


class SyncSessionOnEventLoopError(AtomDBError, RuntimeError):
    """A legacy sync session ran a statement on an event loop's thread in strict mode
    (``sync_on_event_loop="error"``); see :class:`SyncSessionOnEventLoopWarning`."""


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
