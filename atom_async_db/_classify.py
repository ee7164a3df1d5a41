"""Error classification: which driver errors mean the connection is gone, and what the
errors a lost or refused connection raises say about it (for the async engines and the
legacy layer's sync engine alike).
"""

from __future__ import annotations

import re
import weakref

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext

from .exceptions import CommitOutcomeUnknownError

__all__ = [
    "COMMIT_OUTCOME_UNKNOWN_NOTE",
    "CONNECTION_LOST_NOTE",
    "commit_outcome_unknown",
    "explain_connect_error",
    "install_commit_outcome_rule",
    "is_connection_loss",
]

COMMIT_OUTCOME_UNKNOWN_NOTE = (
    "atom_async_db: the connection was lost while COMMIT was in flight, so the transaction "
    "may or may not have been committed; read the data back to find out. It is not retried "
    "automatically, since a retry could apply the work twice."
)


CONNECTION_LOST_NOTE = (
    "atom_async_db: the database closed this session's connection (a server-side timeout "
    "such as idle_in_transaction_session_timeout, pg_terminate_backend, a restart, or the "
    "network); the transaction is gone and the connection is discarded. Retry the unit of "
    "work with a new session."
)


# libpq's words for a refused login (psycopg reports it without a SQLSTATE).
_LOGIN_REFUSED = re.compile(
    r'password authentication failed|no pg_hba\.conf entry|role ".*" does not exist'
)


def explain_connect_error(context: ExceptionContext) -> None:
    """Add a note to a failed connection's error when the server refused the login
    (asyncpg's error classes, or libpq's message for psycopg).
    """
    original = context.original_exception
    cause = original.__cause__
    if context.sqlalchemy_exception is None:
        return
    if type(cause).__name__ in {
        "InvalidPasswordError",
        "InvalidAuthorizationSpecificationError",
    } or _LOGIN_REFUSED.search(str(original)):
        context.sqlalchemy_exception.add_note(
            "atom_async_db: the server refused the login; check the user name and password "
            "of the database URL (DATABASE_URL), and the server's pg_hba.conf"
        )


def is_connection_loss(error: BaseException) -> bool:
    if isinstance(error, (OSError, EOFError)):
        return True
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is an optional extra
        return False
    if isinstance(error, asyncpg.PostgresError):
        # A server error answered the COMMIT (a deferred constraint, a serialization
        # failure): the outcome is known (rolled back), unless the server is going away.
        return error.sqlstate is not None and error.sqlstate.startswith(("57P", "08"))
    if isinstance(error, (asyncpg.InterfaceError, asyncpg.InternalClientError)):
        # "... the underlying connection is closed", and "cannot switch to state ...;
        # another operation is in progress" when the server ended the connection under a
        # statement (sqlalchemy#13241). Other interface errors are the caller's (too many
        # arguments, a bad type) and leave the connection fine.
        message = str(error)
        return "connection is closed" in message or "another operation" in message
    return False


def commit_outcome_unknown(original: BaseException) -> CommitOutcomeUnknownError:
    """The error for a COMMIT whose connection was lost in flight (``original``: the
    driver's error).
    """
    unknown = CommitOutcomeUnknownError("COMMIT", None, original, connection_invalidated=True)
    unknown.add_note(COMMIT_OUTCOME_UNKNOWN_NOTE)
    return unknown


def install_commit_outcome_rule(engine: Engine) -> None:
    """Make ``engine`` (the legacy layer's sync engine) report a connection lost while
    COMMIT was in flight as :class:`CommitOutcomeUnknownError`, as the async engines do.

    SQLAlchemy fires the ``commit`` event just before it sends COMMIT, and reports a
    failure of the COMMIT through ``handle_error`` straight after; the mark set between
    the two is cleared when the connection begins or rolls back.
    """
    committing: weakref.WeakSet[Connection] = weakref.WeakSet()

    @event.listens_for(engine, "commit")
    def _mark(connection: Connection) -> None:
        committing.add(connection)

    @event.listens_for(engine, "begin")
    @event.listens_for(engine, "rollback")
    def _unmark(connection: Connection) -> None:
        committing.discard(connection)

    @event.listens_for(engine, "handle_error")
    def _report(context: ExceptionContext) -> BaseException | None:
        connection = context.connection
        if connection is None or connection not in committing:
            return None
        committing.discard(connection)
        if not context.is_disconnect:  # the server answered: the outcome is known
            return None
        return commit_outcome_unknown(context.original_exception)
