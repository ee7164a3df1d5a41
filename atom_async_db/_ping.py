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
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.util import await_

from ._cancel import guard_of

logger = logging.getLogger("atom_async_db")

__all__ = ["BEGIN_ON_CHECKOUT", "install_checkout_ping"]

#: True only while a session that begins at checkout takes its connection (see
#: ``TrackedSession._connection_for_bind``): never for other checkouts of the same task.
BEGIN_ON_CHECKOUT: ContextVar[bool] = ContextVar("atom_async_db.begin_on_checkout", default=False)

_FRESH = "atom_async_db.fresh"  # record.info: connected, not yet handed out


def install_checkout_ping(engine: Engine) -> None:
    """Test ``engine``'s pooled connections on checkout (an async engine's
    ``sync_engine``, with SQLAlchemy's ``pool_pre_ping`` off); see the module docstring.
    """
    dialect = engine.dialect

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
            if BEGIN_ON_CHECKOUT.get() and _begin(dbapi_connection):
                return
            if guard is not None and hasattr(driver, "is_in_transaction"):  # asyncpg
                await_(guard.run(driver._atom_target.execute("SELECT 1")))
            else:
                dialect.do_ping(dbapi_connection)
        except Exception as error:
            logger.info("a pooled connection failed its pre-ping (%r); reconnecting", error)
            disconnect = exc.DisconnectionError(f"the connection failed its pre-ping: {error!r}")
            disconnect.invalidate_pool = True  # the server likely dropped them all
            raise disconnect from error

    if hasattr(dialect, "set_readonly"):
        for name in ("set_readonly", "set_deferrable"):
            setattr(dialect, name, _ending_an_unused_begin(getattr(dialect, name)))


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
