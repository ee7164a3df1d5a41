# The SQLModel application configures the default database at import and declares its own
# tables, so it runs in a pytest session of its own, on SQLite and PostgreSQL
# (tests/atom_async_db/test_session_classes.py).
collect_ignore = ["sqlmodel_app"]
