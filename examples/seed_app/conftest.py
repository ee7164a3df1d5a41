import pytest
from app import Base


@pytest.fixture(scope="session")
def atom_db_metadata():
    return Base.metadata  # the plugin creates these tables once per test session
