from sync_compat.database_manager import *  # noqa: F403
