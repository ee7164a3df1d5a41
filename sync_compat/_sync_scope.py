"""The sync session scope: ``get_db`` and ``get_db_session()`` outside ``run_legacy``, on the
legacy layer's sync engine, with the core's session policy and the *thread* in the role of
the task (``atom_async_db._nesting``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from types import TracebackType

from sqlalchemy.orm import Session

from atom_async_db._compat import (
    NESTED_SESSION,
    NO_OPTIONS,
    TEST_ROOT_SESSION,
    Outer,
    Place,
    ScopeBase,
    Scopes,
    SessionOptions,
    hand_over_to_outer,
    has_unsaved_changes,
    is_graceful,
    lock_sqlite_at_first_statement,
    place,
    turn_timeout,
    warn_uncommitted,
)

__all__ = ["SyncSessionScope"]

logger = logging.getLogger("atom_async_db")


class SyncSessionScope(ScopeBase[Session]):
    """Context manager yielding a sync ``Session``: the async scope's policy and lifecycle
    for the legacy layer's sync engine, with the thread in the role of the task.

    ``make_session(**kw)`` builds the sessions (``sync_compat`` passes its session class);
    nested scopes get ``bind=`` the outer connection and ``join_transaction_mode``.
    """

    __slots__ = ("_make_session", "_options")

    def __init__(
        self,
        scopes: Scopes,
        make_session: Callable[..., Session],
        *,
        commit: bool,
        independent: bool = False,
        options: SessionOptions = NO_OPTIONS,
    ) -> None:
        super().__init__(scopes, commit=commit, independent=independent)
        self._make_session = make_session
        self._options = options

    def __enter__(self) -> Session:
        active = self._active()
        scopes = self._scopes
        # The owner is the thread, or the task when this runs on an event loop's thread.
        task = asyncio.current_task() if asyncio._get_running_loop() is not None else None
        owner: object = task or threading.current_thread()
        options = self._options  # the options of the transaction it will be in
        outer = None
        outer_options = NO_OPTIONS
        if active is not None and active.owner is owner and isinstance(active.session, Session):
            outer, outer_options = active.session, active.options
        pinned = scopes.test_transaction
        connection = pinned.sync_connection if pinned is not None else None
        where = place(
            "sync",
            scopes.settings.dialect,
            outer=None if outer is None else Outer(outer_options, outer),
            test_transaction=None if pinned is None else connection is not None,
            independent=self._independent,
            options=options,
        )
        if where is Place.JOIN:
            assert outer is not None
            outer.flush()  # the inner block must see what the outer one has done so far
            session = self._make_session(bind=outer.connection(), **NESTED_SESSION)
            self._outer = outer
            options = outer_options
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
        self._opened(session, owner, options, None)
        # Inside a test transaction the options cannot apply (it has begun long ago).
        mine = self._options
        if (mine or mine.sqlite_serializable) and self._outer is None and self._turn is None:
            try:
                if mine.sqlite_serializable:
                    lock_sqlite_at_first_statement(session)
                else:
                    mine.apply_sync(session)
            except BaseException as error:
                self.__exit__(type(error), error, error.__traceback__)
                raise
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
            self._closed()

    def _exit(self, exc: BaseException | None) -> None:
        session = self._leaving()
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
