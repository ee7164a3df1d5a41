"""Session state: what the library keeps about each session, one typed object under one
key of ``session.info`` (an AsyncSession's ``info`` is its sync session's).

The key starts out holding the session's :class:`Role`, given through the session
factory's ``info=`` (shared by every session a factory makes, hence an immutable value),
and holds the session's own :class:`SessionState` from the first time it is needed. A
session that only reads never needs one.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

__all__ = ["KEY", "Callback", "Role", "SessionState", "peek", "role_info", "role_of", "state_of"]

KEY = "atom_async_db"

Callback = Callable[[], Awaitable[Any] | None]


class Role(enum.Enum):
    """Whose transaction a session's commit ends."""

    OWNER = "owner"
    """Its own: its commit is the real COMMIT."""
    NESTED = "nested"
    """An outer block's, joined through a SAVEPOINT: its commit releases the savepoint,
    and its writes and hooks are handed to the outer session."""
    TEST_ROOT = "test root"
    """A test's rolled-back transaction, joined directly: it stands for the real one (its
    commit is the test's logical commit), although nothing is saved for good."""


@dataclass(eq=False, slots=True)
class SessionState:
    """What one session has done that the library must remember."""

    role: Role = Role.OWNER
    unsaved: bool = False
    """It flushed (or a nested block handed it) writes that await the real COMMIT."""
    wrote: bool = False
    """It flushed at least once in its life."""
    changed: list[Any] | None = None
    """(Nested sessions) the objects it updated, held strongly for the hand-over."""
    deleted: set[Any] | None = None
    """(Nested sessions) the identity keys it deleted."""
    pending: list[Callback] | None = None
    """After-commit hooks waiting for the real COMMIT."""
    ready: list[Callback] | None = None
    """After-commit hooks whose COMMIT happened, waiting to be run (async sessions)."""

    def pending_hooks(self) -> list[Callback]:
        """:attr:`pending`, made on first use."""
        if self.pending is None:
            self.pending = []
        return self.pending


def role_info(role: Role) -> dict[str, Role]:
    """The ``info=`` that gives the sessions of a factory call ``role``."""
    return {KEY: role}


def peek(session: Session | AsyncSession) -> SessionState | None:
    """The session's state, or None if it never needed one."""
    state = session.info.get(KEY)
    return state if type(state) is SessionState else None


def state_of(session: Session | AsyncSession) -> SessionState:
    """The session's state, made on first use."""
    info = session.info
    state = info.get(KEY)
    if type(state) is SessionState:
        return state
    made = info[KEY] = SessionState(state if isinstance(state, Role) else Role.OWNER)
    return made


def role_of(session: Session | AsyncSession) -> Role:
    """The session's role, without making its state."""
    state = session.info.get(KEY)
    if type(state) is SessionState:
        return state.role
    return state if isinstance(state, Role) else Role.OWNER
