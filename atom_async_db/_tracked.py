"""The session classes, composed with the application's own, and their flush bookkeeping:
``TrackedSession`` (the sync session under every session the library makes),
``SingleTaskAsyncSession`` (the ``AsyncSession`` it hands out), the same composed with an
application's classes (``single_task_class``, ``backing_class``: SQLModel's), what their
flushes record, and how a nested block's work is handed to the outer session.
"""

from __future__ import annotations

import asyncio
import functools
import inspect as inspect_module
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event, inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from ._cancel import cancellation_rearmed, deliver_rearmed_cancellation
from ._hooks import hand_over_hooks, run_ready_hooks
from ._hooks import install as install_hooks
from ._ping import BEGIN_ON_CHECKOUT
from ._state import KEY, Role, SessionState, peek, role_info, role_of, state_of
from .exceptions import ConcurrentSessionUseError

__all__ = [
    "COMMITTED_BEFORE_CANCEL_NOTE",
    "NESTED_SESSION",
    "TEST_ROOT_SESSION",
    "BackingSession",
    "SingleTaskAsyncSession",
    "TrackedSession",
    "backing_class",
    "composed_class",
    "hand_over_to_outer",
    "has_unsaved_changes",
    "merge_session_keywords",
    "single_task_class",
    "with_keywords",
]

COMMITTED_BEFORE_CANCEL_NOTE = (
    "atom_async_db: the block's COMMIT completed before this cancellation took effect, "
    "so its changes are saved"
)

#: Keyword arguments that make a session a nested block's session.
NESTED_SESSION: dict[str, Any] = {
    "join_transaction_mode": "create_savepoint",
    "info": role_info(Role.NESTED),
}
#: ... and a session that joins a test's rolled-back transaction directly: it stands for
#: the real transaction (its commit is the test's logical commit, see ``_hooks``).
TEST_ROOT_SESSION: dict[str, Any] = {
    "join_transaction_mode": "create_savepoint",
    "info": role_info(Role.TEST_ROOT),
}


def merge_session_keywords(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """``theirs`` over ``mine``, with the two ``info`` dictionaries merged (as a
    ``sessionmaker`` does), so that the library's own entries never drop the caller's.
    """
    merged = {**mine, **theirs}
    if "info" in mine and "info" in theirs:
        merged["info"] = {**mine["info"], **theirs["info"]}
    return merged


def with_keywords(
    make_session: Callable[..., AsyncSession], keywords: dict[str, Any]
) -> Callable[..., AsyncSession]:
    """``make_session`` with ``keywords`` under those each call passes (``info`` merged)."""
    mine = dict(keywords)

    def make(**kw: Any) -> AsyncSession:
        return make_session(**merge_session_keywords(mine, kw))

    return make


class TrackedSession(Session):
    """The sync session under every session the library makes: records unsaved writes and
    keeps after-commit hooks (``_hooks``), and (``begin_at_checkout``) has its transaction
    begun as its connection's pre-ping (``_ping``).
    """

    begin_at_checkout = False
    awaits_hooks = False  # see BackingSession

    def _connection_for_bind(self, engine: Any, execution_options: Any = None, **kw: Any) -> Any:
        if not self.begin_at_checkout:
            return super()._connection_for_bind(engine, execution_options, **kw)
        token = BEGIN_ON_CHECKOUT.set(True)
        try:
            return super()._connection_for_bind(engine, execution_options, **kw)
        finally:
            BEGIN_ON_CHECKOUT.reset(token)


class BackingSession(TrackedSession):
    """The sync session behind a ``SingleTaskAsyncSession``: its after-commit hooks run
    when ``commit()`` returns to async code, where async callbacks can be awaited.
    """

    awaits_hooks = True


install_hooks(TrackedSession)


def _one_task_at_a_time(name: str, base: type[AsyncSession] = AsyncSession) -> Callable[..., Any]:
    """The method ``name`` of ``base``, refusing a second task while one runs it, and
    delivering a cancellation the guard re-armed (see ``_cancel``) once the call is back.
    """
    method = getattr(base, name)
    is_commit = name == "commit"

    @functools.wraps(method)
    async def one_task_at_a_time(self: SingleTaskAsyncSession, *args: Any, **kwargs: Any) -> Any:
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
        if is_commit:
            await run_ready_hooks(self)
            if cancellation_rearmed():
                committed = role_of(self) is Role.OWNER
                await deliver_rearmed_cancellation(
                    note=COMMITTED_BEFORE_CANCEL_NOTE if committed else None
                )
        elif cancellation_rearmed():
            await deliver_rearmed_cancellation()
        return result

    return one_task_at_a_time


class SingleTaskAsyncSession(AsyncSession):
    """The ``AsyncSession`` we hand out: refuses to be used by two tasks at the same time
    (``asyncio.gather`` over one session), with an error that says what to do instead of
    the driver's "another operation is in progress" or a broken session state.

    Using it from another task once the first is done with it (a streaming body, a
    background task) is fine. Each method that awaits the database is wrapped by
    :func:`_one_task_at_a_time`; they are listed at the end of the class.
    """

    _atom_user: asyncio.Task[Any] | None = None
    _atom_idle: asyncio.Event | None = None

    async def wait_until_idle(self, limit: float) -> bool:
        """Wait up to ``limit`` seconds for an operation another task runs on this session
        (``asyncio.gather`` siblings that outlive the block) to end; True if none runs.
        """
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

    if not TYPE_CHECKING:  # (type checkers keep AsyncSession's exact signatures)
        commit = _one_task_at_a_time("commit")
        connection = _one_task_at_a_time("connection")
        delete = _one_task_at_a_time("delete")
        execute = _one_task_at_a_time("execute")
        flush = _one_task_at_a_time("flush")
        get = _one_task_at_a_time("get")
        get_one = _one_task_at_a_time("get_one")
        merge = _one_task_at_a_time("merge")
        refresh = _one_task_at_a_time("refresh")
        run_sync = _one_task_at_a_time("run_sync")
        scalar = _one_task_at_a_time("scalar")
        scalars = _one_task_at_a_time("scalars")
        stream = _one_task_at_a_time("stream")
        stream_scalars = _one_task_at_a_time("stream_scalars")


# The methods above; an application's session class gets them wrapped again around its own,
# with its own public coroutine methods (SQLModel's ``exec``), except these, which only
# end the session's work and may run from another task (a cleanup).
_ONE_TASK_METHODS = (
    "commit",
    "connection",
    "delete",
    "execute",
    "flush",
    "get",
    "get_one",
    "merge",
    "refresh",
    "run_sync",
    "scalar",
    "scalars",
    "stream",
    "stream_scalars",
)
_ENDING_METHODS = frozenset({"close", "rollback", "invalidate", "reset"})


_SessionT = TypeVar("_SessionT")

# Composed once per pair of classes, so sessions of one class share one type.
_COMPOSED: dict[tuple[type, type], Any] = {}


def composed_class(
    ours: type[_SessionT],
    application: type,
    prefix: str,
    methods: Callable[[], dict[str, Any]] | None = None,
) -> type[_SessionT]:
    """``ours`` composed with an application's own session class ``application`` (ours
    first, so the library's behaviour wraps the application's), with ``methods()`` added;
    made once per pair, and ``ours`` itself when it already is an ``application``.
    """
    if issubclass(ours, application):
        return ours
    composed: type[_SessionT] | None = _COMPOSED.get((ours, application))
    if composed is None:
        composed = _COMPOSED[ours, application] = type(
            f"{prefix}{application.__name__}", (ours, application), methods() if methods else {}
        )
    return composed


def single_task_class(application: type[AsyncSession]) -> type[SingleTaskAsyncSession]:
    """The ``AsyncSession`` class handed out for an application's own ``application`` class:
    ours composed with it, so that its methods (SQLModel's ``exec``) are there and each
    awaiting one runs one task at a time.
    """

    def one_task_methods() -> dict[str, Any]:
        own = {
            name
            for klass in application.__mro__[: application.__mro__.index(AsyncSession)]
            for name, value in vars(klass).items()
            if not name.startswith("_")
            and name not in _ENDING_METHODS
            and inspect_module.iscoroutinefunction(value)
        }
        return {name: _one_task_at_a_time(name, application) for name in {*_ONE_TASK_METHODS, *own}}

    return composed_class(SingleTaskAsyncSession, application, "SingleTask", one_task_methods)


def backing_class(application: type[Session]) -> type[BackingSession]:
    """The sync session class behind our ``AsyncSession`` for an application's own sync
    ``application`` class (SQLModel's ``Session``): ours composed with it.
    """
    return composed_class(BackingSession, application, "Backing")


# --------------------------------------------------------------------------- flush bookkeeping


@event.listens_for(TrackedSession, "after_flush")
def _after_flush(session: Session, _flush_context: Any) -> None:
    state = state_of(session)
    state.unsaved = state.wrote = True
    if state.role is Role.NESTED:  # the pre-flush lists, still
        if state.changed is None:
            state.changed, state.deleted = [], set()
        assert state.deleted is not None
        state.changed.extend(session.dirty)
        state.deleted.update(inspect(obj).identity_key for obj in session.deleted)


@event.listens_for(TrackedSession, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    state = session.info.get(KEY)  # (every transaction: no call)
    if type(state) is SessionState and transaction.parent is None:
        state.unsaved = False


def hand_over_to_outer(inner: Session, outer: Session) -> None:
    """After a nested block succeeded: its writes now await the outer block's COMMIT, and
    the outer session's objects must reflect them.

    Each block has its own identity map; without this, an object the outer block loaded
    keeps its old values after the inner block changed the row, and a later write from the
    outer would silently overwrite the inner change. The inner block's changed objects are
    held strongly (its identity map is weak: the inner code may have dropped them).
    """
    hand_over_hooks(inner, outer)
    state = peek(inner)
    if state is None or not state.wrote:
        return
    state_of(outer).unsaved = True
    outer_map = outer.identity_map
    for key in state.deleted or ():
        stale = outer_map.get(key)
        if stale is not None:
            outer.expunge(stale)
    seen = {id(obj): obj for obj in state.changed or ()}
    seen.update((id(obj), obj) for obj in inner.identity_map.values())
    for obj in seen.values():
        instance = inspect(obj)
        if instance.persistent and instance.identity_key in outer_map:
            outer.merge(obj, load=False)


def has_unsaved_changes(session: Session | AsyncSession) -> bool:
    """True when ``session`` holds writes that no COMMIT has made durable yet."""
    state = peek(session)
    return bool(
        (state is not None and state.unsaved) or session.new or session.dirty or session.deleted
    )
