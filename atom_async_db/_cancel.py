"""The cancellation guard: driver calls that a cancellation cannot cut in half, so a
cancelled task keeps its connection healthy instead of costing one.

With plain SQLAlchemy, a task cancelled while a statement is in flight abandons the
driver's call midway: asyncpg then sends a cancel request to the server, and SQLAlchemy,
which cannot tell what state the connection is in, throws it away. Under a storm of client
disconnects the pool churns through reconnects (``benchmarks/cancel_storm.py``: about 500
connections discarded per 1,000 cancelled tasks).

Here each async engine connects through ``_connector.guarded_connector``, which wraps
the driver's connection (and the prepared statements, transactions and cursors it hands
out, see ``_proxies``) so that the calling task never waits on the driver's own future,
only on a stand-in (``_Shielded``) that the driver's future wakes: a cancellation cancels
the stand-in, never the call. When the caller is cancelled meanwhile, the call is given
``cancel_grace`` seconds to finish:

- It finishes: its result is handed back as if nothing happened, so SQLAlchemy's view of
  the connection stays exact, and the cancellation is delivered again at the task's next
  await. When that is the connection's next driver call, it is taken there, before
  anything is sent (a COMMIT becomes a ROLLBACK: the cancelled task's work is undone). The
  session's cleanup then rolls back and returns a healthy connection.
- It does not: it is stopped. An aiosqlite statement is interrupted and fails, which
  leaves the connection consistent (as if it had finished). An asyncpg call is cancelled
  midway (asyncpg cancels the statement on the server) and the connection is marked
  *tainted*; ``_connector.install_cancellation_rules`` makes SQLAlchemy discard tainted
  connections and keep every other one.

Third-party internals. This module, ``_proxies``, ``_sqlite_here``, ``_connector``,
``_ping``, ``_pool``, ``_stats``, ``_tracked``, ``_nesting`` and ``_engine`` rely on these,
each
checked by name in ``tests/atom_async_db/test_third_party_internals.py``, which says what
breaks without it; pyproject.toml caps each driver at the versions verified:

- aiosqlite_conn_is_the_sqlite3_connection, aiosqlite_cursor_wraps_a_sqlite3_cursor,
  aiosqlite_thread_is_reachable, sqlalchemy_begins_a_transaction_with_dialect_do_begin;
- asyncpg_driver_object_types_exist;
- sqlalchemy_asyncpg_adapter_starts_transactions,
  sqlalchemy_asyncpg_dialect_sets_readonly_and_deferrable,
  sqlalchemy_async_conn_dialect_exists, sqlalchemy_session_connection_for_bind,
  sqlalchemy_session_transaction_connections, sqlalchemy_async_session_proxies_sync_methods,
  sqlalchemy_connection_record_starttime_is_set_before_connecting,
  sqlalchemy_pool_logger_namespace;
- asyncio_future_blocking_protocol, asyncio_task_uncancel,
  asyncio_get_running_loop_without_raising, weakset_data_is_its_set_of_references.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import types
import weakref
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import anyio

from ._classify import is_connection_loss

__all__ = [
    "COMMIT_ABANDONED_NOTE",
    "REARMED_REFS",
    "SETTLE_TIMEOUT",
    "ConnectionGuard",
    "cancellation_rearmed",
    "deliver_rearmed_cancellation",
    "guard_of",
]

# Calls that put a connection back at rest: a cancellation never stops them.
_ALWAYS_RUN = frozenset({"rollback", "close", "terminate", "reset", "is_closed"})

# How long a driver call cancelled on the server may take to wind down before the
# connection is given up on (its state is then unknown).
SETTLE_TIMEOUT = 5.0


def _unchanged(value: Any) -> Any:
    return value


class ConnectionGuard:
    """Runs one driver connection's calls so that cancellation lets them finish.

    ``tainted`` is True once a call had to be abandoned: the connection's state is then
    unknown and it must not be reused.
    """

    __slots__ = (
        "commit_outcome_unknown",
        "driver_types",
        "grace",
        "here",
        "interrupt",
        "tainted",
        "wrap",
    )

    def __init__(
        self,
        grace: float,
        interrupt: Callable[[], Awaitable[Any]] | None,
        *,
        here: object | None = None,
    ) -> None:
        self.grace = grace
        self.interrupt = interrupt  # stops a running statement (aiosqlite; asyncpg: cancel)
        self.tainted = False
        self.commit_outcome_unknown = False
        # aiosqlite with check_same_thread=False: what takes microseconds runs on the
        # loop's thread, not by a trip to the connection's thread, by the rules of this
        # _sqlite_here.LoopBudget (which builds on this module, hence no type here).
        self.here = here
        # What a call's result is wrapped in when it is a driver object whose methods do
        # I/O (set by _proxies; none for a guard that only settles a connect).
        self.driver_types: tuple[type, ...] = ()
        self.wrap: Callable[[Any], Any] = _unchanged

    async def commit(self, commit: Awaitable[Any]) -> Any:
        """Run a COMMIT; a connection lost meanwhile, or a COMMIT still running when a
        cancellation's grace ran out, leaves its outcome unknown (reported as
        :class:`CommitOutcomeUnknownError`, or as a note on the ``CancelledError``).

        Raises:
            CancelledError: the caller was cancelled; a note says when the COMMIT was
                abandoned mid-flight.
        """
        try:
            return await self._drive(commit)
        except asyncio.CancelledError as cancel:
            if self.tainted:
                cancel.add_note(COMMIT_ABANDONED_NOTE)
            raise
        except Exception as error:
            if is_connection_loss(error):
                self.commit_outcome_unknown = True
            raise

    @staticmethod
    def takes_cancellation(name: str) -> bool:
        """Whether the call about to be made (method ``name``) is where a cancellation
        re-armed by :meth:`_rearm` must land, before anything is sent.
        """
        if not _REARMED or name in _ALWAYS_RUN:
            return False
        task = asyncio.current_task()
        if task is None or task not in _REARMED:
            return False
        _REARMED.discard(task)
        return True

    async def deliver_cancellation(
        self, call: Awaitable[Any], rollback: Callable[[], Awaitable[Any]] | None
    ) -> Any:
        """Take the re-armed cancellation instead of making ``call`` (not started yet).
        A COMMIT (``rollback`` given) becomes a ROLLBACK: SQLAlchemy forgets the
        transaction either way, so it must not stay open.
        """
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            getattr(call, "close", lambda: None)()  # never started: nothing was sent
            if rollback is not None:
                try:
                    await self.run(rollback())
                except Exception:
                    self.tainted = True
            raise
        # The cancellation was withdrawn meanwhile.
        return await (self.run(call) if rollback is None else self.commit(call))

    async def run(self, awaitable: Awaitable[Any]) -> Any:
        """Await ``awaitable`` (a driver call) so that a cancellation of the caller lets it
        finish within the grace; see the module docstring.

        A coroutine, not ``_drive``'s generator, so a guarded method can be handed to
        ``create_task`` or anyio.
        """
        return await self._drive(awaitable)

    @types.coroutine
    def _drive(self, awaitable: Awaitable[Any]) -> Generator[Any, None, Any]:
        # The call runs in the caller's task, but the task never waits on the driver's own
        # future: a cancellation would cancel that future, and asyncpg would abandon the
        # statement. The task waits on a _Shielded stand-in instead, which wakes it when
        # the driver's future is done, at no extra turn of the loop, or, when cancelled,
        # detaches the task from that future and wakes it with the cancellation.
        steps = awaitable.__await__()
        try:
            pending = steps.send(None)
            while True:
                if pending is None:  # a bare yield (asyncio.sleep(0)): nothing to protect
                    try:
                        yield
                    except asyncio.CancelledError as cancel:
                        return (yield from self._settle_call(steps, None, cancel))
                else:
                    try:
                        yield _Shielded(pending)
                    except asyncio.CancelledError as cancel:
                        return (yield from self._settle_call(steps, pending, cancel))
                pending = steps.send(None)
        except StopIteration as done:
            value = done.value
            return self.wrap(value) if isinstance(value, self.driver_types) else value

    def _settle_call(
        self, steps: Generator[Any, None, Any], pending: Any, cancel: asyncio.CancelledError
    ) -> Generator[Any, None, Any]:
        """The caller was cancelled while the call waited for ``pending``: finish the call
        (see :meth:`settle`), then either re-arm the cancellation and hand back the call's
        outcome, or, when the call had to be stopped midway, raise the cancellation.
        """
        finished, value, error = yield from self.settle(steps, pending)
        if self.tainted or not finished:
            raise cancel
        self._rearm(cancel)
        if error is not None:
            raise error  # the call's own error
        return self.wrap(value) if isinstance(value, self.driver_types) else value

    @types.coroutine
    def settle(
        self, steps: Generator[Any, None, Any], pending: Any
    ) -> Generator[Any, None, tuple[bool, Any, BaseException | None]]:
        """Drive the rest of a call (``steps``, waiting for ``pending``) whatever
        cancellations arrive: up to ``grace`` seconds, then stopped, and given a few more
        seconds to wind down. Returns (finished, result, error).

        aiosqlite: the statement is interrupted and ends with an error, leaving the
        connection consistent. asyncpg: the call is cancelled (asyncpg cancels the
        statement on the server) midway, so the connection is tainted. A call that does
        not wind down either way (a SQLite busy wait ignores interrupts) taints it too.
        """
        loop = asyncio.get_running_loop()
        with anyio.CancelScope(shield=True):  # noqa: ASYNC100 (it waits: `yield from`)
            for limit, stop_first in ((self.grace, False), (SETTLE_TIMEOUT, True)):
                if stop_first:
                    if self.interrupt is not None:
                        yield from _ignoring_cancellation(self.interrupt())
                    else:
                        self.tainted = True
                        if pending is not None:
                            pending.cancel()
                give_up_at = loop.time() + limit
                while loop.time() < give_up_at or (pending is not None and pending.done()):
                    if pending is not None and not pending.done():
                        yield from _wait(pending, give_up_at - loop.time())
                        continue
                    try:
                        pending = steps.send(None)
                    except StopIteration as done:
                        return True, done.value, None
                    except BaseException as error:  # the call's own error (or cancellation)
                        return True, None, error
                    if pending is None:
                        yield from _wait(None, 0)
        self.tainted = True
        with contextlib.suppress(RuntimeError):
            steps.close()
        return False, None, None

    @staticmethod
    def _rearm(cancel: asyncio.CancelledError) -> None:
        """Deliver ``cancel`` again at the task's next await: taken now, it would have
        interrupted SQLAlchemy between a call that finished and the bookkeeping after it.
        :func:`deliver_rearmed_cancellation` makes sure it lands before the session
        method that made the call returns.
        """
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()
        task.cancel(cancel.args[0] if cancel.args else None)
        _REARMED.add(task)


class _Shielded:
    """What a task waits on instead of a driver's future ``pending``: asyncio's task protocol
    for awaited objects (``_asyncio_future_blocking``, ``add_done_callback``, ``cancel``,
    ``result``), minus the cancelling of ``pending``.

    ``pending``'s own done-callback wakes the task, so a call that finishes wakes it with no
    extra turn of the loop. The task is woken with None, never with ``pending``'s outcome:
    the driver's coroutine reads that itself on the next send, so its own error handling
    runs (asyncpg re-prepares a statement a schema change invalidated, and swallows a reset
    while closing). ``cancel()`` takes the callback off ``pending`` (which runs on) and
    wakes the task with the ``CancelledError``; once ``pending`` is done, the wake-up is
    already on its way and ``cancel()`` returns False, so the task takes the cancellation
    at its next step, as it does for a finished future.
    """

    __slots__ = ("_asyncio_future_blocking", "_cancelled", "_context", "_loop", "_pending", "_wake")

    def __init__(self, pending: asyncio.Future[Any]) -> None:
        self._pending = pending
        self._loop = pending._loop  # (asyncio reads it where there is no get_loop())
        self._asyncio_future_blocking = True
        self._cancelled: tuple[Any, ...] | None = None  # the CancelledError's arguments

    def add_done_callback(self, wake: Callable[[Any], object], *, context: Any = None) -> None:
        self._wake = wake
        self._context = context
        self._pending.add_done_callback(self._done, context=context)

    def _done(self, pending: asyncio.Future[Any]) -> None:
        if pending.cancelled() or pending.exception() is not None:
            self._wake(self)  # (wakes the task with None: see the class docstring)
        else:
            self._wake(pending)  # the same, but asyncio's fast path

    def cancel(self, msg: Any = None) -> bool:
        if self._cancelled is not None or self._pending.done():
            return False
        self._pending.remove_done_callback(self._done)
        self._cancelled = () if msg is None else (msg,)
        self._loop.call_soon(self._wake, self, context=self._context)
        return True

    def done(self) -> bool:
        return self._cancelled is not None or self._pending.done()

    def cancelled(self) -> bool:
        return self._cancelled is not None

    def result(self) -> None:
        if self._cancelled is not None:
            # A new error each time: one kept here would hold this object, and so the
            # task's wake-up and the task, through its traceback (a cycle only the GC ends).
            raise asyncio.CancelledError(*self._cancelled)

    def __repr__(self) -> str:
        return f"<_Shielded {self._pending!r}>"


def _resolve(waiter: asyncio.Future[Any], _: object = None) -> None:
    if not waiter.done():
        waiter.set_result(None)


@types.coroutine
def _wait(pending: asyncio.Future[Any] | None, timeout: float) -> Generator[Any, None, None]:
    """Wait until ``pending`` is done (None: one turn of the loop) or ``timeout`` passed;
    a cancellation meanwhile is the one being settled (anyio delivers it again).
    """
    if pending is None:
        with contextlib.suppress(asyncio.CancelledError):
            yield
        return
    waiter = pending.get_loop().create_future()
    wake = functools.partial(_resolve, waiter)
    timer = waiter.get_loop().call_later(timeout, wake)
    pending.add_done_callback(wake)
    try:
        yield from waiter
    except asyncio.CancelledError:
        pass
    finally:
        timer.cancel()
        pending.remove_done_callback(wake)


def _ignoring_cancellation(awaitable: Awaitable[Any]) -> Generator[Any, None, None]:
    """Await ``awaitable`` (for up to ``SETTLE_TIMEOUT``) through the cancellations that
    are being settled.
    """
    task = asyncio.ensure_future(awaitable)
    give_up_at = task.get_loop().time() + SETTLE_TIMEOUT
    while not task.done() and (remaining := give_up_at - task.get_loop().time()) > 0:
        yield from _wait(task, remaining)
    if task.done() and not task.cancelled():
        task.exception()


# Tasks whose cancellation a guard re-armed and that has not landed yet; REARMED_REFS is
# its underlying set, whose truth is a cheap test on every driver call.
_REARMED: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
REARMED_REFS: set[Any] = _REARMED.data  # type: ignore[attr-defined]


def cancellation_rearmed() -> bool:
    """Whether some task has a re-armed cancellation still to land (a cheap check before
    :func:`deliver_rearmed_cancellation`).
    """
    return bool(REARMED_REFS)


async def deliver_rearmed_cancellation(
    cause: BaseException | None = None, *, note: str | None = None
) -> None:
    """Let a cancellation re-armed during this task's last driver calls land now.

    Called when a session method (or ``run_legacy``) returns or raises: the cancellation
    then surfaces inside the ``asyncio.timeout``, cancel scope or ``try`` that wraps the
    call, as it would have without the guard, never later and elsewhere.

    Raises:
        CancelledError: a cancellation was re-armed for this task (with ``cause`` as its
            context and ``note`` added).
    """
    if not _REARMED:
        return
    task = asyncio.current_task()
    if task is None or task not in _REARMED:
        return
    _REARMED.discard(task)
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError as cancel:
        if note is not None:
            cancel.add_note(note)
        if cause is not None and cancel is not cause:
            raise cancel from cause
        raise


COMMIT_ABANDONED_NOTE = (
    "atom_async_db: the COMMIT was still running when this cancellation's grace period "
    "(cancel_grace) ran out and was stopped, so the transaction may or may not have been "
    "committed; read the data back to find out."
)


def guard_of(driver_connection: Any) -> ConnectionGuard | None:
    """The guard of a driver connection made by ``_connector.guarded_connector``, else
    None.
    """
    guard = getattr(driver_connection, "_atom_guard", None)
    return guard if isinstance(guard, ConnectionGuard) else None
