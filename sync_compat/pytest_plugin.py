"""pytest plugin of the legacy layer: ``db_session``, the seed's sync test fixture, without
writing it.

Registered through its own ``pytest11`` entry point; it builds on the core's plugin
(``atom_async_db.pytest_plugin``: ``atom_database``, ``atom_db_metadata``, the options).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

from atom_async_db import Database
from atom_async_db.testing import rollback_transaction_sync

from ._session import SessionLocal


@pytest.fixture
def db_session(atom_database: Database) -> Iterator[Session]:
    """A legacy ``Session`` (``sync_compat.SessionLocal`` style) inside this test's
    transaction, rolled back after the test; the legacy sessions of every thread join it
    meanwhile: ``get_db``, ``get_db_session()`` and ``SessionLocal()``.
    """
    with rollback_transaction_sync(atom_database, session_factory=SessionLocal) as session:
        yield session
