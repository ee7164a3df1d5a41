"""The stacks compared, each able to run one operation of a workload and to say how long it
waited for a connection, how many statements it sent and how many connections it opened.

- ``ours``: ``get_async_db_session()`` of atom_async_db, default settings.
- ``peer`` / ``peer_ping``: a plain ``AsyncSession`` from ``async_sessionmaker`` on an engine
  with the seed's pool (20 + 30), ``expire_on_commit=False``, ``pool_pre_ping`` off / on.
- ``raw``: the driver itself: an asyncpg pool of the same size, or aiosqlite connections
  (as many as ``ours`` keeps), running the same statements.
- ``threads``: ``sync_compat.get_db_session()`` driven by threads (the sync engine).
- ``run_legacy``: the same legacy function through ``sync_compat.run_legacy`` (the async
  pool, through the greenlet bridge).
- ``--full`` adds ``ours_pool5`` (pool 5 + 0) and ``peer_nullpool`` (no pool at all).
- On request (``--stacks``): ``ours_noping`` (``pool_pre_ping=False``) and
  ``ours_unguarded`` (the cancellation guard off, through an ``async_creator``), to
  measure what each costs.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from sqlalchemy import Integer, String, event, select, update
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool

import atom_async_db
from atom_async_db import Database
from atom_async_db._settings import build_settings
from sync_compat import get_db_session, run_legacy

ROWS = 10_000
EXTERNAL_IO = 0.020  # the "long transaction" workload's simulated external call
THREAD_CAP = 200  # threads stack: one thread per client, at most this many
# "request": a point read in a session that never commits and ends with a rollback, as a
# route's (get_async_db, AsyncDB; the peer's `async with SessionLocal() as session`).
WORKLOADS = ("read", "read_core", "write", "long_in", "long_out", "request")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "bench_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(100))
    counter: Mapped[int] = mapped_column(Integer, default=0)


async def prepare(database: Database) -> None:
    """(Re)create ``bench_users`` with its rows."""
    async with database.engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)
        rows = [
            {"id": i, "email": f"user{i}@example.com", "name": f"User {i}"}
            for i in range(1, ROWS + 1)
        ]
        await connection.execute(User.__table__.insert(), rows)


POINT_READ = select(User.id, User.email, User.name, User.counter)
RAW_READ = "SELECT id, email, name, counter FROM bench_users WHERE id = {}"
RAW_WRITE = "UPDATE bench_users SET counter = counter + 1 WHERE id = {}"


@dataclass
class Counters:
    """What a stack's engine did, counted by events (read before and after a window)."""

    statements: int = 0  # statements sent, BEGIN / COMMIT / pings included
    connects: int = 0  # connections opened
    round_trips: int = 0  # asyncpg: messages written to the server (each awaits a reply)

    def count_round_trips(self, driver_connection: Any) -> None:
        """Count what an asyncpg connection writes to its socket: every request (a query,
        BEGIN, a ping's statements, COMMIT) is one write, answered before the next."""
        transport = getattr(driver_connection, "_transport", None)
        if transport is None:  # another driver: no count
            return
        write = transport.write

        def counted_write(data: Any) -> None:
            self.round_trips += 1
            write(data)

        transport.write = counted_write

    def watch(self, engine: Engine, *, pre_ping: bool) -> None:
        def statement(*_: Any) -> None:
            self.statements += 1

        def connect(dbapi_connection: Any, _record: Any) -> None:
            self.connects += 1
            self.count_round_trips(getattr(dbapi_connection, "driver_connection", None))

        # asyncpg sends BEGIN as a statement of its own; sqlite3 sends none of its own (our
        # BEGIN IMMEDIATE is counted as the statement it is).
        events = ["before_cursor_execute", "commit", "rollback"]
        if engine.dialect.name == "postgresql":
            events.append("begin")
        for name in events:
            event.listen(engine, name, statement)
        event.listen(engine.pool, "connect", connect)
        if pre_ping:
            event.listen(engine.pool, "checkout", statement)


class Stack:
    """Base of the stacks; ``threaded`` stacks run ``op_sync`` in threads."""

    name = ""
    threaded = False

    def __init__(self, url: URL, dialect: str) -> None:
        self.url = url
        self.dialect = dialect
        self.counters = Counters()
        self.application_name = f"bench-{self.name}"

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def checked_out(self) -> int:
        return 0

    async def op(self, workload: str, key: int) -> float:
        raise NotImplementedError

    def op_sync(self, workload: str, key: int) -> float:
        raise NotImplementedError


async def _orm_op(session: Any, workload: str, key: int) -> float:
    """The workload on an AsyncSession whose transaction has begun; returns the wait."""
    started = time.perf_counter()
    await session.connection()  # the pool checkout (and BEGIN), timed on its own
    waited = time.perf_counter() - started
    if workload == "read_core":
        (await session.execute(POINT_READ.where(User.id == key))).first()
    elif workload == "write":
        await session.execute(update(User).where(User.id == key).values(counter=User.counter + 1))
    else:
        await session.get(User, key)
        if workload == "long_in":
            await asyncio.sleep(EXTERNAL_IO)
    return waited


def legacy_op(workload: str, key: int) -> float:
    """The workload as legacy sync code: ``with get_db_session()``, as in the seed."""
    with get_db_session() as session:
        return _sync_orm_op(session, workload, key)


def _sync_orm_op(session: Session, workload: str, key: int) -> float:
    started = time.perf_counter()
    session.connection()
    waited = time.perf_counter() - started
    if workload == "read_core":
        session.execute(POINT_READ.where(User.id == key)).first()
    elif workload == "write":
        session.execute(update(User).where(User.id == key).values(counter=User.counter + 1))
    else:
        session.get(User, key)
        if workload == "long_in":
            time.sleep(EXTERNAL_IO)
    return waited


class Ours(Stack):
    name = "ours"
    options: ClassVar[dict[str, Any]] = {}

    def open_database(self) -> Database:
        return Database(self.url, application_name=self.application_name, **self.options)

    async def start(self) -> None:
        self.database = self.open_database()
        settings = self.database.settings
        self.counters.watch(self.database.engine.sync_engine, pre_ping=settings.pool_pre_ping)

    async def stop(self) -> None:
        await self.database.dispose()

    def checked_out(self) -> int:
        return int(self.database.engine.pool.checkedout())  # type: ignore[attr-defined]

    async def op(self, workload: str, key: int) -> float:
        if workload == "long_out":
            await asyncio.sleep(EXTERNAL_IO)
        commit = workload != "request"
        async with self.database.get_async_db_session(commit=commit) as session:
            return await _orm_op(session, workload, key)


class OursPool5(Ours):
    name = "ours_pool5"
    options: ClassVar[dict[str, Any]] = {"pool_size": 5, "max_overflow": 0}


class OursNoPing(Ours):
    name = "ours_noping"
    options: ClassVar[dict[str, Any]] = {"pool_pre_ping": False}


class OursUnguarded(Ours):
    """``ours`` with the cancellation guard off (an ``async_creator`` of one's own)."""

    name = "ours_unguarded"

    def open_database(self) -> Database:
        creator = plain_creator(self.url, self.application_name)
        return Database(
            self.url,
            application_name=self.application_name,
            engine_options={"async_creator": creator},
        )


def plain_creator(url: str | URL, application_name: str | None = None) -> Callable[[], Any]:
    """An ``async_creator`` that connects with the driver directly (no cancellation guard)."""
    settings = build_settings(url)
    if settings.dialect == "sqlite":
        import aiosqlite

        path = settings.url.database
        return lambda: aiosqlite.connect(path, isolation_level=None)
    import asyncpg

    dsn = settings.url.set(drivername="postgresql").render_as_string(hide_password=False)
    server_settings = {"application_name": application_name} if application_name else None
    return lambda: asyncpg.connect(dsn, server_settings=server_settings)


class Peer(Stack):
    name = "peer"
    pre_ping = False
    nullpool = False

    async def start(self) -> None:
        options: dict[str, Any] = {"pool_pre_ping": self.pre_ping}
        if self.nullpool:
            options["poolclass"] = NullPool
        else:
            options.update(pool_size=20, max_overflow=30)
        if self.dialect == "postgresql":
            options["connect_args"] = {
                "server_settings": {"application_name": self.application_name}
            }
        self.engine: AsyncEngine = create_async_engine(self.url, **options)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.counters.watch(self.engine.sync_engine, pre_ping=self.pre_ping)

    async def stop(self) -> None:
        await self.engine.dispose()

    def checked_out(self) -> int:
        return int(getattr(self.engine.pool, "checkedout", lambda: 0)())

    async def op(self, workload: str, key: int) -> float:
        if workload == "long_out":
            await asyncio.sleep(EXTERNAL_IO)
        if workload == "request":
            async with self.sessions() as session:
                return await _orm_op(session, workload, key)
        async with self.sessions.begin() as session:
            return await _orm_op(session, workload, key)


class PeerPing(Peer):
    name = "peer_ping"
    pre_ping = True


class PeerNullPool(Peer):
    name = "peer_nullpool"
    nullpool = True


class Raw(Stack):
    """The driver alone: one statement per read, BEGIN + UPDATE + COMMIT per write."""

    name = "raw"

    async def start(self) -> None:
        ours = build_settings(self.url)  # the same pool size as `ours` by default
        if self.dialect == "postgresql":
            import asyncpg

            dsn = self.url.set(drivername="postgresql").render_as_string(hide_password=False)

            async def counted(connection: Any) -> None:
                self.counters.connects += 1
                self.counters.count_round_trips(connection)

            self.pool = await asyncpg.create_pool(
                dsn,
                min_size=ours.pool_size,
                max_size=ours.pool_size + ours.max_overflow,
                server_settings={"application_name": self.application_name},
                init=counted,
            )
        else:
            import aiosqlite

            self.free: list[Any] = []
            self.waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
            self.total = ours.pool_size
            for _ in range(self.total):
                connection = await aiosqlite.connect(self.url.database, isolation_level=None)
                await connection.execute("PRAGMA journal_mode=WAL")
                await connection.execute("PRAGMA busy_timeout=30000")
                self.free.append(connection)
                self.counters.connects += 1

    async def _acquire(self) -> Any:
        # First come, first served: a released connection goes to the oldest waiter, never
        # back to the task that released it (an asyncio.Queue lets that task take it back).
        if self.free and not self.waiters:
            return self.free.pop()
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return await waiter

    def _release(self, connection: Any) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self.free.append(connection)

    async def stop(self) -> None:
        if self.dialect == "postgresql":
            await self.pool.close()
        else:
            for connection in self.free:
                await connection.close()

    def checked_out(self) -> int:
        if self.dialect == "postgresql":
            return int(self.pool.get_size() - self.pool.get_idle_size())
        return self.total - len(self.free)

    async def op(self, workload: str, key: int) -> float:
        if workload == "long_out":
            await asyncio.sleep(EXTERNAL_IO)
        read = RAW_READ.format(key)
        if self.dialect == "postgresql":
            started = time.perf_counter()
            async with self.pool.acquire() as connection:
                waited = time.perf_counter() - started
                if workload == "write":
                    async with connection.transaction():
                        await connection.execute(RAW_WRITE.format(key))
                    self.counters.statements += 3
                elif workload == "long_in":
                    async with connection.transaction():
                        await connection.fetchrow(read)
                        await asyncio.sleep(EXTERNAL_IO)
                    self.counters.statements += 3
                else:
                    await connection.fetchrow(read)
                    self.counters.statements += 1
            self.counters.statements += 1  # asyncpg's reset on release
            return waited
        started = time.perf_counter()
        connection = await self._acquire()
        waited = time.perf_counter() - started
        try:
            if workload in ("write", "long_in"):
                await connection.execute("BEGIN IMMEDIATE")
                if workload == "write":
                    await connection.execute(RAW_WRITE.format(key))
                else:
                    await (await connection.execute(read)).fetchone()
                    await asyncio.sleep(EXTERNAL_IO)
                await connection.execute("COMMIT")
                self.counters.statements += 3
            else:
                await (await connection.execute(read)).fetchone()
                self.counters.statements += 1
        except BaseException:
            await connection.rollback()
            raise
        finally:
            self._release(connection)
        return waited


class Threads(Stack):
    """Legacy code on threads: ``sync_compat.get_db_session()`` and the sync engine."""

    name = "threads"
    threaded = True

    async def start(self) -> None:
        self.database = atom_async_db.configure(self.url, application_name=self.application_name)
        engine = self.database.sync_engine
        self.counters.watch(engine, pre_ping=self.database.settings.pool_pre_ping)

    async def stop(self) -> None:
        await self.database.dispose()

    def checked_out(self) -> int:
        return int(self.database.sync_engine.pool.checkedout())  # type: ignore[attr-defined]

    def op_sync(self, workload: str, key: int) -> float:
        if workload == "long_out":
            time.sleep(EXTERNAL_IO)
        return legacy_op(workload, key)


class RunLegacy(Ours):
    """The same legacy function, awaited through ``run_legacy`` (the async pool of the
    default database, which ``sync_compat`` uses)."""

    name = "run_legacy"

    def open_database(self) -> Database:
        return atom_async_db.configure(self.url, application_name=self.application_name)

    async def op(self, workload: str, key: int) -> float:
        if workload == "long_out":
            await asyncio.sleep(EXTERNAL_IO)
        return await run_legacy(legacy_op, workload, key)


STACKS: dict[str, type[Stack]] = {
    stack.name: stack
    for stack in (
        *(Ours, Peer, PeerPing, Raw, Threads, RunLegacy),
        *(OursPool5, PeerNullPool, OursNoPing, OursUnguarded),
    )
}
DEFAULT_STACKS = ("ours", "peer", "peer_ping", "raw", "threads", "run_legacy")
