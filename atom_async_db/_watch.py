"""The statement watch: slow statements, transactions left idle between statements, and
monitored sessions' timings.

Installed on an engine only when one of them is wanted (``slow_statement_threshold``,
``idle_in_transaction_threshold``, or a monitored session on it), since SQLAlchemy then
calls two functions around every statement.

- **Slow statements**: one WARNING each, with the duration and the SQL (its parameters
  never: they may hold personal data or secrets), and ``extra`` fields that structured
  logging picks up.
- **Idle in transaction**: the time between the end of one driver call and the start of
  the next while a transaction is open is time the transaction held its connection and
  locks without using them: an HTTP call or a sleep inside the session block (the seed's
  "long transactions with external calls"). A gap longer than the threshold is reported
  when the next call starts, naming that place; a slow statement is not a gap.
- **Timings**: every timed statement's duration goes into its pool's ``statement_time``
  histogram (:attr:`~atom_async_db.PoolStats.statement_time`): all statements on an
  engine with a threshold, else those of monitored sessions (:func:`monitoring`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from ._leaks import describe, place, user_frames

logger = logging.getLogger("atom_async_db")

__all__ = ["MONITORED", "Timing", "install_statement_watch", "monitoring"]


class Timing:
    """A monitored block's statements: how many, and their total time."""

    __slots__ = ("seconds", "statements")

    def __init__(self) -> None:
        self.statements = 0
        self.seconds = 0.0


#: The timing of the monitored block this context is in (``monitoring``), if any.
MONITORED: ContextVar[Timing | None] = ContextVar("atom_async_db.monitored", default=None)

_STARTED = "atom_db_statement_started"  # in the pooled connection's info
_LAST = "atom_db_last_call"  # (when the last driver call ended, its SQL), in a transaction
_SQL_SHOWN = 2000  # characters of SQL in a log line

_WATCHED: weakref.WeakSet[Engine] = weakref.WeakSet()
_INSTALLING = threading.Lock()


def install_statement_watch(
    engine: Engine,
    *,
    slow: float | None,
    idle: float | None,
    always: bool = False,
) -> None:
    """Watch ``engine``'s statements (see the module docstring): ``always`` installs it
    without a threshold, for monitored sessions; once per engine.
    """
    if (slow is None and idle is None and not always) or engine in _WATCHED:
        return
    with _INSTALLING:
        if engine in _WATCHED:
            return
        _WATCHED.add(engine)
    time_all = slow is not None or idle is not None

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, _c: Any, statement: str, *_: Any) -> None:
        now = time.perf_counter()
        info = conn.info
        if idle is not None:
            last = info.get(_LAST)
            if last is not None and now - last[0] > idle and conn.in_transaction():
                _report_idle(now - last[0], idle, last[1], statement)
        info[_STARTED] = now

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn: Any, _c: Any, statement: str, *_: Any) -> None:
        now = time.perf_counter()
        info = conn.info
        took = now - info.pop(_STARTED, now)
        if slow is not None and took > slow:
            _report_slow(took, slow, statement, conn)
        timing = MONITORED.get()
        if time_all or timing is not None:
            counters = getattr(conn.engine.pool, "counters", None)
            if counters is not None:
                with counters.lock:
                    counters.record(counters.statement_time, took)
            if timing is not None:
                timing.statements += 1
                timing.seconds += took
                logger.debug("monitored session: %.3g s: %s", took, statement[:_SQL_SHOWN])
        if idle is not None:
            info[_LAST] = (now, statement)

    if idle is None:
        return

    @event.listens_for(engine, "begin")
    def _begun(conn: Any) -> None:
        conn.info[_LAST] = (time.perf_counter(), "BEGIN")

    def ending(verb: str) -> Any:
        def _ending(conn: Any) -> None:
            last = conn.info.pop(_LAST, None)
            if last is not None and time.perf_counter() - last[0] > idle:
                _report_idle(time.perf_counter() - last[0], idle, last[1], verb)

        return _ending

    event.listen(engine, "commit", ending("COMMIT"))
    event.listen(engine, "rollback", ending("ROLLBACK"))


def _report_slow(took: float, threshold: float, statement: str, conn: Any) -> None:
    shown = statement[:_SQL_SHOWN]
    logger.warning(
        "slow statement: %.3g s (slow_statement_threshold=%g s): %s",
        took,
        threshold,
        shown,
        extra={
            "atom_db_duration_seconds": took,
            "atom_db_statement": shown,
            "atom_db_pool": getattr(conn.engine.pool, "stats_name", None),
        },
    )


def _report_idle(gap: float, threshold: float, before: str, after: str) -> None:
    frames = user_frames()
    logger.warning(
        "a transaction stayed open for %.3g s between two statements without using the "
        "database (idle_in_transaction_threshold=%g s), holding its connection and locks: "
        "something slow ran inside the session block, such as an HTTP call or a sleep. "
        "Do it before or after the block. Between %r and %r, resumed at (innermost "
        "first):\n%s",
        gap,
        threshold,
        before[:200],
        after[:200],
        describe(frames),
        extra={
            "atom_db_idle_seconds": gap,
            "atom_db_resumed_at": place(frames),
        },
    )


@contextlib.contextmanager
def monitoring(engine: Engine) -> Iterator[Timing]:
    """Inside, the statements of this context on ``engine`` are timed into its pool's
    ``statement_time`` and each is logged at DEBUG; at the end one INFO line sums them up,
    naming the application's code that opened the block.
    """
    install_statement_watch(engine, slow=None, idle=None, always=True)
    frames = user_frames()
    timing = Timing()
    token = MONITORED.set(timing)
    started = time.perf_counter()
    try:
        yield timing
    finally:
        MONITORED.reset(token)
        open_for = time.perf_counter() - started
        logger.info(
            "monitored session at %s: %d statements, %.3g s in the database, open %.3g s",
            place(frames),
            timing.statements,
            timing.seconds,
            open_for,
            extra={
                "atom_db_statements": timing.statements,
                "atom_db_statement_seconds": timing.seconds,
                "atom_db_open_seconds": open_for,
                "atom_db_opened_at": place(frames),
            },
        )
