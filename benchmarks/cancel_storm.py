"""Cancellation storm: what cancelled tasks cost, plain SQLAlchemy against ``atom_async_db``.

Many tasks share a small pool; each adds a row, runs a slow statement and commits, and is
cancelled at a seeded random point of that work. The point is picked per task among four
phases (waiting for a connection, inside the slow statement, during COMMIT, while the
session closes) and hit through event hooks, not sleeps. (``atom_async_db`` closes a
committed session without I/O, so nothing is left to interrupt there: a cancel aimed at
that phase arrives after the block and counts as "finished".) The cancel comes by
``task.cancel()``, by an expiring ``asyncio.timeout``, or by an anyio task group's cancel
scope. Counted per storm: where the cancels landed, what the tasks saw, connections the
pool discarded and opened, warning and error lines (log records and Python warnings),
connections left checked out or idle in a transaction, and the rows: every commit a task
saw succeed must be there, every task cancelled before its COMMIT was sent must have left
nothing.

    python -m benchmarks.cancel_storm                      # embedded SQLite (temp file)
    python -m benchmarks.cancel_storm --url postgresql://postgres@127.0.0.1/test

``tests/atom_async_db/test_cancellation.py`` runs the same storms and asserts on them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import random
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import Integer, event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from atom_async_db import Database

from ._stacks import plain_creator

PHASES = ("waiting", "statement", "commit", "close")
MECHANISMS = ("task.cancel", "asyncio.timeout", "anyio")
STACKS = ("plain", "ours")
APPLICATION_NAME = "atom_cancel_storm"
SLOW_SECONDS = 0.02
_SLOW = {
    "postgresql": f"select pg_sleep({SLOW_SECONDS})",
    # about 20 ms of work inside SQLite (it has no sleep)
    "sqlite": "with recursive c(x) as (select 1 union all select x + 1 from c where x < 150000) "
    "select count(*) from c",
}


class Base(DeclarativeBase):
    pass


class StormRow(Base):
    __tablename__ = "storm_rows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)


@dataclass
class StormReport:
    stack: str
    mechanism: str
    tasks: int
    landed: Counter[str] = field(default_factory=Counter)
    """The phase each cancel found its task in ("finished": it came too late)."""
    outcomes: Counter[str] = field(default_factory=Counter)
    """What the unit of work saw: cancelled, timeout, committed, or an error's name."""
    discarded: int = 0
    connects: int = 0
    log_lines: list[str] = field(default_factory=list)
    checked_out_after: int = 0
    in_transaction_after: int = 0
    unknown_outcomes: int = 0
    """Cancelled during COMMIT: the row may or may not be there (both are correct)."""
    unknown_committed: int = 0
    lost: list[str] = field(default_factory=list)
    """Rows that contradict what the tasks were told (must stay empty)."""
    followups_ok: int = 0
    """Of 100 sessions right after the storm, how many succeeded."""
    tasks_not_cancelled: int = 0
    """Tasks cancelled by ``task.cancel()`` that did not end cancelled."""
    seconds: float = 0.0


class _Stack:
    """One way of opening a unit of work's session, with its engine for the counters."""

    def __init__(self, name: str, url: str, pool_size: int) -> None:
        self.name = name
        self.url = url
        self.dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
        self.pool_size = pool_size
        self._database: Database | None = None
        self._maker: async_sessionmaker[AsyncSession] | None = None
        self._engine: Any = None

    async def open(self) -> Engine:
        if self.name == "ours":
            self._database = Database(
                self.url,
                pool_size=self.pool_size,
                max_overflow=0,
                application_name=APPLICATION_NAME,
            )
            self._engine = self._database.engine
        else:  # the setup FastAPI users write by hand
            kw: dict[str, Any] = {"pool_size": self.pool_size, "max_overflow": 0}
            url = self.url
            if self.dialect == "postgresql":
                url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
                kw["connect_args"] = {"server_settings": {"application_name": APPLICATION_NAME}}
                kw["pool_pre_ping"] = True
            else:
                url = url.replace("sqlite://", "sqlite+aiosqlite://", 1)
            self._engine = create_async_engine(url, **kw)
            self._maker = async_sessionmaker(self._engine, expire_on_commit=False)
        async with self._engine.begin() as connection:
            await connection.run_sync(Base.metadata.drop_all)
            await connection.run_sync(Base.metadata.create_all)
        # Fill the pool, so that every connection the storm opens is a reconnect.
        await asyncio.gather(*(self._touch() for _ in range(self.pool_size)))
        return self._engine.sync_engine  # type: ignore[no-any-return]

    async def _touch(self) -> None:
        async with self.session() as session:
            await session.execute(text("select 1"))
            await asyncio.sleep(0.05)

    def session(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A session that commits on a clean exit."""
        if self._database is not None:
            return self._database.get_async_db_session()
        assert self._maker is not None
        return _plain_session(self._maker)

    async def close(self) -> None:
        if self._database is not None:
            await self._database.dispose()
        else:
            await self._engine.dispose()


@asynccontextmanager
async def _plain_session(maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with maker() as session:
        yield session
        await session.commit()


class _Phases:
    """Where each task of the storm is, kept by engine and session events."""

    def __init__(self, engine: Engine, slow: str) -> None:
        self.of: dict[asyncio.Task[Any], str] = {}
        self.on_enter: dict[tuple[asyncio.Task[Any], str], Callable[[], None]] = {}
        self._engine = engine
        self._slow = slow
        self._hooks = [
            (engine, "before_cursor_execute", self._before_execute),
            (engine, "after_cursor_execute", self._after_execute),
            (Session, "before_commit", self._before_commit),
            (Session, "after_commit", self._after_commit),
        ]

    def enter(self, phase: str) -> None:
        task = asyncio.current_task()
        if task is None or task not in self.of:
            return
        self.of[task] = phase
        callback = self.on_enter.pop((task, phase), None)
        if callback is not None:
            callback()

    def _before_execute(self, _c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement == self._slow:
            self.enter("statement")

    def _after_execute(self, _c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement == self._slow:
            self.enter("between")

    def _before_commit(self, _session: Session) -> None:
        self.enter("commit")

    def _after_commit(self, _session: Session) -> None:
        self.enter("close")

    @contextmanager
    def installed(self) -> Iterator[None]:
        for target, name, fn in self._hooks:
            event.listen(target, name, fn)
        try:
            yield
        finally:
            for target, name, fn in self._hooks:
                event.remove(target, name, fn)


class _LogCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname}: {record.getMessage()[:160]}")


async def run_storm(
    url: str,
    *,
    stack: str = "ours",
    mechanism: str = "task.cancel",
    tasks: int = 1000,
    pool_size: int = 5,
    seed: int = 1,
) -> StormReport:
    """Run one storm and count what it cost; see the module docstring."""
    report = StormReport(stack, mechanism, tasks)
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    setup = _Stack(stack, url, pool_size)
    engine = await setup.open()
    pool = engine.pool
    slow = text(_SLOW[setup.dialect])
    phases = _Phases(engine, str(slow))
    told_committed: set[int] = set()
    cancelled_in: dict[int, str] = {}

    def counted(name: str) -> Callable[..., None]:
        def count(*_: Any) -> None:
            if name == "connect":
                report.connects += 1
            else:
                report.discarded += 1

        return count

    pool_hooks = [("connect", counted("connect")), ("close", counted("close"))]
    pool_hooks.append(("close_detached", counted("close")))

    async def unit(i: int, cancel_holder: list[Callable[[], None]]) -> None:
        task = asyncio.current_task()
        assert task is not None
        phases.of[task] = "waiting"
        target = rng.choice(PHASES)

        def note_landing() -> str:
            landed = "finished" if task.done() else phases.of.get(task, "finished")
            report.landed[landed] += 1
            cancelled_in[i] = landed
            return landed

        def cancel_now() -> None:
            if task.done() or phases.of.get(task) == "finished":
                note_landing()  # too late: the unit of work is over
            elif mechanism == "asyncio.timeout":
                # An expired timeout cancels its task a turn of the loop later (from the
                # callback reschedule() queues): the phase is noted just after that, before
                # the task can move on (a task that left the block meanwhile is not cancelled).
                cancel_holder[0]()
                loop.call_soon(note_landing)
            else:
                note_landing()
                cancel_holder[0]()

        if target == "waiting":
            loop.call_later(rng.uniform(0, 0.05), cancel_now)
        else:
            delay = rng.uniform(0, SLOW_SECONDS) if target == "statement" else 0.0
            phases.on_enter[(task, target)] = lambda: loop.call_later(delay, cancel_now)
        try:
            async with setup.session() as session:
                session.add(StormRow(id=i))
                await session.execute(slow)
            told_committed.add(i)
            report.outcomes["committed"] += 1
        except asyncio.CancelledError:
            report.outcomes["cancelled"] += 1
            raise
        except TimeoutError:
            report.outcomes["timeout"] += 1
            raise
        except Exception as error:
            report.outcomes[type(error).__name__] += 1
            raise
        finally:
            phases.of[task] = "finished"

    async def by_task_cancel(i: int) -> None:
        task = asyncio.current_task()
        assert task is not None
        await unit(i, [task.cancel])

    async def by_timeout(i: int) -> None:
        async with asyncio.timeout(None) as timeout:
            await unit(i, [lambda: timeout.reschedule(loop.time())])

    async def by_task_group(i: int) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(unit, i, [group.cancel_scope.cancel])

    runner = {"task.cancel": by_task_cancel, "asyncio.timeout": by_timeout}.get(
        mechanism, by_task_group
    )
    gc.collect()  # what earlier storms left behind must not be counted against this one
    log_counter = _LogCounter()
    root = logging.getLogger()
    root.addHandler(log_counter)
    for name, fn in pool_hooks:
        event.listen(pool, name, fn)
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught, phases.installed():
            warnings.simplefilter("always")
            running = [loop.create_task(runner(i)) for i in range(tasks)]
            await asyncio.gather(*running, return_exceptions=True)
            report.seconds = time.perf_counter() - started
            if mechanism == "task.cancel":
                report.tasks_not_cancelled = sum(
                    1
                    for i, t in enumerate(running)
                    if i in cancelled_in and not t.cancelled() and cancelled_in[i] != "finished"
                )
            del running
            gc.collect()
            await asyncio.sleep(0.1)  # lets asyncio report futures that were never retrieved
            gc.collect()
        report.log_lines = log_counter.lines + [
            f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught
        ]
        report.checked_out_after = pool.checkedout()
        report.in_transaction_after = await _our_backends_in_transaction(setup)
        async with setup.session() as session:
            present = set((await session.scalars(select(StormRow.id))).all())
        report.followups_ok = sum(await asyncio.gather(*(_followup(setup) for _ in range(100))))
        for i in range(tasks):
            landed = cancelled_in.get(i)
            if i in told_committed and i not in present:
                report.lost.append(f"task {i} was told its commit succeeded; its row is missing")
            elif landed in ("waiting", "statement", "between") and i in present:
                report.lost.append(f"task {i} was cancelled before COMMIT; its row is there")
            elif landed == "commit" and i not in told_committed:
                report.unknown_outcomes += 1
                report.unknown_committed += i in present
    finally:
        for name, fn in pool_hooks:
            event.remove(pool, name, fn)
        root.removeHandler(log_counter)
        await setup.close()
    return report


async def _followup(setup: _Stack) -> bool:
    try:
        async with asyncio.timeout(30), setup.session() as session:
            return bool(await session.scalar(text("select 1")) == 1)
    except Exception:
        return False


async def _our_backends_in_transaction(setup: _Stack) -> int:
    if setup.dialect != "postgresql":
        return 0
    engine = create_async_engine(setup.url.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with engine.connect() as connection:
            count = await connection.scalar(
                text(
                    "select count(*) from pg_stat_activity where application_name = :name "
                    "and state like 'idle in transaction%'"
                ),
                {"name": APPLICATION_NAME},
            )
    finally:
        await engine.dispose()
    return int(count or 0)


async def statement_cost(url: str, *, guarded: bool, statements: int = 2000) -> float:
    """Client CPU microseconds per point read through ``get_async_db_session()``, with the
    cancellation guard on or (``guarded=False``) with the driver connected directly."""
    options: dict[str, Any] = {}
    if not guarded:  # an async_creator of one's own turns the guard off (see _engine)
        options["engine_options"] = {"async_creator": plain_creator(url)}
    database = Database(url, pool_size=1, max_overflow=0, pool_pre_ping=False, **options)
    try:
        query = text("select 1")
        for _ in range(100):  # warm up caches and the connection
            async with database.get_async_db_session() as session:
                await session.execute(query)
        started = time.process_time()
        for _ in range(statements):
            async with database.get_async_db_session() as session:
                await session.execute(query)
        return (time.process_time() - started) / statements * 1e6
    finally:
        await database.dispose()


def _row(report: StormReport) -> str:
    landed = " ".join(f"{p}={report.landed[p]}" for p in (*PHASES, "between", "finished"))
    outcomes = " ".join(f"{k}={v}" for k, v in sorted(report.outcomes.items()))
    return (
        f"| {report.stack} | {report.mechanism} | {landed} | {outcomes} | {report.discarded} | "
        f"{report.connects} | {len(report.log_lines)} | {report.checked_out_after} | "
        f"{report.in_transaction_after} | {report.unknown_outcomes} "
        f"({report.unknown_committed} committed) | {len(report.lost)} | {report.followups_ok} | "
        f"{report.seconds:.1f} |"
    )


async def _main(url: str, tasks: int, seed: int, mechanisms: list[str]) -> None:
    if tasks:
        await _storms(url, tasks, seed, mechanisms)
    guarded: list[float] = []
    unguarded: list[float] = []
    for _ in range(3):  # interleaved: the machine's noise hits both alike
        guarded.append(await statement_cost(url, guarded=True))
        unguarded.append(await statement_cost(url, guarded=False))
    ratios = sorted(g / u for g, u in zip(guarded, unguarded, strict=True))
    print(
        f"\nclient CPU per point read through get_async_db_session(), 3 interleaved rounds: "
        f"{min(guarded):.0f}-{max(guarded):.0f} µs with the cancellation guard, "
        f"{min(unguarded):.0f}-{max(unguarded):.0f} µs without "
        f"(ratio {ratios[0]:.2f}-{ratios[-1]:.2f})"
    )


async def _storms(url: str, tasks: int, seed: int, mechanisms: list[str]) -> None:
    print(f"# cancellation storm: {tasks} tasks, pool 5 (no overflow), seed {seed}, {url}\n")
    print(
        "| stack | cancelled by | where the cancels landed | what the tasks saw | "
        "connections discarded | opened | warning/error lines | checked out after | "
        "idle in transaction after | COMMIT outcome unknown | lost | next 100 ok | seconds |"
    )
    print("|---" * 13 + "|")
    examples: dict[str, list[str]] = {}
    for mechanism in mechanisms:
        for stack in STACKS:
            storm_url = url
            if url.startswith("sqlite"):  # a file of its own: one storm's locks never hit another
                storm_url = url.replace(".db", f"-{stack}-{mechanism}.db")
            report = await run_storm(
                storm_url, stack=stack, mechanism=mechanism, tasks=tasks, seed=seed
            )
            print(_row(report), flush=True)
            examples.setdefault(stack, []).extend(report.log_lines[:3])
    for stack, lines in examples.items():
        if lines:
            print(f"\nfirst warning/error lines of {stack}:")
            for line in lines[:6]:
                print(f"    {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--tasks", type=int, default=1000, help="0: only the cost per read")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mechanisms", nargs="+", choices=MECHANISMS, default=list(MECHANISMS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'storm.db'}"
        asyncio.run(_main(url, args.tasks, args.seed, args.mechanisms))


if __name__ == "__main__":
    main()
