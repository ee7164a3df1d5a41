"""Session scopes: the lifecycle behind ``get_async_db_session()`` and ``get_async_db`` (and
their sync counterparts in ``sync_compat``), and the nesting rule.

Lifecycle: a scope opens an ``AsyncSession`` (``expire_on_commit=False``); on a clean exit
it commits (``get_async_db_session()``) or leaves committing to the caller
(``get_async_db``); on any exception it rolls back; it always releases the connection.
A cancelled block is rolled back like a failed one: cancellation cannot cut a driver call
in half (see ``_guard``), so the connection is at rest and goes back to the pool, unless
the guard had to abandon a call, in which case SQLAlchemy has already discarded it. A
block interrupted otherwise (``KeyboardInterrupt``) may have left a statement half-sent,
so its connection is invalidated, never reused.

Nesting rule: a scope opened while the *same task* already holds a scope of the same
database joins the outer scope's connection through a SAVEPOINT instead of taking a
second connection from the pool (which is how pools deadlock: every holder waits for a
second connection). The inner block gets its own session; its commit releases the
savepoint, its failure rolls back to it, and the real COMMIT happens when the outermost
scope commits. ``independent=True`` opts out and takes a connection of its own. Other
tasks (even ones started inside the scope, which inherit its context) never join.

:class:`SessionScope` is the async scope. :class:`SyncSessionScope` applies the same rule
and lifecycle to sync sessions on the legacy layer's sync engine, with the *thread* in the
role of the task; legacy code run through ``sync_compat.run_legacy`` uses the async scope
itself, so it joins the calling task's session.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import warnings
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from ._cleanup import run_to_completion
from ._guard import cancellation_rearmed, deliver_rearmed_cancellation
from ._hooks import NESTED, TEST_ROOT, hand_over_hooks, run_ready_hooks
from ._hooks import install as install_hooks
from ._options import NO_OPTIONS, SessionOptions
from ._ping import BEGIN_ON_CHECKOUT
from .exceptions import (
    ConcurrentSessionUseError,
    PoolTimeoutError,
    SessionNestingError,
    TestIsolationError,
    UncommittedChangesWarning,
)

if TYPE_CHECKING:
    from ._database import Database

logger = logging.getLogger("atom_async_db")

_UNSAVED = "atom_async_db.unsaved"  # flushed (or joined-in) writes awaiting the real COMMIT
_WROTE = "atom_async_db.wrote"  # the session flushed at least once in its life
# Kept by nested sessions only (their life is one block), for the hand-over to the outer:
_NESTED = NESTED
_CHANGED = "atom_async_db.changed"  # the objects it updated (strong references)
_DELETED = "atom_async_db.deleted"  # the identity keys it deleted

COMMITTED_BEFORE_CANCEL_NOTE = (
    "atom_async_db: the block's COMMIT completed before this cancellation took effect, "
    "so its changes are saved"
)

#: Keyword arguments that make a session a nested block's session.
NESTED_SESSION = {"join_transaction_mode": "create_savepoint", "info": {_NESTED: True}}
#: ... and a session that joins a test's rolled-back transaction directly: it stands for
#: the real transaction (its commit is the test's logical commit, see ``_hooks``).
TEST_ROOT_SESSION = {
    "join_transaction_mode": "create_savepoint",
    "info": {_NESTED: True, TEST_ROOT: True},
}


class TrackedSession(Session):
    """The sync session behind every AsyncSession we create: records unsaved writes and
    keeps after-commit hooks (``_hooks``), and (``begin_at_checkout``) has its transaction
    begun as its connection's pre-ping (``_ping``)."""

    begin_at_checkout = False

    def _connection_for_bind(self, engine: Any, execution_options: Any = None, **kw: Any) -> Any:
        if not self.begin_at_checkout:
            return super()._connection_for_bind(engine, execution_options, **kw)
        token = BEGIN_ON_CHECKOUT.set(True)
        try:
            return super()._connection_for_bind(engine, execution_options, **kw)
        finally:
            BEGIN_ON_CHECKOUT.reset(token)


install_hooks(TrackedSession)


class SingleTaskAsyncSession(AsyncSession):
    """The ``AsyncSession`` we hand out: refuses to be used by two tasks at the same time
    (``asyncio.gather`` over one session), with an error that says what to do instead of
    the driver's "another operation is in progress" or a broken session state.

    Using it from another task once the first is done with it (a streaming body, a
    background task) is fine.
    """

    _atom_user: asyncio.Task[Any] | None = None
    _atom_idle: asyncio.Event | None = None

    async def wait_until_idle(self, limit: float) -> bool:
        """Wait up to ``limit`` seconds for an operation another task runs on this session
        (``asyncio.gather`` siblings that outlive the block) to end; True if none runs."""
        user = self._atom_user
        if user is None or user.done() or user is asyncio.current_task():
            return True
        idle = self._atom_idle = asyncio.Event()
        try:
            async with asyncio.timeout(limit):
                await idle.wait()
        except TimeoutError:
            return False
        return True


def _one_task_at_a_time(name: str) -> Callable[..., Any]:
    method = getattr(AsyncSession, name)

    @functools.wraps(method)
    async def guarded(self: SingleTaskAsyncSession, *args: Any, **kwargs: Any) -> Any:
        task = asyncio.current_task()
        user = self._atom_user
        if user is task:  # re-entered by the same task
            return await method(self, *args, **kwargs)
        if user is not None and not user.done():
            raise ConcurrentSessionUseError(
                f"this AsyncSession is in use by task {user.get_name()!r} while task "
                f"{task.get_name() if task else None!r} called {name}(): a session runs one "
                "operation at a time, so use one session per task (open "
                "`get_async_db_session()` inside each task), or await the operations one "
                "after another"
            )
        self._atom_user = task
        try:
            result = await method(self, *args, **kwargs)
        except BaseException as error:
            if cancellation_rearmed():
                await deliver_rearmed_cancellation(error)
            raise
        finally:
            self._atom_user = None
            if self._atom_idle is not None:
                self._atom_idle.set()
        if name == "commit":
            await run_ready_hooks(self)
            if cancellation_rearmed():
                committed = not self.sync_session.info.get(_NESTED)
                await deliver_rearmed_cancellation(
                    note=COMMITTED_BEFORE_CANCEL_NOTE if committed else None
                )
        elif cancellation_rearmed():
            await deliver_rearmed_cancellation()
        return result

    return guarded


for _name in (
    "connection", "delete", "execute", "flush", "get", "get_one", "merge", "refresh",
    "run_sync", "scalar", "scalars", "stream", "stream_scalars", "commit",
):  # fmt: skip
    setattr(SingleTaskAsyncSession, _name, _one_task_at_a_time(_name))


@event.listens_for(TrackedSession, "after_flush")
def _after_flush(session: Session, _flush_context: Any) -> None:
    info = session.info
    info[_UNSAVED] = info[_WROTE] = True
    if info.get(_NESTED):  # the pre-flush lists, still
        info.setdefault(_CHANGED, []).extend(session.dirty)
        info.setdefault(_DELETED, set()).update(
            inspect(obj).identity_key for obj in session.deleted
        )


def _hand_over_to_outer(inner: Session, outer: Session) -> None:
    """After a nested block succeeded: its writes now await the outer block's COMMIT, and
    the outer session's objects must reflect them.

    Each block has its own identity map; without this, an object the outer block loaded
    keeps its old values after the inner block changed the row, and a later write from the
    outer would silently overwrite the inner change. The inner block's changed objects are
    held strongly (its identity map is weak: the inner code may have dropped them).
    """
    hand_over_hooks(inner, outer)
    if not inner.info.get(_WROTE):
        return
    outer.info[_UNSAVED] = True
    outer_map = outer.identity_map
    for key in inner.info.get(_DELETED, ()):
        stale = outer_map.get(key)
        if stale is not None:
            outer.expunge(stale)
    seen = {id(obj): obj for obj in inner.info.get(_CHANGED, ())}
    seen.update((id(obj), obj) for obj in inner.identity_map.values())
    for obj in seen.values():
        state = inspect(obj)
        if state.persistent and state.identity_key in outer_map:
            outer.merge(obj, load=False)


@event.listens_for(TrackedSession, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info[_UNSAVED] = False


def _at_rest(session: AsyncSession) -> bool:
    """No transaction, so no connection, and no other task in one of its methods."""
    user = getattr(session, "_atom_user", None)
    return session.sync_session.get_transaction() is None and (user is None or user.done())


def _holds_connection(session: AsyncSession) -> bool:
    transaction = session.sync_session.get_transaction()
    return bool(transaction is not None and transaction._connections)


def has_unsaved_changes(session: Session | AsyncSession) -> bool:
    """True when ``session`` holds writes that no COMMIT has made durable yet."""
    return bool(session.info.get(_UNSAVED) or session.new or session.dirty or session.deleted)


def _warn_uncommitted() -> None:
    warnings.warn(
        "the request session ended with changes that were never committed, so they were "
        "rolled back (including those of nested session blocks); call `db.commit()` "
        "(`await db.commit()` for an AsyncSession) in the route",
        UncommittedChangesWarning,
        stacklevel=3,
    )


@dataclass
class TestTransaction:
    """A test's outer transaction, which every session of the database joins through a
    SAVEPOINT while it is set (see :mod:`atom_async_db.testing`).

    ``connection`` serves async code (sessions, dependencies, ``run_legacy``) on the test's
    event loop; ``sync_connection`` serves legacy code in threads. Scopes of different
    tasks take turns on the one connection (``turn``); a task's nested scopes join its own.
    """

    __test__ = False  # not a test class, whatever pytest's naming rules say

    connection: AsyncConnection | None = None
    sync_connection: Connection | None = None
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    sync_turn: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class ActiveScope:
    """A task's (or thread's) innermost open scope, kept in the database's context variable.

    ``owner`` is the task of an async scope or the thread of a sync scope; a scope joins
    only an outer scope of its own owner.
    """

    owner: object
    session: AsyncSession | Session
    options: SessionOptions = NO_OPTIONS
    """The options of the transaction the scope is in (a joining scope's are its outer's)."""


def _restore(variable: ContextVar[ActiveScope | None], token: Token[ActiveScope | None]) -> None:
    try:
        variable.reset(token)
    except ValueError:  # exited in another context than entered (a framework's choice)
        previous = token.old_value
        variable.set(None if previous is Token.MISSING else previous)


class SessionScope:
    """Async context manager yielding an ``AsyncSession``; see the module docstring."""

    __slots__ = (
        "_commit",
        "_database",
        "_independent",
        "_options",
        "_outer",
        "_session",
        "_token",
        "_turn",
    )

    def __init__(
        self,
        database: Database,
        *,
        commit: bool,
        independent: bool = False,
        options: SessionOptions | None = None,
    ) -> None:
        self._database = database
        self._commit = commit
        self._independent = independent
        self._options = options
        self._outer: AsyncSession | None = None
        self._session: AsyncSession | None = None
        self._token: Token[ActiveScope | None] | None = None
        self._turn: asyncio.Lock | None = None

    async def __aenter__(self) -> AsyncSession:
        if self._session is not None:
            raise RuntimeError("a session scope cannot be entered twice; call the function again")
        database = self._database
        task = asyncio.current_task()
        active = database._active.get()
        outer = None
        # (A sync scope of the same task, the legacy API on the loop's thread, cannot be
        # joined: its connection is a sync driver's.)
        if active is None and database._disposed:  # (a block inside a session may go on)
            raise database._disposed_error()
        if active is not None and active.owner is task and isinstance(active.session, AsyncSession):
            outer = active.session
        options = self._options or NO_OPTIONS  # the options of the transaction it will be in
        pinned = database._test_transaction
        if pinned is not None and pinned.connection is None:
            raise TestIsolationError(
                "an async session was opened during a sync test's rolled-back transaction "
                "(the db_session fixture); async code cannot join it and would write to the "
                "test database for real. Test async code with async_db_session."
            )
        if outer is not None and (not self._independent or pinned is not None):
            assert active is not None
            if pinned is None and options and not options.held_by(active.options):
                raise SessionNestingError(
                    f"this block asks for {options.describe()} and would join its task's "
                    f"outer transaction, which has {active.options.describe()}: set "
                    "the options on the outermost session block, or pass independent=True "
                    "for a transaction of its own"
                )
            # The inner block must see what the outer one has done so far. (Inside a test
            # transaction, independent blocks join too: nothing there is really committed.)
            await outer.flush()
            connection = await outer.connection()
            session = database._sessionmaker(bind=connection, **NESTED_SESSION)
            self._outer = outer
            options = active.options
        elif pinned is not None:
            self._turn = await _take_turn(pinned, database)
            session = database._sessionmaker(bind=pinned.connection, **TEST_ROOT_SESSION)
        else:
            if (
                outer is not None
                and database.settings.dialect == "sqlite"
                and _holds_connection(outer)
            ):
                raise SessionNestingError(
                    "get_async_db_session(independent=True) cannot start on SQLite while this "
                    "task's outer session holds a transaction: SQLite runs one transaction at "
                    "a time, so each would wait for the other. Commit the outer session first, "
                    "or drop independent=True to join the outer transaction."
                )
            session = database._sessionmaker(bind=database.engine)
            # Its transaction begins at checkout, as the connection's ping (see _ping),
            # unless options are to be set on the connection before it begins.
            session.sync_session.begin_at_checkout = not self._options  # type: ignore[attr-defined]
        self._session = session
        self._token = database._active.set(ActiveScope(task, session, options))
        database._open_scopes.opened(self, task, asyncio.get_running_loop())
        # Inside a test transaction the options cannot apply (it has begun long ago).
        if self._options and self._outer is None and self._turn is None:
            try:
                await self._options.apply(session)
            except BaseException as error:
                await self.__aexit__(type(error), error, error.__traceback__)
                raise
        return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._exit(exc)
        finally:
            if self._turn is not None:
                self._turn.release()
            self._database._open_scopes.closed(self)

    async def _exit(self, exc: BaseException | None) -> None:
        session, token = self._session, self._token
        assert session is not None
        assert token is not None
        _restore(self._database._active, token)
        if exc is not None:
            await self._release(session, graceful=_is_graceful(exc))
            return
        try:
            if self._commit:
                await session.commit()
            elif has_unsaved_changes(session):
                _warn_uncommitted()
        except BaseException as error:
            await self._release(session, graceful=_is_graceful(error))
            raise
        if self._outer is not None:
            _hand_over_to_outer(session.sync_session, self._outer.sync_session)
        try:
            await self._release(session, graceful=True)
        except asyncio.CancelledError as cancel:
            if self._commit and self._outer is None and self._turn is None:
                cancel.add_note(COMMITTED_BEFORE_CANCEL_NOTE)
            raise

    async def _release(self, session: AsyncSession, *, graceful: bool) -> None:
        if graceful and _at_rest(session):
            # Committed (or never used): closing does no I/O, so no cancellation can cut
            # it short, and the shielded cleanup task would be pure overhead.
            session.sync_session.close()
            return
        limit = self._database.settings.cleanup_timeout
        await run_to_completion(_release(session, graceful, limit), deadline=2 * limit + 1)


async def _take_turn(pinned: TestTransaction, database: Database) -> asyncio.Lock:
    limit = database.settings.pool_timeout
    try:
        async with asyncio.timeout(limit):
            await pinned.turn.acquire()
    except TimeoutError:
        raise _turn_timeout("task", limit) from None
    return pinned.turn


def _turn_timeout(holder: str, limit: float) -> PoolTimeoutError:
    """No turn on a test transaction's one connection within ``pool_timeout``."""
    return PoolTimeoutError(
        f"inside a test transaction every session shares the test's one connection, and "
        f"another {holder}'s session held it for pool_timeout={limit:g} s; a {holder} that "
        f"waits for another {holder} while holding a session deadlocks here (end the "
        "session before waiting)"
    )


def _is_graceful(exc: BaseException) -> bool:
    """Whether a block that ended with ``exc`` left its connection in a known state.

    ``GeneratorExit``: a dependency generator closed by its consumer, not interrupted.
    """
    return isinstance(exc, (Exception, GeneratorExit, asyncio.CancelledError))


async def _release(session: AsyncSession, graceful: bool, limit: float) -> None:
    """Roll back what is uncommitted and give the connection back; invalidate it instead
    when its state is unknown (interrupted block) or the rollback fails or hangs.

    An operation that another task still runs on the session (a sibling of
    ``asyncio.gather`` that outlived the block) is waited for first: rolling back under
    it would wedge the session and leak its connection.
    """
    if isinstance(session, SingleTaskAsyncSession) and not await session.wait_until_idle(limit):
        graceful = False
    if graceful:
        try:
            async with asyncio.timeout(limit):
                if session.in_transaction():
                    await session.rollback()
                await session.close()
            return
        except Exception as error:
            logger.warning("rolling back a session failed (%r); invalidating its connection", error)
    try:
        async with asyncio.timeout(limit):
            await session.invalidate()
    except Exception as error:
        logger.warning("invalidating a session's connection failed (%r)", error)


class SyncSessionScope:
    """Context manager yielding a sync ``Session``: the async scope's rule and lifecycle for
    the legacy layer's sync engine, with the thread in the role of the task.

    ``make_session(**kw)`` builds the sessions (``sync_compat`` passes its session class);
    nested scopes get ``bind=`` the outer connection and ``join_transaction_mode``.
    """

    __slots__ = (
        "_commit",
        "_database",
        "_independent",
        "_make_session",
        "_outer",
        "_session",
        "_token",
        "_turn",
    )

    def __init__(
        self,
        database: Database,
        make_session: Callable[..., Session],
        *,
        commit: bool,
        independent: bool = False,
    ) -> None:
        self._database = database
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
        # The owner is the thread, or the task when this runs on an event loop's thread.
        task = asyncio.current_task() if asyncio._get_running_loop() is not None else None
        owner: object = task or threading.current_thread()
        active = self._database._active.get()
        if active is None and self._database._disposed:
            raise self._database._disposed_error()
        outer = None
        if active is not None and active.owner is owner and isinstance(active.session, Session):
            outer = active.session
        pinned = self._database._test_transaction
        pinned_connection = pinned.sync_connection if pinned is not None else None
        if pinned is not None and pinned_connection is None:
            raise TestIsolationError(
                "a legacy sync session was opened in a worker thread (a `def` route, "
                "asyncio.to_thread) during an async test's rolled-back transaction "
                "(async_db_session); it cannot join it and would write to the test database "
                "for real. Call that code through sync_compat.run_legacy, or test it with "
                "the db_session fixture."
            )
        if outer is not None and (not self._independent or pinned_connection is not None):
            outer.flush()  # the inner block must see what the outer one has done so far
            session = self._make_session(bind=outer.connection(), **NESTED_SESSION)
            self._outer = outer
        elif pinned is not None and pinned_connection is not None:
            # Threads take turns on the test's one connection, as tasks do on the async one.
            limit = self._database.settings.pool_timeout
            if not pinned.sync_turn.acquire(timeout=limit):
                raise _turn_timeout("thread", limit)
            self._turn = pinned.sync_turn
            session = self._make_session(bind=pinned_connection, **TEST_ROOT_SESSION)
        else:
            if (
                outer is not None
                and self._database.settings.dialect == "sqlite"
                and has_unsaved_changes(outer)
            ):
                raise SessionNestingError(
                    "get_db_session(independent=True) cannot start on SQLite while this "
                    "thread's outer session has written: SQLite runs one writer at a time, so "
                    "each would wait for the other. Commit the outer session first, or drop "
                    "independent=True to join the outer transaction."
                )
            session = self._make_session()
        self._session = session
        self._token = self._database._active.set(ActiveScope(owner, session))
        self._database._open_scopes.opened(self, owner, None)
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
            self._database._open_scopes.closed(self)

    def _exit(self, exc: BaseException | None) -> None:
        session, token = self._session, self._token
        assert session is not None
        assert token is not None
        _restore(self._database._active, token)
        if exc is not None:
            _release_sync(session, graceful=isinstance(exc, (Exception, GeneratorExit)))
            return
        try:
            if self._commit:
                session.commit()
            elif has_unsaved_changes(session):
                _warn_uncommitted()
        except BaseException as error:
            _release_sync(session, graceful=isinstance(error, Exception))
            raise
        if self._outer is not None:
            _hand_over_to_outer(session, self._outer)
        _release_sync(session, graceful=True)


def _release_sync(session: Session, graceful: bool) -> None:
    """:func:`_release` for sync sessions (the driver's own timeouts bound the I/O)."""
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
