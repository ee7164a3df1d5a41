"""The seed's deprecated ``core.database_manager`` module: each function still works and
emits a ``DeprecationWarning`` naming its replacement (removal in 2.0, as announced).

Type checkers see the deprecation too (PEP 702; mypy with ``--enable-error-code
deprecated``, pyright by default). Replace::

    from core.database_manager import get_db_session              # -> get_db_session
    from core.database_manager import get_db_session_for_request  # -> get_db
    from core.database_manager import get_monitored_db_session    # -> get_db_session
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session
from typing_extensions import deprecated

from . import _scopes
from ._session import caller_stacklevel

__all__ = ["get_db_session", "get_db_session_for_request", "get_monitored_db_session"]

# The messages are literals: type checkers read @deprecated's argument only as written.


@deprecated(
    "database_manager.get_db_session() is deprecated and will be removed in 2.0; "
    "use get_db_session() (from core.database, or sync_compat) instead"
)
def get_db_session() -> AbstractContextManager[Session]:
    """Deprecated: use ``get_db_session()`` from ``core.database`` / ``sync_compat``.

    Raises:
        What :func:`sync_compat.get_db_session` raises.
    """
    return _scopes.get_db_session()


@deprecated(
    "database_manager.get_monitored_db_session() is deprecated and will be removed in 2.0; "
    "use get_db_session() (from core.database, or sync_compat) instead"
)
def get_monitored_db_session() -> AbstractContextManager[Session]:
    """Deprecated: use ``get_db_session()``, and watch every session through the pool
    statistics (``Database.pool_stats()``, the metrics) and the thresholds
    (``slow_statement_threshold``, ``idle_in_transaction_threshold``, ``leak_threshold``).

    Until then it is a monitored ``get_db_session()``: its statements' durations go into
    the pool's ``statement_time`` statistics, each is logged at DEBUG and one INFO line
    at the end gives their number and time and how long the session was open.

    Raises:
        What :func:`sync_compat.get_db_session` raises.
    """
    return _scopes.monitored_db_session()


_FOR_REQUEST = (
    "database_manager.get_db_session_for_request() is deprecated and will be removed in 2.0; "
    "use get_db (from core.database, or sync_compat) instead"
)

if TYPE_CHECKING:

    @deprecated(
        "database_manager.get_db_session_for_request() is deprecated and will be removed in "
        "2.0; use get_db (from core.database, or sync_compat) instead"
    )
    def get_db_session_for_request() -> Iterator[Session]:
        """Deprecated: use ``get_db``."""

else:

    def get_db_session_for_request() -> Iterator[Session]:
        """Deprecated: use ``get_db`` (a FastAPI dependency, like this one).

        A generator function itself rather than a wrapper, so that FastAPI of any version
        sees a dependency with teardown; it warns when it starts (FastAPI entering it, or
        ``next()``), pointing at the line that started it.

        Raises:
            What :func:`sync_compat.get_db` raises.
        """
        warnings.warn(_FOR_REQUEST, DeprecationWarning, stacklevel=caller_stacklevel())
        yield from _scopes.get_db()

    get_db_session_for_request.__deprecated__ = _FOR_REQUEST
