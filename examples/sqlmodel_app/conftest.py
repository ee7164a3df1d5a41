import app  # noqa: F401  (its models, and its configure() line)
import pytest
from sqlmodel import SQLModel


@pytest.fixture(scope="session")
def atom_db_metadata():
    return SQLModel.metadata  # the plugin creates these tables once per test session
