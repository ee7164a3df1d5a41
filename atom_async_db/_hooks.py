"""After-commit hooks and savepoints: work that must happen only once data is really saved
(send the e-mail, enqueue the job), with Django's ``on_commit`` semantics.

Hooks wait in the session's state (``_state``). A nested block's session hands them to the outer
session when it succeeds, and drops them when it fails (see ``_session``). When a session
that owns a real transaction commits, its hooks become ready. They run, in registration
order, after the COMMIT: right after it for sync sessions, and when ``commit()`` returns
for async ones (which is where async callbacks can be awaited). A rollback drops them, and
so does a :func:`savepoint` block that fails.

Inside a test's rolled-back transaction (``atom_async_db.testing``) the session that
joined it directly stands for the real one: its hooks run when it commits (the test's
logical commit), although nothing is saved for good.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from ._state import KEY, Callback, Role, SessionState, peek, state_of

__all__ = ["hand_over_hooks", "install", "on_commit", "run_ready_hooks", "savepoint"]

logger = logging.getLogger("atom_async_db")


def on_commit(session: AsyncSession | Session, callback: Callback) -> None:
    """Run ``callback()`` once the transaction ``session`` is part of really commits.

    Callbacks run in the order they were registered, after the COMMIT, never before; a
    rollback drops them, and so does a failing :func:`savepoint` block or nested session
    block they were registered in. ``callback`` may be a coroutine function with async
    sessions. A callback that raises is logged and the others still run: the commit
    stands, so do not use it for work that must succeed together with the data::

        async with get_async_db_session() as db:
            db.add(Order(id=order_id))
            on_commit(db, lambda: queue.enqueue("send_confirmation", order_id))
        # the order row exists when the job starts

    Inside a test transaction (the pytest plugin's fixtures) they run at the test's
    logical commit: when the session that joined the test transaction commits.

    Raises:
        TypeError: ``callback`` is a coroutine function and ``session`` a sync ``Session``.
    """
    if isinstance(session, Session) and inspect.iscoroutinefunction(callback):
        raise TypeError(
            "an async callback needs an AsyncSession to be awaited after the commit; "
            "register it on the AsyncSession, or pass a sync callable"
        )
    state_of(session).pending_hooks().append(callback)


@asynccontextmanager
async def savepoint(session: AsyncSession) -> AsyncIterator[AsyncSession]:
    """A block that rolls back on its own when it raises, and lets the exception propagate.

    A SAVEPOINT inside the session's transaction (PostgreSQL and SQLite): what the block
    did is undone and the session's earlier work stays, ready to commit. After-commit
    hooks registered inside the block are dropped with it::

        async with get_async_db_session() as db:
            db.add(Order(id=1))
            try:
                async with savepoint(db):
                    db.add(Coupon(code="DUPLICATE"))
            except IntegrityError:
                pass  # the order is still added; the coupon is not

    Raises:
        Whatever the block raises, after its work was rolled back to the savepoint.
        sqlalchemy.exc.InvalidRequestError: ``session`` holds no transaction a savepoint can
            be taken in (it was closed).
    """
    hooks = state_of(session).pending_hooks()
    mark = len(hooks)
    try:
        async with session.begin_nested():
            yield session
    except BaseException:
        del hooks[mark:]
        raise


def hand_over_hooks(inner: Session, outer: Session) -> None:
    """A nested block succeeded: its hooks now wait for the outer block's commit."""
    state = peek(inner)
    if state is not None and state.pending:
        state_of(outer).pending_hooks().extend(state.pending)
        state.pending = None


async def run_ready_hooks(session: AsyncSession) -> None:
    """Run the hooks the last commit made ready (called when ``commit()`` returns)."""
    state = peek(session)
    if state is None or not state.ready:
        return
    hooks, state.ready = state.ready, None
    for callback in hooks:
        try:
            result = callback()
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("an after-commit callback failed (the commit stands)")


def _run_sync_hooks(hooks: list[Callback]) -> None:
    for callback in hooks:
        try:
            callback()
        except Exception:
            logger.exception("an after-commit callback failed (the commit stands)")


def install(session_class: type[Session]) -> None:
    """Track hooks on the sessions of ``session_class`` (the core's ``TrackedSession``);
    sessions whose class sets ``awaits_hooks`` (behind an AsyncSession) leave them to
    :func:`run_ready_hooks`.
    """

    # (Both run for every transaction: they read the state without a call.)
    @event.listens_for(session_class, "after_commit")
    def _committed(session: Session) -> None:
        state = session.info.get(KEY)
        if type(state) is not SessionState or not state.pending or state.role is Role.NESTED:
            return  # nothing to run, or a nested block: its hooks wait for the outer one
        hooks, state.pending = state.pending, None
        if getattr(session, "awaits_hooks", False):
            state.ready = [*(state.ready or ()), *hooks]  # awaited by commit()
        else:
            _run_sync_hooks(hooks)

    @event.listens_for(session_class, "after_transaction_end")
    def _ended(session: Session, transaction: SessionTransaction) -> None:
        state = session.info.get(KEY)
        if (
            type(state) is SessionState
            and transaction.parent is None
            and state.role is not Role.NESTED
        ):
            state.pending = None  # not committed: rolled back or closed
