"""FastAPI integration: a lifespan that disposes the default database, and ``AsyncDB``.

Importing this module imports FastAPI; the rest of atom_async_db never does::

    from fastapi import FastAPI
    from atom_async_db.fastapi import AsyncDB, lifespan

    app = FastAPI(lifespan=lifespan)

    @app.get("/users/{user_id}")
    async def get_user(user_id: int, db: AsyncDB):
        return await db.get(User, user_id)

    @app.post("/users", status_code=201)
    async def create_user(data: UserIn, db: AsyncTransaction):
        db.add(User(**data.model_dump()))  # committed before the 201 is sent
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession

from ._default import (
    dispose,
    get_async_db,
    get_async_db_replica,
    get_async_db_transaction,
    restart_if_disposed,
)

__all__ = ["AsyncDB", "AsyncReplicaDB", "AsyncTransaction", "lifespan"]

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


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Lifespan that shuts the default database down with the app: its sessions are
    drained, then its connections closed (:func:`atom_async_db.dispose`).

    An app started again in the same process (tests that enter ``TestClient(app)`` more
    than once) opens the default database again, in place. Pass it as
    ``FastAPI(lifespan=lifespan)``, or call ``await atom_async_db.dispose()`` at the end
    of your own lifespan.

    Raises:
        Nothing of its own: the application's own startup and shutdown errors propagate.
    """
    restart_if_disposed()
    try:
        yield
    finally:
        await dispose()
