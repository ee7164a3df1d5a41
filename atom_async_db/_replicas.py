"""Read replicas: where a read-only session goes, read-your-writes within a task, and each
replica's health and lag, checked at a bounded rate.

A session opened with ``replica=True`` goes to a usable replica (in turn, when there are
several), and to the primary when:

- this task (this request) has written to the primary before: its reads must see its own
  writes, which a replica may not have replayed yet. A write is any statement the primary
  ran for the task that is not a read (``SELECT``, ``SHOW``, transaction control), even one
  rolled back since. Tasks started afterwards inherit this, as they inherit the context;
  another request starts afresh, so across requests a replica may still be behind by
  up to ``max_replica_lag`` (pass a client-side token, or read from the primary, where
  that matters);
- the task is inside an open session on the primary: the block joins it, and sees what it
  has written so far;
- no replica is usable: each is checked with one query at most every
  ``replica_check_interval`` seconds (the first time before its first session, later in
  the background), and skipped while it is down or behind by more than
  ``max_replica_lag`` seconds. A replica that fails when a session connects is skipped
  at once. Read-only sessions on the primary are ``read_only``, as they would be on a
  replica, so code that writes fails the same way wherever it lands.

A replica's lag is the time since it last replayed a transaction, while it has received
WAL it has not replayed yet; a replica that has replayed all it received is not behind.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from ._options import SessionOptionArgs
from .exceptions import DatabaseUnavailableError, PoolTimeoutError

logger = logging.getLogger("atom_async_db")

__all__ = ["ReplicaScope", "ReplicaStatus", "Replicas"]

# A statement that starts with one of these does not write.
_READS = frozenset({"SELECT", "SHOW", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"})

_LAG_QUERY = text(
    "SELECT pg_is_in_recovery(), CASE WHEN NOT pg_is_in_recovery() "
    "OR pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0 "
    "ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END"
)

# What a replica that is gone makes a session's first step raise.
_GONE = (DatabaseUnavailableError, PoolTimeoutError, DBAPIError, OSError, TimeoutError)


class _Server(Protocol):
    """A replica's own database (a ``Database``): its engines and session scopes."""

    @property
    def engine(self) -> AsyncEngine: ...

    @property
    def get_async_db_session(self) -> Callable[..., Any]: ...

    async def dispose(self) -> None: ...

    def _reopen(self) -> None: ...


@dataclass(frozen=True)
class ReplicaStatus:
    """What the last check of one replica found (``Database.replica_status()``)."""

    server: str
    """The replica's URL, password masked."""
    usable: bool
    """Whether sessions go to it: it answered, and is not behind by more than
    ``max_replica_lag``."""
    lag: float | None
    """Seconds it was behind at the last check (None: not known, it did not answer)."""
    reason: str
    """Why it is skipped (``""`` while usable)."""
    checked_at: float | None
    """When it was last checked (``time.monotonic()``), None before its first check."""


class _Replica:
    __slots__ = ("checked_at", "checking", "database", "lag", "reason", "server", "usable")

    def __init__(self, server: str, database: _Server) -> None:
        self.server = server
        self.database = database
        self.usable = False
        self.lag: float | None = None
        self.reason = "not checked yet"
        self.checked_at: float | None = None
        self.checking: asyncio.Task[None] | None = None


class Replicas:
    """The replicas of one database, and what each task has written to the primary."""

    def __init__(
        self,
        replicas: Sequence[tuple[str, _Server]],
        *,
        max_lag: float,
        interval: float,
        check_timeout: float,
    ) -> None:
        self._replicas = [_Replica(server, database) for server, database in replicas]
        self._turn = itertools.cycle(range(len(self._replicas)))
        self._max_lag = max_lag
        self._interval = interval
        self._check_timeout = check_timeout
        self._primary_only = False  # for the log: no replica was usable at the last choice
        self.wrote: ContextVar[bool] = ContextVar("atom_async_db.wrote_to_primary", default=False)

    def watch_writes(self, engine: AsyncEngine) -> AsyncEngine:
        """Note on the running task when ``engine`` (the primary's) runs a write for it."""
        wrote = self.wrote

        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def _note_write(_connection: Connection, _cursor: Any, statement: str, *_: Any) -> None:
            # (SQLAlchemy's greenlet runs in the task's context: the task sees the note.)
            if statement.lstrip()[:9].split(None, 1)[0].upper() not in _READS:
                wrote.set(True)

        return engine

    def status(self) -> tuple[ReplicaStatus, ...]:
        """Each replica's state, as its last check found it."""
        return tuple(
            ReplicaStatus(r.server, r.usable, r.lag, r.reason, r.checked_at) for r in self._replicas
        )

    async def choose(self) -> _Replica | None:
        """The replica the next read-only session goes to, None for the primary."""
        now = time.monotonic()
        for replica in self._replicas:
            if replica.checked_at is None:
                await self._check(replica)  # its first session waits for its first check
            elif now - replica.checked_at >= self._interval and replica.checking is None:
                replica.checking = asyncio.get_running_loop().create_task(
                    self._check(replica), name=f"atom_async_db: check replica {replica.server}"
                )
        for _ in self._replicas:
            replica = self._replicas[next(self._turn)]
            if replica.usable:
                if self._primary_only:
                    self._primary_only = False
                    logger.info("read-only sessions go to the replicas again")
                return replica
        if not self._primary_only:
            self._primary_only = True
            logger.warning(
                "no replica is usable (%s): read-only sessions go to the primary",
                "; ".join(f"{r.server}: {r.reason}" for r in self._replicas),
            )
        return None

    async def _check(self, replica: _Replica) -> None:
        try:
            async with asyncio.timeout(self._check_timeout):
                async with replica.database.engine.connect() as connection:
                    in_recovery, lag = (await connection.execute(_LAG_QUERY)).one()
        except Exception as error:
            self._judge(replica, None, f"down ({type(error).__name__}: {_first_line(error)})")
        else:
            lag = float(lag)
            too_far = lag > self._max_lag
            reason = f"{lag:.1f} s behind (max_replica_lag={self._max_lag:g})" if too_far else ""
            del in_recovery  # (a promoted replica is a primary: never behind)
            self._judge(replica, lag, reason)
        finally:
            replica.checked_at = time.monotonic()
            replica.checking = None

    def _judge(self, replica: _Replica, lag: float | None, reason: str) -> None:
        usable = not reason
        if usable != replica.usable or replica.checked_at is None:
            if usable:
                logger.info("replica %s is usable (%.1f s behind)", replica.server, lag or 0)
            else:
                logger.warning("replica %s is skipped: %s", replica.server, reason)
        replica.usable, replica.lag, replica.reason = usable, lag, reason

    def gone(self, replica: _Replica, error: BaseException) -> None:
        """A session could not start on ``replica``: skip it until its next check."""
        self._judge(replica, None, f"down ({type(error).__name__}: {_first_line(error)})")
        replica.checked_at = time.monotonic()

    async def dispose(self) -> None:
        """Dispose every replica's database (the primary's shutdown)."""
        for replica in self._replicas:
            if replica.checking is not None:
                replica.checking.cancel()
            await replica.database.dispose()

    def reopen(self) -> None:
        """Open the replicas' databases again (the primary is opened again)."""
        for replica in self._replicas:
            replica.database._reopen()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


class ReplicaScope:
    """``get_async_db_session(replica=True)``: a session on a replica, or on the primary
    (see the module docstring); async context manager.
    """

    __slots__ = ("_commit", "_joins", "_options", "_primary", "_replicas", "_scope")

    def __init__(
        self,
        primary: Callable[..., Any],
        replicas: Replicas,
        *,
        joins_primary: Callable[[], bool],
        commit: bool,
        options: SessionOptionArgs,
    ) -> None:
        self._primary = primary
        self._replicas = replicas
        self._commit = commit
        self._options = options
        self._scope: Any = None
        self._joins = joins_primary

    async def __aenter__(self) -> AsyncSession:
        replicas = self._replicas
        if self._joins():  # into the task's open session on the primary
            self._scope = self._primary(commit=self._commit, **self._options)
            return await self._scope.__aenter__()  # type: ignore[no-any-return]
        replica = None if replicas.wrote.get() else await replicas.choose()
        if replica is not None:
            scope = replica.database.get_async_db_session(commit=self._commit, **self._options)
            session: AsyncSession = await scope.__aenter__()
            try:
                await session.connection()  # a replica that is gone fails here
            except _GONE as error:
                await scope.__aexit__(type(error), error, error.__traceback__)
                replicas.gone(replica, error)
            else:
                self._scope = scope
                return session
        self._scope = self._primary(commit=self._commit, **{**self._options, "read_only": True})
        return await self._scope.__aenter__()  # type: ignore[no-any-return]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._scope.__aexit__(exc_type, exc, tb)
