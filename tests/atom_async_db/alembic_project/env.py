"""The test project's env.py: the one the README documents, with its models inline."""

from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table

from atom_async_db.alembic import run_migrations

metadata = MetaData()
Table(
    "mig_users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(200), nullable=False, index=True),
    Column("name", String(100)),
    Column("age", Integer),  # in the models, in no migration yet: autogenerate adds it
)
Table(
    "mig_notes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("mig_users.id"), nullable=False),
)

run_migrations(metadata)
