"""The pre-ping: a pooled connection is tested before it is handed out, at no extra round
trip when a session takes it.

SQLAlchemy's own ``pool_pre_ping`` on asyncpg sends BEGIN, a query and ROLLBACK on every
checkout: three round trips before each session's own BEGIN, statement and COMMIT. Here
the async engine's checkout does one of two things:

- **For a session's own connection** (the sessions of ``get_async_db_session()``,
  ``get_async_db``, and ``get_db_session()`` under ``run_legacy``, without session
  options): it sends the transaction's BEGIN, which the session's first statement would
  send anyway. (So the transaction begins when the session takes its connection: at its
  first statement, or at ``session.connection()``.) A connection that is dead fails there,
  before any statement of the session was sent, and SQLAlchemy's checkout retry replaces
  it: the ping costs nothing. Setting the isolation level, read-only or deferrable on the
  connection afterwards rolls this transaction back first (nothing ran in it), so the
  real one begins with those settings.
- **Otherwise** (``engine.connect()`` anywhere, sessions with options, an AUTOCOMMIT
  connection): one simple-protocol ``SELECT 1`` (one round trip, no prepared statement,
  so PgBouncer-safe), as before, and SQLAlchemy's usual BEGIN at the first statement.

Either way the call runs through the cancellation guard, so a cancellation that arrives
meanwhile lets it finish and lands on the session's first statement instead, and a
failure refreshes the connections pooled before it too (the server likely dropped them
all). Fresh connections are not tested. The sync engine keeps SQLAlchemy's own ping.

Behind a server pooler (``first_trip_limit``, see ``_pooler``) fresh connections take the
same step, and it may take ``first_trip_limit`` seconds: the pooler queues a client's
first statement until one of its server connections is free, with no limit of ours
otherwise. Past it, the connection is dropped (which takes the client out of the
pooler's queue) and the caller gets :class:`~atom_async_db.PoolTimeoutError`.
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.util import await_

from ._cancel import guard_of
from .exceptions import PoolTimeoutError

logger = logging.getLogger("atom_async_db")

__all__ = ["BEGIN_ON_CHECKOUT", "install_checkout_ping"]

#: True only while a session that begins at checkout takes its connection (see
#: ``TrackedSession._connection_for_bind``): never for other checkouts of the same task.
BEGIN_ON_CHECKOUT: ContextVar[bool] = ContextVar("atom_async_db.begin_on_checkout", default=False)

_FRESH = "atom_async_db.fresh"  # record.info: connected, not yet handed out


def install_checkout_ping(engine: Engine, *, first_trip_limit: float | None = None) -> None:
    """Test ``engine``'s pooled connections on checkout (an async engine's
    ``sync_engine``, with SQLAlchemy's ``pool_pre_ping`` off); see the module docstring.
    """
    dialect = engine.dialect

    if first_trip_limit is None:

        @event.listens_for(engine, "connect")
        def _fresh(_dbapi_connection: Any, record: Any) -> None:
            record.info[_FRESH] = True

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.info.pop(_FRESH, False):
            return
        driver = dbapi_connection.driver_connection
        guard = guard_of(driver)
        try:
            if first_trip_limit is not None:
                _within(
                    first_trip_limit, driver, lambda: _first_trip(dialect, dbapi_connection, guard)
                )
            else:
                _first_trip(dialect, dbapi_connection, guard)
        except PoolTimeoutError:
            raise  # (SQLAlchemy discards the connection it was raised for)
        except Exception as error:
            logger.info("a pooled connection failed its pre-ping (%r); reconnecting", error)
            disconnect = exc.DisconnectionError(f"the connection failed its pre-ping: {error!r}")
            disconnect.invalidate_pool = True  # the server likely dropped them all
            raise disconnect from error

    if hasattr(dialect, "set_readonly"):
        for name in ("set_readonly", "set_deferrable"):
            setattr(dialect, name, _ending_an_unused_begin(getattr(dialect, name)))


def _first_trip(dialect: Any, adapter: Any, guard: Any) -> None:
    """The checkout's one round trip: the session's BEGIN, else a ``SELECT 1``."""
    if BEGIN_ON_CHECKOUT.get() and _begin(adapter):
        return
    driver = adapter.driver_connection
    if guard is not None and hasattr(driver, "is_in_transaction"):  # asyncpg
        await_(guard.run(driver._atom_target.execute("SELECT 1")))
    else:
        dialect.do_ping(adapter)


def _within(limit: float, driver: Any, trip: Any) -> None:
    """Run ``trip``; past ``limit`` seconds, drop the connection and raise
    :class:`PoolTimeoutError`.

    Raises:
        PoolTimeoutError: the trip took longer than ``limit``.
    """
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        # No I/O: closing the socket takes the client out of the pooler's queue.
        getattr(driver, "_atom_target", driver).terminate()

    timer = asyncio.get_running_loop().call_later(limit, expire)
    try:
        trip()
    except Exception:
        if not expired:
            raise
    else:
        return
    finally:
        timer.cancel()
    raise PoolTimeoutError(
        f"the server pooler (server_pooler) gave this session no server connection within "
        f"pool_timeout={limit:g} s: all of its server connections for this database and "
        "user are held by open transactions, this process's or others'. Each session holds "
        "one from its first statement to its end, and a session opened with "
        "independent=True inside another needs a second one while the first waits (a "
        "deadlock once they are all held). Make pool_size + max_overflow, times the "
        "processes, fit the pooler's pool (PgBouncer: default_pool_size), or raise that, "
        "or end the outer session before opening an independent one."
    )


def _begin(adapter: Any) -> bool:
    """Start the transaction on SQLAlchemy's asyncpg adapter; False where there is none
    to start: another driver, AUTOCOMMIT, or one already begun.
    """
    if not hasattr(adapter, "_start_transaction"):  # not SQLAlchemy's asyncpg adapter
        return False
    if adapter._transaction is not None or adapter.autocommit:
        return False
    await_(adapter._start_transaction())
    return True


def _ending_an_unused_begin(set_characteristic: Any) -> Any:
    # SQLAlchemy sets these only outside its transactions, so a transaction the adapter
    # holds then is the one begun at checkout, and nothing has run in it.
    def set_on_a_connection_at_rest(dbapi_connection: Any, value: Any) -> None:
        if getattr(dbapi_connection, "_transaction", None) is not None:
            dbapi_connection.rollback()
        set_characteristic(dbapi_connection, value)

    return set_on_a_connection_at_rest
