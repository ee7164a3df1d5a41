"""The seed's two patterns, ``get_db`` and ``get_db_session()``, and ``run_legacy``.

Both patterns are the core's session scopes: inside ``run_legacy`` the async scope itself
(driven through the greenlet bridge, so it joins the calling task's session by the core's
nesting rule), elsewhere the same rule and lifecycle on the sync engine
(:class:`sync_compat._sync_scope.SyncSessionScope`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import ParamSpec, TypeVar

from sqlalchemy.orm import Session
from sqlalchemy.util.concurrency import await_, greenlet_spawn, in_greenlet
from typing_extensions import Unpack

from atom_async_db import Database, get_database
from atom_async_db._compat import (
    NO_OPTIONS,
    SessionOptionArgs,
    SessionOptions,
    SessionScope,
    deliver_rearmed_cancellation,
    monitoring,
)

from ._session import SessionLocal
from ._sync_scope import SyncSessionScope

__all__ = ["get_db", "get_db_for", "get_db_session", "run_legacy"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


def get_db_session(
    *,
    independent: bool = False,
    commit: bool = True,
    database: Database | None = None,
    **options: Unpack[SessionOptionArgs],
) -> AbstractContextManager[Session]:
    """Open a session for services, background jobs and scripts: ``with`` it.

    The seed's semantics: commits when the block exits cleanly, rolls back when it raises
    (the exception propagates), always closes the session; an explicit ``db.commit()``
    inside is allowed; objects stay readable after the block (``expire_on_commit=False``)::

        from sync_compat import get_db_session

        def create_user(email: str) -> User:
            with get_db_session() as db:
                user = User(email=email)
                db.add(user)
                return user  # committed on exit, still readable

    Nested inside another ``get_db_session()`` of the same thread (or, under
    :func:`run_legacy`, inside the calling task's async session) it joins the outer
    transaction through a SAVEPOINT, exactly as the async core does: its commit becomes
    durable when the outermost block commits, and is undone if that block fails.
    ``independent=True`` takes a connection of its own and commits on its own instead (an
    audit record that must survive the caller's failure).

    As on the async side: ``commit=False`` leaves committing to the caller (``get_db``'s
    semantics, for scripts and fixtures that commit themselves); ``database`` names another
    database than the default; the options (``isolation_level``, ``read_only``,
    ``statement_timeout``, ``lock_timeout``) are those of
    :func:`atom_async_db.get_async_db_session`.

    Raises:
        SyncSessionOnEventLoopError: a statement ran on the event loop's thread and the
            ``sync_on_event_loop`` setting is ``"error"`` (use :func:`run_legacy`).
        SessionNestingError: the block would join an outer transaction that lacks its
            options, or is ``independent=True`` on SQLite while the outer block has written.
        What :func:`atom_async_db.get_async_db_session` raises besides (``ConfigurationError``,
        ``DatabaseDisposedError``, ``PoolTimeoutError``, ``DatabaseUnavailableError``,
        ``CommitOutcomeUnknownError``), for the same reasons.
    """
    database = database or get_database()
    checked = SessionOptions.of(database.settings.dialect, options)
    return _scope(database, commit=commit, independent=independent, options=checked)


def get_db() -> Iterator[Session]:
    """FastAPI dependency yielding a request-scoped sync ``Session``, as in the seed.

    It never commits on its own (the route calls ``db.commit()``), rolls back what is left
    uncommitted and always closes the session. It serves sync ``def`` routes (FastAPI runs
    them in its threadpool) and the seed's ``async def`` routes, which keep working but
    block the event loop at each statement (:class:`SyncSessionOnEventLoopWarning`)::

        from fastapi import Depends
        from sqlalchemy.orm import Session
        from sync_compat import get_db

        @app.get("/users/{user_id}")
        def get_user(user_id: int, db: Session = Depends(get_db)):
            return db.get(User, user_id)

    In sync tests, the pytest plugin's ``db_session`` fixture makes it join the test's
    rolled-back transaction; ``app.dependency_overrides[get_db]`` works too.

    Raises:
        SyncSessionOnEventLoopError: a statement ran on the event loop's thread (an ``async
            def`` route) and the ``sync_on_event_loop`` setting is ``"error"``.
        DatabaseDisposedError: the database's shutdown (``dispose()``) has begun.
        PoolTimeoutError: no connection became free within ``pool_timeout`` seconds.
        DatabaseUnavailableError: a new connection could not be opened (the server is down or
            unreachable).
    """
    with _scope(get_database(), commit=False) as session:
        yield session


def get_db_for(database: Database) -> Callable[[], Iterator[Session]]:
    """:func:`get_db` for another database than the default (a reporting database).

    Declare it once, next to the database::

        ReportingDB = Annotated[Session, Depends(get_db_for(reporting))]

    Raises:
        What :func:`get_db` raises, on ``database``.
    """

    def get_db() -> Iterator[Session]:
        with _scope(database, commit=False) as session:
            yield session

    return get_db


async def run_legacy(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run legacy sync code from async code without blocking the event loop.

    ``fn(*args, **kwargs)`` runs on the loop's thread inside a greenlet; every
    ``get_db_session()``, ``get_db`` session and ``SessionLocal()`` it opens uses the
    running loop's async engine and pool, and each of their database waits lets the loop
    serve other tasks. A ``get_db_session()`` inside it joins the calling task's open
    session (``get_async_db`` or ``get_async_db_session()``) through a SAVEPOINT, so it
    never waits for a second connection while holding one::

        from sync_compat import run_legacy

        @app.post("/users/{user_id}/process")
        async def process(user_id: int) -> None:
            await run_legacy(legacy_service.process_user, user_id)

    Non-database blocking calls inside ``fn`` (``time.sleep``, ``requests``) still block
    the loop; run those with ``anyio.to_thread.run_sync``.

    Raises:
        TypeError: ``fn`` is a coroutine function, or returned an awaitable.
        Whatever ``fn`` raises, unchanged.
    """
    if inspect.iscoroutinefunction(fn):
        raise TypeError(
            f"run_legacy() runs sync code, and {fn!r} is a coroutine function: await it directly"
        )
    try:
        result = await greenlet_spawn(functools.partial(fn, *args, **kwargs))
    except BaseException as error:
        await deliver_rearmed_cancellation(error)
        raise
    await deliver_rearmed_cancellation()
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never awaited: close it so Python does not warn on top
        raise TypeError(
            f"run_legacy() runs sync code, and {fn!r} returned an awaitable: await it directly"
        )
    return result


@contextmanager
def monitored_db_session() -> Iterator[Session]:
    """:func:`get_db_session` whose statements are timed into the pool's statistics
    (``statement_time`` of ``pool_stats()``), each logged at DEBUG and summed up at INFO
    when the block ends (see ``atom_async_db._watch``).
    """
    database = get_database()
    engine = database.engine.sync_engine if in_greenlet() else database.sync_engine
    with monitoring(engine), _scope(database, commit=True) as session:
        yield session


def _scope(
    database: Database,
    *,
    commit: bool,
    independent: bool = False,
    options: SessionOptions = NO_OPTIONS,
) -> AbstractContextManager[Session]:
    if in_greenlet():
        scope = SessionScope(
            database._scopes,
            commit=commit,
            independent=independent,
            options=options,
            make_session=SessionLocal._bridged_maker(database),
        )
        return _bridged(scope)
    make_session = functools.partial(SessionLocal, database=database)
    return SyncSessionScope(
        database._scopes, make_session, commit=commit, independent=independent, options=options
    )


@contextmanager
def _bridged(scope: SessionScope) -> Iterator[Session]:
    """The async scope, driven from sync code running in a SQLAlchemy greenlet."""
    session = await_(scope.__aenter__())
    try:
        yield session.sync_session
    except BaseException as error:
        await_(scope.__aexit__(type(error), error, error.__traceback__))
        raise
    await_(scope.__aexit__(None, None, None))
