"""Server-side connection poolers (PgBouncer): what keeps both engines safe behind one,
and the note on the errors that mean one is there unannounced.

In transaction mode PgBouncer hands each *transaction* of a client connection to whichever
server connection is free. A prepared statement lives on one server connection, so a
driver that prepares a statement in one transaction and runs it in a later one runs it
on another server: ``prepared statement "__asyncpg_stmt_1__" does not exist``, ``already
exists`` (another client's statement of the same name), parameter-count mismatches, and
with psycopg, which names its statements ``_pg3_0``, ``_pg3_1``... in every connection,
*another client's statement of the same signature, which answers silently with the wrong
result*. With ``server_pooler="pgbouncer"``:

- asyncpg's statement cache and SQLAlchemy's are off, so every statement is unnamed and
  lives only as long as the transaction that sent it;
- psycopg never prepares (``prepare_threshold=None``);
- the first round trip of every checkout is bounded by ``pool_timeout`` (see ``_ping``):
  the pooler accepts a client at once and then queues its first statement until one of its
  server connections is free, which a session opened with ``independent=True`` inside
  another can wait for forever.

What the library itself sets per session is safe there: options are ``SET LOCAL`` or part of
``BEGIN``, ``application_name`` is a startup parameter PgBouncer tracks per client, and it
takes no advisory locks and sends no ``LISTEN``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, ExceptionContext

from ._settings import Settings

logger = logging.getLogger("atom_async_db")

__all__ = [
    "POOLER_NOTE",
    "async_connect_args",
    "install_pooler_rules",
    "sync_connect_args",
]

POOLER_NOTE = (
    "atom_async_db: this is the error prepared statements give behind a connection pooler "
    "in transaction mode (PgBouncer, Supavisor, RDS Proxy): a statement prepared on one of "
    "its server connections was used on another. Set server_pooler='pgbouncer' "
    "(ATOM_DB_SERVER_POOLER=pgbouncer, or ?server_pooler=pgbouncer in DATABASE_URL), which "
    "turns prepared statements off in both drivers."
)

# What asyncpg and psycopg report when a prepared statement met the wrong server connection.
_POOLER_SYMPTOMS = re.compile(
    r'prepared statement "[^"]*" (?:does not exist|already exists)'
    r"|unnamed prepared statement does not exist"
    r"|bind message supplies \d+ parameters?, but prepared statement"
    r"|insufficient data left in message"
    r"|incorrect binary data format in bind parameter"
)


def async_connect_args(settings: Settings) -> dict[str, Any]:
    """What the async engine's ``connect_args`` get for ``settings.server_pooler``."""
    if settings.server_pooler == "none":
        return {}
    return {"statement_cache_size": 0, "prepared_statement_cache_size": 0}


def sync_connect_args(settings: Settings, driver: str) -> dict[str, Any]:
    """What the sync engine's ``connect_args`` get for ``settings.server_pooler``
    (psycopg 3 only: psycopg2 never prepares statements).
    """
    if settings.server_pooler == "none" or driver != "psycopg":
        return {}
    return {"prepare_threshold": None}


def install_pooler_rules(engine: Engine, settings: Settings) -> None:
    """Without ``server_pooler``: note :data:`POOLER_NOTE` on the errors a pooler in
    transaction mode causes (a pooler that answers unannounced is also recognised at
    start-up, see ``_startup``).
    """
    if settings.server_pooler != "none":
        return

    @event.listens_for(engine, "handle_error")
    def _name_the_setting(context: ExceptionContext) -> None:
        error = context.sqlalchemy_exception
        if error is not None and _POOLER_SYMPTOMS.search(str(context.original_exception)):
            error.add_note(POOLER_NOTE)
