"""The sync session scope: ``get_db`` and ``get_db_session()`` outside ``run_legacy``, on the
legacy layer's sync engine, with the core's session policy and the *thread* in the role of
the task (``atom_async_db._nesting``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from contextvars import Token
from types import TracebackType

from sqlalchemy.orm import Session

from atom_async_db._compat import (
    NESTED_SESSION,
    NO_OPTIONS,
    TEST_ROOT_SESSION,
    ActiveScope,
    Outer,
    Place,
    Scopes,
    hand_over_to_outer,
    has_unsaved_changes,
    is_graceful,
    place,
    restore_active,
    turn_timeout,
    warn_uncommitted,
)

__all__ = ["SyncSessionScope"]

logger = logging.getLogger("atom_async_db")


class SyncSessionScope:
    """Context manager yielding a sync ``Session``: the async scope's policy and lifecycle
    for the legacy layer's sync engine, with the thread in the role of the task.

    ``make_session(**kw)`` builds the sessions (``sync_compat`` passes its session class);
    nested scopes get ``bind=`` the outer connection and ``join_transaction_mode``.
    """

    __slots__ = (
        "_commit",
        "_independent",
        "_make_session",
        "_outer",
        "_scopes",
        "_session",
        "_token",
        "_turn",
    )

    def __init__(
        self,
        scopes: Scopes,
        make_session: Callable[..., Session],
        *,
        commit: bool,
        independent: bool = False,
    ) -> None:
        self._scopes = scopes
        self._make_session = make_session
        self._commit = commit
        self._independent = independent
        self._outer: Session | None = None
        self._session: Session | None = None
        self._token: Token[ActiveScope | None] | None = None
        self._turn: threading.Lock | None = None

    def __enter__(self) -> Session:
        if self._session is not None:
            raise RuntimeError("a session scope cannot be entered twice; call the function again")
        scopes = self._scopes
        # The owner is the thread, or the task when this runs on an event loop's thread.
        task = asyncio.current_task() if asyncio._get_running_loop() is not None else None
        owner: object = task or threading.current_thread()
        active = scopes.active.get()
        if active is None and scopes.disposed:
            raise scopes.disposed_error()
        outer = None
        if active is not None and active.owner is owner and isinstance(active.session, Session):
            outer = active.session
        pinned = scopes.test_transaction
        connection = pinned.sync_connection if pinned is not None else None
        where = place(
            "sync",
            scopes.settings.dialect,
            outer=None if outer is None else Outer(NO_OPTIONS, outer),
            test_transaction=None if pinned is None else connection is not None,
            independent=self._independent,
            options=NO_OPTIONS,
        )
        if where is Place.JOIN:
            assert outer is not None
            outer.flush()  # the inner block must see what the outer one has done so far
            session = self._make_session(bind=outer.connection(), **NESTED_SESSION)
            self._outer = outer
        elif where is Place.TEST_ROOT:
            # Threads take turns on the test's one connection, as tasks do on the async one.
            assert pinned is not None
            limit = scopes.settings.test_turn_timeout
            if not pinned.sync_turn.acquire(timeout=limit):
                raise turn_timeout("thread", limit)
            self._turn = pinned.sync_turn
            session = self._make_session(bind=connection, **TEST_ROOT_SESSION)
        else:
            session = self._make_session()
        self._session = session
        self._token = scopes.active.set(ActiveScope(owner, session))
        scopes.open.opened(self, owner, None)
        return session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._exit(exc)
        finally:
            if self._turn is not None:
                self._turn.release()
            self._scopes.open.closed(self)

    def _exit(self, exc: BaseException | None) -> None:
        session, token = self._session, self._token
        assert session is not None
        assert token is not None
        restore_active(self._scopes.active, token)
        if exc is not None:
            _release(session, graceful=is_graceful("sync", exc))
            return
        try:
            if self._commit:
                session.commit()
            elif has_unsaved_changes(session):
                warn_uncommitted()
        except BaseException as error:
            _release(session, graceful=is_graceful("sync", error))
            raise
        if self._outer is not None:
            hand_over_to_outer(session, self._outer)
        _release(session, graceful=True)


def _release(session: Session, graceful: bool) -> None:
    """The async scope's release for sync sessions (the driver's own timeouts bound the
    I/O): roll back and close, or invalidate when the state is unknown or that fails.
    """
    if graceful:
        try:
            if session.in_transaction():
                session.rollback()
            session.close()
            return
        except Exception as error:
            logger.warning("rolling back a session failed (%r); invalidating its connection", error)
    try:
        session.invalidate()
    except Exception as error:
        logger.warning("invalidating a session's connection failed (%r)", error)
