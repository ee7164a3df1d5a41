"""Session scopes: the async lifecycle behind ``get_async_db_session()`` and
``get_async_db``, on the session policy of ``_nesting``.

A scope opens an ``AsyncSession`` (``expire_on_commit=False``); on a clean exit it commits
(``get_async_db_session()``) or leaves committing to the caller (``get_async_db``); on any
exception it rolls back; it always releases the connection. A cancelled block is rolled
back like a failed one: cancellation cannot cut a driver call in half (see ``_cancel``), so
the connection is at rest and goes back to the pool, unless the guard had to abandon a
call, in which case SQLAlchemy has already discarded it. A block interrupted otherwise
(``KeyboardInterrupt``) may have left a statement half-sent, so its connection is
invalidated, never reused.

A nested scope (see ``_nesting``) gets a session of its own on the outer scope's
connection: its commit releases the savepoint, its failure rolls back to it, and the real
COMMIT happens when the outermost scope commits. Other tasks (even ones started inside the
scope, which inherit its context) never join. The sync scope of ``sync_compat`` applies
the same policy with the *thread* in the role of the task; legacy code run through
``sync_compat.run_legacy`` uses this scope itself, so it joins the calling task's session.
Both scopes derive from ``ScopeBase``, which holds their state and the bookkeeping of
entering and leaving, so that each shell holds only its own I/O.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, Protocol, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from ._cleanup import run_to_completion
from ._drain import OpenScopes
from ._loops import LoopEngines
from ._nesting import Outer, Place, is_graceful, place
from ._options import NO_OPTIONS, SessionOptions
from ._settings import Settings
from ._tracked import (
    COMMITTED_BEFORE_CANCEL_NOTE,
    NESTED_SESSION,
    TEST_ROOT_SESSION,
    SingleTaskAsyncSession,
    hand_over_to_outer,
    has_unsaved_changes,
)
from .exceptions import (
    DatabaseDisposedError,
    PoolTimeoutError,
    SessionNestingError,
    UncommittedChangesWarning,
)

logger = logging.getLogger("atom_async_db")


def _at_rest(session: AsyncSession) -> bool:
    """No transaction, so no connection, and no other task in one of its methods."""
    user = getattr(session, "_atom_user", None)
    return session.sync_session.get_transaction() is None and (user is None or user.done())


def warn_uncommitted() -> None:
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


class Scopes:
    """What the session scopes of one database share, kept by its ``Database``: its
    settings, how its sessions are made, the scope each task or thread is in (``active``),
    the open scopes (``open``, for the shutdown drain), the test transaction while a test
    runs in one, and whether the database was disposed.
    """

    __slots__ = (
        "active",
        "disposed",
        "engines",
        "guarded",
        "make_session",
        "name",
        "open",
        "settings",
        "test_transaction",
    )

    def __init__(
        self,
        name: str,
        settings: Settings,
        engines: LoopEngines,
        make_session: async_sessionmaker[AsyncSession],
    ) -> None:
        self.name = name  # the database, as its errors name it
        self.settings = settings
        self.engines = engines
        self.make_session = make_session
        self.active: ContextVar[ActiveScope | None] = ContextVar(
            "atom_async_db.active_scope", default=None
        )
        self.open = OpenScopes()
        # Set while a test runs inside a rolled-back transaction (atom_async_db.testing).
        self.test_transaction: TestTransaction | None = None
        self.disposed = False  # set when dispose() begins: no new sessions
        # Whether the connections have the cancellation guard (an async_creator of the
        # application's own replaces the guarded connector, see _engine).
        self.guarded = "async_creator" not in settings.engine_options

    def engine(self) -> AsyncEngine:
        """The running loop's engine; none is made once the database was disposed."""
        engine = self.engines.current(create=not self.disposed)
        if engine is None:
            raise self.disposed_error()
        return engine

    def disposed_error(self) -> DatabaseDisposedError:
        return DatabaseDisposedError(
            f"{self.name} was disposed (its shutdown began), so it opens no new session. To "
            "start again, configure it anew: atom_async_db.configure(...) for the default "
            "database, or a new Database(...)"
        )


def refuse_a_second_sqlite_connection(scopes: Scopes, what: str) -> None:
    """Refuse, at once, a session of its own that this task opens on SQLite while it holds
    a session of the same database in a transaction: each async SQLite transaction holds
    the write lock from its start, so the second would wait for the first until a timeout.

    Raises:
        SessionNestingError: that is the case (``what`` names the call in the message).
    """
    if scopes.settings.dialect != "sqlite":
        return
    active = scopes.active.get()
    if active is None or active.owner is not asyncio.current_task():
        return
    session = active.session
    outer = Outer(
        active.options, session.sync_session if isinstance(session, AsyncSession) else session
    )
    if outer.in_transaction:
        raise SessionNestingError(
            f"{what} on SQLite cannot start a transaction of its own while this task's "
            "open session holds one: SQLite runs one writer at a time, so it would wait "
            "for that session until a timeout. Use get_async_db_session() or "
            "get_db_session(), which join the open session, or end that session first."
        )


def restore_active(
    variable: ContextVar[ActiveScope | None], token: Token[ActiveScope | None]
) -> None:
    """Leave a scope: its outer one is the active one again."""
    try:
        variable.reset(token)
    except ValueError:  # exited in another context than entered (a framework's choice)
        previous = token.old_value
        variable.set(None if previous is Token.MISSING else previous)


class _Turn(Protocol):
    def release(self) -> None: ...


_S = TypeVar("_S", AsyncSession, Session)


class ScopeBase(Generic[_S]):
    """What the async scope and the sync one (``sync_compat``) share: their state, and the
    bookkeeping around entering and leaving, so that each shell holds only its I/O.
    """

    __slots__ = ("_commit", "_independent", "_outer", "_scopes", "_session", "_token", "_turn")

    def __init__(self, scopes: Scopes, *, commit: bool, independent: bool) -> None:
        self._scopes = scopes
        self._commit = commit
        self._independent = independent
        self._outer: _S | None = None  # the outer scope's session, when joined
        self._session: _S | None = None
        self._token: Token[ActiveScope | None] | None = None
        self._turn: _Turn | None = None  # held on a test transaction's one connection

    def _active(self) -> ActiveScope | None:
        """The scope this one opens inside, if any, once entering is allowed.

        Raises:
            RuntimeError: this scope was entered before.
            DatabaseDisposedError: it is a top-level scope and the database was disposed
                (a block inside an open session may go on).
        """
        if self._session is not None:
            raise RuntimeError("a session scope cannot be entered twice; call the function again")
        active = self._scopes.active.get()
        if active is None and self._scopes.disposed:
            raise self._scopes.disposed_error()
        return active

    def _opened(
        self,
        session: _S,
        owner: object,
        options: SessionOptions,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        """Record ``session`` as the owner's innermost scope, and as open (for the drain)."""
        self._session = session
        self._token = self._scopes.active.set(ActiveScope(owner, session, options))
        self._scopes.open.opened(self, owner, loop)

    def _leaving(self) -> _S:
        """Make the outer scope the active one again; returns this scope's session."""
        session, token = self._session, self._token
        assert session is not None
        assert token is not None
        restore_active(self._scopes.active, token)
        return session

    def _closed(self) -> None:
        """The last step of leaving, whatever happened: the turn and the drain's record."""
        if self._turn is not None:
            self._turn.release()
        self._scopes.open.closed(self)


class SessionScope(ScopeBase[AsyncSession]):
    """Async context manager yielding an ``AsyncSession``; see the module docstring."""

    __slots__ = ("_make_session", "_options")

    def __init__(
        self,
        scopes: Scopes,
        *,
        commit: bool,
        independent: bool = False,
        options: SessionOptions | None = None,
        make_session: Callable[..., AsyncSession] | None = None,
    ) -> None:
        super().__init__(scopes, commit=commit, independent=independent)
        self._options = options
        # (An AsyncSessionFactory's, with its own keywords; else the database's.)
        self._make_session = make_session or scopes.make_session

    async def __aenter__(self) -> AsyncSession:
        active = self._active()
        scopes = self._scopes
        task = asyncio.current_task()
        options = self._options or NO_OPTIONS  # the options of the transaction it will be in
        outer = None
        # (A sync scope of the same task, the legacy API on the loop's thread, cannot be
        # joined: its connection is a sync driver's.)
        outer_options = NO_OPTIONS
        if active is not None and active.owner is task and isinstance(active.session, AsyncSession):
            outer, outer_options = active.session, active.options
        pinned = scopes.test_transaction
        where = Place.OWN  # the common case, decided without a call
        if outer is not None or pinned is not None:
            where = place(
                "async",
                scopes.settings.dialect,
                outer=None if outer is None else Outer(outer_options, outer.sync_session),
                test_transaction=None if pinned is None else pinned.connection is not None,
                independent=self._independent,
                options=options,
            )
        if where is Place.JOIN:
            assert outer is not None
            # The inner block must see what the outer one has done so far.
            await outer.flush()
            connection = await outer.connection()
            session = self._make_session(bind=connection, **NESTED_SESSION)
            self._outer = outer
            options = outer_options
        elif where is Place.TEST_ROOT:
            assert pinned is not None
            self._turn = await _take_turn(pinned, scopes.settings.test_turn_timeout)
            session = self._make_session(bind=pinned.connection, **TEST_ROOT_SESSION)
        else:
            session = self._make_session(bind=scopes.engine())
            # Its transaction begins at checkout, as the connection's ping (see _ping),
            # unless options are to be set on the connection before it begins.
            session.sync_session.begin_at_checkout = not self._options  # type: ignore[attr-defined]
        self._opened(session, task, options, asyncio.get_running_loop())
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
            self._closed()

    async def _exit(self, exc: BaseException | None) -> None:
        session = self._leaving()
        if exc is not None:
            await self._release(session, graceful=is_graceful("async", exc))
            return
        try:
            if self._commit:
                await session.commit()
            elif has_unsaved_changes(session):
                warn_uncommitted()
        except BaseException as error:
            await self._release(session, graceful=is_graceful("async", error))
            raise
        if self._outer is not None:
            hand_over_to_outer(session.sync_session, self._outer.sync_session)
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
        limit = self._scopes.settings.cleanup_timeout
        if graceful and self._scopes.guarded:
            task = asyncio.current_task()
            user = getattr(session, "_atom_user", None)
            if task is not None and not task.cancelling() and (user is None or user.done()):
                # The guard lets the ROLLBACK finish whatever cancellation comes meanwhile
                # (it never stops one, see _cancel), and nothing else here awaits: the
                # cleanup needs no task of its own to shield it.
                await _release(session, graceful, limit)
                return
        await run_to_completion(_release(session, graceful, limit), deadline=2 * limit + 1)


async def _take_turn(pinned: TestTransaction, limit: float) -> asyncio.Lock:
    try:
        async with asyncio.timeout(limit):
            await pinned.turn.acquire()
    except TimeoutError:
        raise turn_timeout("task", limit) from None
    return pinned.turn


def turn_timeout(holder: str, limit: float) -> PoolTimeoutError:
    """No turn on a test transaction's one connection within ``pool_timeout``."""
    return PoolTimeoutError(
        f"inside a test transaction every session shares the test's one connection, and "
        f"another {holder}'s session held it for pool_timeout={limit:g} s; a {holder} that "
        f"waits for another {holder} while holding a session deadlocks here (end the "
        "session before waiting)"
    )


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
                transaction = session.sync_session.get_transaction()
                if transaction is not None and not transaction.is_active:
                    # A failed COMMIT or flush: closing alone would leave the driver's
                    # transaction open on the connection.
                    await session.rollback()
                await session.close()  # rolls back what is open: one trip into SQLAlchemy
            return
        except Exception as error:
            logger.warning("rolling back a session failed (%r); invalidating its connection", error)
    try:
        async with asyncio.timeout(limit):
            await session.invalidate()
    except Exception as error:
        logger.warning("invalidating a session's connection failed (%r)", error)
