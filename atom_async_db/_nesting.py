"""The session policy: where a new session scope gets its connection (the nesting rule),
and how an ended one is released, decided without I/O for the async scope and the sync
one alike.

A scope opened while the *same owner* (the task of an async scope, the thread of a sync
one) already holds a scope of the same kind joins the outer scope's connection through a
SAVEPOINT instead of taking a second connection from the pool (which is how pools
deadlock: every holder waits for a second connection). ``independent=True`` opts out.
Inside a test's rolled-back transaction every scope joins it. The two kinds differ on
purpose in three places, each named where it is decided: which test connection they can
join, when a SQLite transaction takes the write lock, and whether a cancellation leaves
the connection in a known state.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.orm import Session

from ._options import SessionOptions
from ._tracked import has_unsaved_changes
from .exceptions import SessionNestingError, TestIsolationError

__all__ = ["Kind", "Outer", "Place", "is_graceful", "place"]

Kind = Literal["async", "sync"]


class Place(enum.Enum):
    """Where a new scope's session gets its connection."""

    JOIN = "join"
    """The outer scope's connection, inside a SAVEPOINT."""
    TEST_ROOT = "test root"
    """The test's rolled-back transaction's connection, inside a SAVEPOINT."""
    OWN = "own"
    """A connection of its own, from the pool."""


@dataclass(frozen=True, slots=True)
class Outer:
    """The same owner's open scope: the options of its transaction, and its (sync)
    session, read only where the rule needs it.
    """

    options: SessionOptions
    session: Session

    @property
    def in_transaction(self) -> bool:
        """Its session has begun a transaction on a connection."""
        transaction = self.session.get_transaction()
        return bool(transaction is not None and transaction._connections)

    @property
    def wrote(self) -> bool:
        """Its session holds writes not yet committed."""
        return has_unsaved_changes(self.session)


# Which kind of test connection each kind of scope can join (async code cannot use a sync
# connection, nor legacy code in a worker thread an async one): what the refusal says.
_CANNOT_JOIN_THE_TEST = {
    "async": (
        "an async session was opened during a sync test's rolled-back transaction (the "
        "db_session fixture); async code cannot join it and would write to the test "
        "database for real. Test async code with async_db_session."
    ),
    "sync": (
        "a legacy sync session was opened in a worker thread (a `def` route, "
        "asyncio.to_thread) during an async test's rolled-back transaction "
        "(async_db_session); it cannot join it and would write to the test database for "
        "real. Call that code through sync_compat.run_legacy, or test it with the "
        "db_session fixture."
    ),
}


def place(
    kind: Kind,
    dialect: str,
    *,
    outer: Outer | None,
    test_transaction: bool | None,
    independent: bool,
    options: SessionOptions,
) -> Place:
    """Where a scope of ``kind`` opened now gets its connection.

    ``outer``: the same owner's open scope of the same kind, if any. ``test_transaction``:
    None outside a test transaction, else whether it has a connection of this kind.

    Raises:
        TestIsolationError: inside a test transaction with no connection of this kind.
        SessionNestingError: the scope would join a transaction that lacks its options,
            or is independent on SQLite while the outer scope holds the write lock.
    """
    if test_transaction is False:
        raise TestIsolationError(_CANNOT_JOIN_THE_TEST[kind])
    if outer is not None and (not independent or test_transaction):
        # (Inside a test transaction independent blocks join too: nothing there is really
        # committed.)
        if test_transaction is None and options and not options.held_by(outer.options):
            raise SessionNestingError(
                f"this block asks for {options.describe()} and would join its task's "
                f"outer transaction, which has {outer.options.describe()}: set the options "
                "on the outermost session block, or pass independent=True for a "
                "transaction of its own"
            )
        return Place.JOIN
    if test_transaction:
        return Place.TEST_ROOT
    if outer is not None and dialect == "sqlite":
        # SQLite runs one writer at a time. An async transaction takes the write lock when
        # it begins (BEGIN IMMEDIATE at checkout); the sync engine's at its first write,
        # so a sync outer block that only read does not hold it.
        holds_lock = outer.in_transaction if kind == "async" else outer.wrote
        if holds_lock:
            entry, what = (
                ("get_async_db_session", "holds a transaction")
                if kind == "async"
                else ("get_db_session", "has written")
            )
            owner = "task" if kind == "async" else "thread"
            raise SessionNestingError(
                f"{entry}(independent=True) cannot start on SQLite while this {owner}'s "
                f"outer session {what}: SQLite runs one writer at a time, so each would "
                "wait for the other. Commit the outer session first, or drop "
                "independent=True to join the outer transaction."
            )
    return Place.OWN


def is_graceful(kind: Kind, exc: BaseException) -> bool:
    """Whether a scope that ended with ``exc`` left its connection in a known state, so it
    can be rolled back and reused rather than invalidated.

    ``GeneratorExit``: a dependency generator closed by its consumer, not interrupted. A
    ``CancelledError`` cannot cut an async driver call in half (see ``_cancel``); a sync
    driver call has no such guard, and a sync scope never sees one mid-call anyway.
    """
    graceful: tuple[type[BaseException], ...] = (Exception, GeneratorExit)
    if kind == "async":
        graceful = (*graceful, asyncio.CancelledError)
    return isinstance(exc, graceful)
