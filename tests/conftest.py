"""The suite's fixtures, by concern: ``tests/fixtures/backends.py`` (the backends and the
default database, with the leak checks after each test) and ``tests/fixtures/cluster.py``
(a throwaway PostgreSQL cluster); helpers the tests import are in ``tests/helpers.py``.

Warnings are errors (pyproject), and a ``gc.collect()`` in the teardown makes a
garbage-collector warning fail the test that caused it.
"""

from tests.fixtures.backends import backend, backend_url, db, make_default, postgres_url
from tests.fixtures.cluster import pg_cluster

__all__ = ["backend", "backend_url", "db", "make_default", "pg_cluster", "postgres_url"]
