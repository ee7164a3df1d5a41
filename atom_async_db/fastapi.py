"""FastAPI integration: a lifespan that disposes the default database (and can check it
at start-up), ``AsyncDB`` and health probes (:func:`health_router`).

Importing this module imports FastAPI; the rest of atom_async_db never does::

    from fastapi import FastAPI
    from atom_async_db.fastapi import AsyncDB, health_router, lifespan

    app = FastAPI(lifespan=lifespan)  # or lifespan(check=True): fail fast without a database
    app.include_router(health_router())  # GET /livez and /readyz

    @app.get("/users/{user_id}")
    async def get_user(user_id: int, db: AsyncDB):
        return await db.get(User, user_id)

    @app.post("/users", status_code=201)
    async def create_user(data: UserIn, db: AsyncTransaction):
        db.add(User(**data.model_dump()))  # committed before the 201 is sent
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any, overload

from sqlalchemy.ext.asyncio import AsyncSession

try:
    from fastapi import APIRouter, Depends
    from fastapi.responses import JSONResponse
except ImportError as error:  # pragma: no cover (the tests run with it installed)
    raise ImportError(
        "atom_async_db.fastapi needs FastAPI: pip install 'atom_async_db[fastapi]'"
    ) from error

from ._database import Database
from ._default import (
    dispose,
    get_async_db,
    get_async_db_replica,
    get_async_db_transaction,
    get_database,
    restart_if_disposed,
)
from .exceptions import DatabaseDisposedError, DatabaseUnavailableError

__all__ = ["AsyncDB", "AsyncReplicaDB", "AsyncTransaction", "health_router", "lifespan"]

AsyncDB = Annotated[AsyncSession, Depends(get_async_db, scope="function")]
"""A route parameter annotated ``db: AsyncDB`` receives the request's session (the route
commits, as with the seed's ``get_db``). It ends when the route returns, before the
response is sent, so background tasks and streaming bodies, which run later in the same
task, open sessions of their own instead of joining one that is about to be rolled back.
(``Depends(get_async_db)`` without ``scope="function"`` keeps it open until after the
response: a ``get_async_db_session()`` in a background task would then join it, and its
work would be rolled back with it.)"""

AsyncReplicaDB = Annotated[AsyncSession, Depends(get_async_db_replica, scope="function")]
"""A route parameter annotated ``db: AsyncReplicaDB`` receives a session for read-only
work, on a read replica when one is usable (``replica_urls``; see
:func:`atom_async_db.get_async_db_replica`), ended when the route returns."""

AsyncTransaction = Annotated[AsyncSession, Depends(get_async_db_transaction, scope="function")]
"""A route parameter annotated ``db: AsyncTransaction`` receives a session whose
transaction commits when the route returns, before the response is sent, and rolls back
when it raises (see :func:`atom_async_db.get_async_db_transaction`)."""


# What ``FastAPI(lifespan=...)`` takes: called with the app, it returns an async context.
_AppLifespan = Callable[[Any], AbstractAsyncContextManager[None]]
_NO_APP: Any = object()  # lifespan() called with options only


@overload
def lifespan(
    app: Any, /, *, check: bool = False, check_timeout: float | None = None
) -> AbstractAsyncContextManager[None]: ...


@overload
def lifespan(*, check: bool = False, check_timeout: float | None = None) -> _AppLifespan: ...


def lifespan(
    app: Any = _NO_APP, /, *, check: bool = False, check_timeout: float | None = None
) -> AbstractAsyncContextManager[None] | _AppLifespan:
    """Lifespan that shuts the default database down with the app: its sessions are
    drained, then its connections closed (:func:`atom_async_db.dispose`).

    Pass it as ``FastAPI(lifespan=lifespan)``, or call ``await atom_async_db.dispose()`` at
    the end of your own lifespan. An app started again in the same process (tests that
    enter ``TestClient(app)`` more than once) opens the default database again, in place.

    Called with options instead of an app, it returns the lifespan to pass. With
    ``check=True`` the app pings the default database as it starts
    (:meth:`Database.ping <atom_async_db.Database.ping>`, within ``check_timeout``
    seconds, by default the ``pool_timeout`` setting) and refuses to start when it gets
    no answer: uvicorn logs the error and exits with a non-zero status, instead of
    serving requests that would all fail::

        app = FastAPI(lifespan=lifespan(check=True))
        app = FastAPI(lifespan=lifespan(check=True, check_timeout=5))

    Without ``check`` (and as ``lifespan`` itself) it never connects at start-up.

    Raises:
        DatabaseUnavailableError: (``check=True``, at start-up) the default database did not
            answer; the message names it (password masked) and says what to check.
        ConfigurationError: (``check=True``, at start-up) ``DATABASE_URL`` or an
            ``ATOM_DB_*`` variable is invalid.
        DriverNotInstalledError: (``check=True``, at start-up) the URL's driver is not
            installed.
        The application's own startup and shutdown errors propagate.
    """
    if app is _NO_APP:

        def configured(app: Any) -> AbstractAsyncContextManager[None]:
            return _lifespan(check=check, check_timeout=check_timeout)

        return configured
    return _lifespan(check=check, check_timeout=check_timeout)


@asynccontextmanager
async def _lifespan(*, check: bool, check_timeout: float | None) -> AsyncIterator[None]:
    restart_if_disposed()
    try:
        if check:
            await _check_default_database(check_timeout)
        yield
    finally:
        await dispose()


async def _check_default_database(timeout: float | None) -> None:  # noqa: ASYNC109
    """Ping the default database at start-up.

    Raises:
        DatabaseUnavailableError: it did not answer within ``timeout`` seconds (default:
            its ``pool_timeout``), or the connection failed.
    """
    database = get_database()
    if timeout is None:
        timeout = database.settings.pool_timeout
    try:
        await database.ping(timeout=timeout)
    except DatabaseUnavailableError as error:
        raise DatabaseUnavailableError(
            f"the application cannot start: its database {database.url} is unavailable: "
            f"{str(error).rstrip('.')}. Start the database server or make it reachable "
            f"from here, or point DATABASE_URL (or atom_async_db.configure()) at the right "
            f"one; the start-up check waits up to {timeout:g} s for an answer "
            f"(lifespan(check=True, check_timeout=...), else pool_timeout)."
        ) from error


_NO_STORE = {"Cache-Control": "no-store"}


def health_router(
    database: Database | None = None,
    *,
    timeout: float = 2.0,
    prefix: str = "",
    max_waiting: int = 0,
) -> APIRouter:
    """Health probes for orchestrators and load balancers: a router to include.

    Include it in the application::

        from atom_async_db.fastapi import health_router, lifespan

        app = FastAPI(lifespan=lifespan(check=True))
        app.include_router(health_router())

    - ``GET /livez``: 200 ``{"status": "ok"}`` whenever the process answers; it never
      touches the database (a database outage must not get healthy pods restarted).
    - ``GET /readyz``: 200 ``{"status": "ok", "database": "ok", "round_trip_ms": 1.2}``
      when the database answers a ping (:meth:`Database.ping
      <atom_async_db.Database.ping>`) within ``timeout`` seconds and the pool is not
      saturated; else 503, with a body that names the failed check:

      - ``{"status": "unavailable", "pool": "saturated", "name": "db:5432/app",
        "waiting": 37, "in_use": 10, "max": 10}``: more than ``max_waiting`` callers wait
        for a connection of one pool (checked first, without a ping, which would only
        queue behind them); the figures are that pool's (an event loop's, or the legacy
        layer's sync pool, whose name ends with `` (sync)``). ``max`` is ``pool_size +
        max_overflow`` (``null`` without a limit).
      - ``{"status": "unavailable", "database": "unreachable", "detail": "..."}``: the
        ping failed or timed out; ``detail`` is its message (password masked).
      - ``{"status": "unavailable", "database": "disposed", "detail": "..."}``: the
        database is shutting down (:func:`atom_async_db.dispose`).

    Responses carry ``Cache-Control: no-store``, and the routes are left out of the
    OpenAPI schema. ``database`` None means the default database, looked up at each
    request (so a later :func:`atom_async_db.configure` is honoured); ``prefix`` (such as
    ``"/health"``) goes before both paths.

    A Kubernetes pod's probes. Keep ``timeoutSeconds`` above ``timeout`` plus
    ``cancel_grace`` (0.5 s by default: a connection attempt cut short by the timeout gets
    that long to settle), or a slow answer counts as a failure of the wrong kind::

        livenessProbe:
          httpGet: {path: /livez, port: 8000}
          periodSeconds: 10
          timeoutSeconds: 3
        readinessProbe:
          httpGet: {path: /readyz, port: 8000}
          periodSeconds: 5
          timeoutSeconds: 3
          failureThreshold: 2

    Raises:
        Nothing when it builds the router: ``/readyz`` answers 503 rather than raising
            when the database is unavailable or disposed. At a request:
        ConfigurationError: (``database`` None) ``DATABASE_URL`` or an ``ATOM_DB_*``
            variable is invalid (a 500, as for any route).
        DriverNotInstalledError: (``database`` None) the URL's driver is not installed.
    """
    router = APIRouter(prefix=prefix, include_in_schema=False)

    @router.get("/livez")
    async def livez() -> JSONResponse:
        return JSONResponse({"status": "ok"}, headers=_NO_STORE)

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        db = get_database() if database is None else database
        busy = [pool for pool in db.pool_stats().pools if pool.waiting > max_waiting]
        if busy:
            pool = max(busy, key=lambda pool: pool.waiting)
            limit = None if pool.max_overflow < 0 else pool.pool_size + pool.max_overflow
            return _unavailable(
                pool="saturated",
                name=pool.name,
                waiting=pool.waiting,
                in_use=pool.in_use,
                max=limit,
            )
        try:
            seconds = await db.ping(timeout=timeout)
        except DatabaseUnavailableError as error:
            return _unavailable(database="unreachable", detail=_masked(str(error), db))
        except DatabaseDisposedError as error:
            return _unavailable(database="disposed", detail=_masked(str(error), db))
        return JSONResponse(
            {"status": "ok", "database": "ok", "round_trip_ms": round(seconds * 1000, 3)},
            headers=_NO_STORE,
        )

    return router


def _unavailable(**body: Any) -> JSONResponse:
    return JSONResponse({"status": "unavailable", **body}, status_code=503, headers=_NO_STORE)


def _masked(message: str, database: Database) -> str:
    """``message`` with the database's password replaced, should a driver have quoted it
    (the library's own messages show URLs masked already).
    """
    password = database.settings.url.password
    return message.replace(password, "***") if password else message
