"""The session factory: an ``async_sessionmaker`` that can be made at import time, before
any event loop runs, and finds the running loop's engine each time it is called.

Applications written against SQLAlchemy make ``AsyncSessionLocal =
async_sessionmaker(engine)`` at import time; here engines belong to an event loop, so the
factory takes the database instead and binds each session when it is made.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ._database import Database
from ._default import get_database
from ._nesting import Place, place
from ._options import NO_OPTIONS
from ._session import SessionScope, refuse_a_second_sqlite_connection
from ._tracked import TEST_ROOT_SESSION, merge_session_keywords, with_keywords
from .exceptions import ConfigurationError

__all__ = ["AsyncSessionFactory"]


class AsyncSessionFactory:
    """A replacement for ``async_sessionmaker(engine)`` that is safe to create at import.

    ``database`` is the database its sessions use (default: the default database, looked
    up at each call); the keywords are ``AsyncSession``'s, as for ``async_sessionmaker``
    (``expire_on_commit`` defaults to False here, as everywhere in the library)::

        AsyncSessionLocal = AsyncSessionFactory()          # at import time

        async with AsyncSessionLocal() as session:         # the caller commits
            session.add(User(email="ada@example.com"))
            await session.commit()

        async with AsyncSessionLocal.begin() as session:   # commits on a clean exit
            session.add(User(email="grace@example.com"))

    ``AsyncSessionLocal()`` returns a session the caller commits and closes, exactly as
    SQLAlchemy's does: it has the library's session classes and its connections the
    cancellation guard, but it is no session *block*: it joins no outer session, and a
    shutdown does not wait for it (close it before ``dispose()``). Inside a test's
    rolled-back transaction (the pytest plugin's ``async_db_session``) it joins that
    transaction, as every session does.

    ``AsyncSessionLocal.begin()`` is :func:`~atom_async_db.get_async_db_session` with this
    factory's keywords: it joins the task's open session by the nesting rule, commits on
    a clean exit and rolls back on an error.

    Raises:
        TypeError: ``database`` is not a :class:`~atom_async_db.Database` (an engine).
        ConfigurationError: ``class_`` is given (the class is the database's
            ``async_session_class`` setting).
    """

    def __init__(self, database: Database | None = None, **kw: Any) -> None:
        if database is not None and not isinstance(database, Database):
            raise TypeError(
                "AsyncSessionFactory() takes a Database (None: the default one), not "
                f"{type(database).__name__}: engines belong to an event loop here, so the "
                "factory finds the running loop's engine of its database at each call"
            )
        _refuse_class(kw)
        self.database = database
        self.kw: dict[str, Any] = kw

    def configure(self, **new_kw: Any) -> None:
        """Change the keywords of the sessions made from now on, as
        ``async_sessionmaker.configure``.

        Raises:
            ConfigurationError: ``class_`` is given (the class is the database's
                ``async_session_class`` setting).
        """
        _refuse_class(new_kw)
        self.kw.update(new_kw)

    def __call__(self, **local_kw: Any) -> AsyncSession:
        """A new ``AsyncSession`` on the running loop's engine; the caller commits and
        closes it (``async with`` closes it).

        Raises:
            NoEventLoopError: no event loop is running in this thread.
            DatabaseDisposedError: the database's shutdown (``dispose()``) has begun.
            TestIsolationError: a sync test's rolled-back transaction is open (the
                ``db_session`` fixture), which async code cannot join.
            TypeError: a keyword is not one of ``AsyncSession``'s.
            SessionNestingError: on SQLite, the task holds an open session of this
                database: a second connection would wait for the one it holds.
        """
        scopes = self._database()._scopes
        keywords = merge_session_keywords(self.kw, local_kw)
        pinned = scopes.test_transaction
        if pinned is not None:
            where = place(
                "async",
                scopes.settings.dialect,
                outer=None,
                test_transaction=pinned.connection is not None,
                independent=False,
                options=NO_OPTIONS,
            )
            assert where is Place.TEST_ROOT
            keywords = merge_session_keywords(
                keywords, {"bind": pinned.connection, **TEST_ROOT_SESSION}
            )
            return scopes.make_session(**keywords)
        if scopes.disposed:
            raise scopes.disposed_error()
        refuse_a_second_sqlite_connection(scopes, "AsyncSessionFactory()")
        keywords.setdefault("bind", scopes.engine())
        return scopes.make_session(**keywords)

    def begin(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A session block that commits on a clean exit, rolls back on an error and
        closes: :func:`~atom_async_db.get_async_db_session` with this factory's keywords.

        Raises:
            What :func:`~atom_async_db.get_async_db_session` raises.
        """
        scopes = self._database()._scopes
        make_session = with_keywords(scopes.make_session, self.kw) if self.kw else None
        return SessionScope(scopes, commit=True, make_session=make_session)

    def _database(self) -> Database:
        return self.database if self.database is not None else get_database()

    def __repr__(self) -> str:
        database = "the default database" if self.database is None else repr(self.database)
        return f"AsyncSessionFactory({database}, {self.kw!r})"


def _refuse_class(kw: dict[str, Any]) -> None:
    if "class_" in kw:
        raise ConfigurationError(
            "AsyncSessionFactory takes no class_: every session of a database has its "
            "async_session_class setting, composed with the library's; set it with "
            "configure(async_session_class=...) or Database(..., async_session_class=...)"
        )
