from atom_async_db import get_async_db, get_async_db_session  # noqa: F401
from sync_compat import SessionLocal, get_db, get_db_session, run_legacy  # noqa: F401
