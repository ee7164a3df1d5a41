"""The seed's deprecated ``core.database_manager`` module: each function still works and
emits a ``DeprecationWarning`` naming its replacement (removal in 2.0, as announced).

Type checkers see the deprecation too (PEP 702). Replace::

    from core.database_manager import get_db_session              # -> get_db_session
    from core.database_manager import get_db_session_for_request  # -> get_db
    from core.database_manager import get_monitored_db_session    # -> get_db_session
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager

from sqlalchemy.orm import Session
from typing_extensions import deprecated

from ._scopes import get_db
from ._scopes import get_db_session as _get_db_session
from ._session import caller_stacklevel

__all__ = ["get_db_session", "get_db_session_for_request", "get_monitored_db_session"]


def _message(name: str, replacement: str) -> str:
    return (
        f"database_manager.{name}() is deprecated and will be removed in 2.0; "
        f"use {replacement} (from core.database, or sync_compat) instead"
    )


@deprecated(_message("get_db_session", "get_db_session()"))
def get_db_session() -> AbstractContextManager[Session]:
    """Deprecated: use ``get_db_session()`` from ``core.database`` / ``sync_compat``."""
    return _get_db_session()


@deprecated(_message("get_monitored_db_session", "get_db_session()"))
def get_monitored_db_session() -> AbstractContextManager[Session]:
    """Deprecated: use ``get_db_session()``; pool and statement monitoring belong to
    SQLAlchemy's event hooks on the engine, not to the session function."""
    return _get_db_session()


def get_db_session_for_request() -> Iterator[Session]:
    """Deprecated: use ``get_db`` (a FastAPI dependency, like this one).

    A generator function itself, so FastAPI of every version recognises it as a
    dependency with teardown; it warns when it starts (``next()``, or FastAPI entering it).
    """
    warnings.warn(
        _message("get_db_session_for_request", "get_db"),
        DeprecationWarning,
        stacklevel=caller_stacklevel(),
    )
    yield from get_db()


# PEP 702 marker for type checkers without wrapping the generator function.
get_db_session_for_request.__deprecated__ = _message(  # type: ignore[attr-defined]
    "get_db_session_for_request", "get_db"
)
