"""Read replicas: where a read-only session goes, read-your-writes within a task, and each
replica's health and lag, checked at a bounded rate.

A session opened with ``replica=True`` goes to a usable replica (in turn, when there are
several), and to the primary when:

- this task (this request) has written to the primary before: its reads must see its own
  writes, which a replica may not have replayed yet. A write is any statement the primary
  ran for the task other than ``SELECT``, ``SHOW``, ``SET`` and transaction control, even
  one rolled back since. Tasks it starts afterwards inherit this, as they inherit the
  context; writes of tasks it started before, or of threads, are theirs alone. Another
  request starts afresh, so across requests a replica may still be behind by up to
  ``max_replica_lag``;
- the task is inside an open session on the primary (or a test's transaction): the block
  joins it, and sees what it has written so far;
- it asks for ``SERIALIZABLE``, which a hot standby refuses;
- no replica is usable: each is checked with one query at most every
  ``replica_check_interval`` seconds (the first time before its first sessions, which
  share that check; later in the background), and skipped while it is down or behind by
  more than ``max_replica_lag`` seconds. A replica that fails, or does not answer within
  the check's timeout, when a session connects is skipped at once.

On the primary (but when it joins) the session is ``read_only``, as it would be on a
replica, so code that writes fails the same way wherever it lands; a database without
replicas sends every ``replica=True`` session there.

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
from ._session import Scopes
from .exceptions import DatabaseUnavailableError, PoolTimeoutError

logger = logging.getLogger("atom_async_db")

__all__ = ["ReplicaScope", "ReplicaStatus", "Replicas"]

# A statement that starts with one of these does not write.
# (SET: session options are SET LOCAL. A WITH may hold a writing statement: it counts.)
_READS = ("SELECT", "SHOW", "SET", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")

# (A replica that was promoted is a primary: never behind. One that restarted reports
# the start of a WAL segment as received, below what it replayed: it is not behind.)
_LAG_QUERY = text(
    "SELECT CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() IS NULL "
    "OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0 "
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
        self.check_timeout = check_timeout
        """Seconds a check, or a session's first step on a replica, may take."""
        self._primary_only = False  # for the log: no replica was usable at the last choice
        self.wrote: ContextVar[bool] = ContextVar("atom_async_db.wrote_to_primary", default=False)

    def watch_writes(self, engine: AsyncEngine) -> AsyncEngine:
        """Note on the running task when ``engine`` (the primary's) runs a write for it."""
        wrote = self.wrote

        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def _note_write(_connection: Connection, _cursor: Any, statement: str, *_: Any) -> None:
            # (SQLAlchemy's greenlet runs in the task's context: the task sees the note.)
            if not statement.lstrip()[:9].upper().startswith(_READS):
                wrote.set(True)

        return engine

    def status(self) -> tuple[ReplicaStatus, ...]:
        """Each replica's state, as its last check found it."""
        return tuple(
            ReplicaStatus(r.server, r.usable, r.lag, r.reason, r.checked_at) for r in self._replicas
        )

    async def choose(self) -> _Replica | None:
        """The replica the next read-only session goes to, None for the primary."""
        if not self._replicas:
            return None
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        first = []
        for replica in self._replicas:
            checking = replica.checking
            if checking is not None and checking.get_loop() is not loop:
                checking = None  # (a check of a loop that has ended)
            if checking is None and (
                replica.checked_at is None or now - replica.checked_at >= self._interval
            ):
                checking = replica.checking = loop.create_task(
                    self._check(replica), name=f"atom_async_db: check replica {replica.server}"
                )
            if replica.checked_at is None and checking is not None:
                first.append(checking)
        if first:
            # A replica's first sessions wait for its first check: one check each, all at
            # once, which a cancelled session does not stop.
            await asyncio.wait(first)
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
            async with asyncio.timeout(self.check_timeout):
                async with replica.database.engine.connect() as connection:
                    lag = float((await connection.execute(_LAG_QUERY)).scalar_one())
        except asyncio.CancelledError:
            replica.checking = None
            raise
        except Exception as error:
            self._judge(replica, None, self._down(error))
        else:
            too_far = lag > self._max_lag
            reason = f"{lag:.1f} s behind (max_replica_lag={self._max_lag:g})" if too_far else ""
            self._judge(replica, lag, reason)
        replica.checked_at = time.monotonic()
        replica.checking = None

    def _down(self, error: BaseException) -> str:
        if isinstance(error, TimeoutError):
            return f"down (no answer within {self.check_timeout:g} s)"
        text = str(error).strip()
        return f"down ({type(error).__name__}: {text.splitlines()[0] if text else ''})"

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
        self._judge(replica, None, self._down(error))
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


class ReplicaScope:
    """``get_async_db_session(replica=True)``: a session on a replica, or on the primary
    (see the module docstring); async context manager.
    """

    __slots__ = ("_commit", "_options", "_primary", "_replicas", "_scope", "_scopes")

    def __init__(
        self,
        primary: Callable[..., Any],
        scopes: Scopes,
        replicas: Replicas,
        *,
        commit: bool,
        options: SessionOptionArgs,
    ) -> None:
        self._primary = primary  # the primary's get_async_db_session
        self._scopes = scopes  # the primary's
        self._replicas = replicas
        self._commit = commit
        self._options = options
        self._scope: Any = None

    async def __aenter__(self) -> AsyncSession:
        scopes, replicas = self._scopes, self._replicas
        active = scopes.active.get()
        if active is None and scopes.disposed:
            raise scopes.disposed_error()
        if scopes.test_transaction is not None or (
            active is not None and active.owner is asyncio.current_task()
        ):  # it joins the task's open session on the primary (or the test's)
            self._scope = self._primary(commit=self._commit, **self._options)
            return await self._scope.__aenter__()  # type: ignore[no-any-return]
        # (A hot standby refuses SERIALIZABLE.)
        serializable = str(self._options.get("isolation_level", "")).upper() == "SERIALIZABLE"
        replica = None if replicas.wrote.get() or serializable else await replicas.choose()
        if replica is not None:
            scope = replica.database.get_async_db_session(commit=self._commit, **self._options)
            session: AsyncSession = await scope.__aenter__()
            try:
                async with asyncio.timeout(replicas.check_timeout):
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
