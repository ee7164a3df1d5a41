"""The suite's fixtures, by concern, in ``tests/fixtures/``: ``backends.py`` (the backends
and the default database, with the leak checks after each test), ``cluster.py`` (a
throwaway PostgreSQL cluster), ``replica.py`` (a streaming replica of it) and
``pgbouncer.py`` (PgBouncer servers); helpers the tests import are in ``tests/helpers.py``.

Warnings are errors (pyproject), and a ``gc.collect()`` in the teardown makes a
garbage-collector warning fail the test that caused it.
"""

from tests.fixtures.backends import backend, backend_url, db, make_default, postgres_url
from tests.fixtures.cluster import pg_cluster
from tests.fixtures.pgbouncer import start_pgbouncer
from tests.fixtures.replica import pg_replica

__all__ = [
    "backend",
    "backend_url",
    "db",
    "make_default",
    "pg_cluster",
    "pg_replica",
    "postgres_url",
    "start_pgbouncer",
]
