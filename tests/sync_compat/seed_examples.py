"""The code examples of the seed guide (DATABASE_SESSION_GUIDE.md), as written there.

Only the import lines differ: ``core.database`` is this package's stand-in, whose two lines
re-export ``sync_compat``, exactly as the README tells an application to do. Where the
guide's snippet is a fragment, it is wrapped in a function named after its section; the
guide's ``logger`` and ``router`` helpers are defined here since the guide does not show
them. Nothing else is changed, type hints (``user_id: str``) included.
"""

# ruff: noqa: UP045
# mypy: ignore-errors

from __future__ import annotations

import logging
from typing import Optional

from sqlalchemy.orm import joinedload

from tests.sync_compat.core.database import get_db_session
from tests.sync_compat.core.models import User

logger = logging.getLogger("atom.seed")


# --------------------------------------------------------------------------- Pattern 2


class UserService:
    """Service layer for user operations"""

    def get_user(self, user_id: str) -> Optional[User]:
        """
        Read operation - no commit needed.
        Session auto-closes after context.
        """
        with get_db_session() as db:
            user = db.query(User).filter(User.id == user_id).first()
            return user
        # Session closed here

    def create_user(self, email: str, name: str) -> User:
        """
        Write operation - auto-commits on success.
        Auto-rollback on exception.
        """
        with get_db_session() as db:
            user = User(email=email, first_name=name)
            db.add(user)
            # Auto-commits when exiting context successfully
            return user
        # Session closed here

    def update_user(self, user_id: str, name: str) -> bool:
        """
        Update with explicit commit control.
        """
        with get_db_session() as db:
            user = db.query(User).filter(User.id == user_id).first()
            if not user:
                return False

            user.first_name = name
            db.commit()  # Optional - explicit commit
            return True


async def process_user_data_async(user_id: str):
    """
    Background task with database access.
    Context manager ensures cleanup even if task fails.
    """
    with get_db_session() as db:
        user = db.query(User).filter(User.id == user_id).first()
        if not user:
            logger.error(f"User {user_id} not found")
            return

        # Process data
        user.processed = True
        # Auto-commits on success


def migrate_users():
    """Migrate user data"""
    migrated_count = 0

    with get_db_session() as db:
        users = db.query(User).filter(User.status == "legacy").all()

        for user in users:
            user.status = "active"
            user.version = 2
            migrated_count += 1

        # Auto-commits when all migrations succeed

    print(f"Migrated {migrated_count} users")


# --------------------------------------------------------------------------- anti-patterns (GOOD)


def process_user(user_id: str):
    with get_db_session() as db:  # Context manager
        user = db.query(User).first()
        user.name = "Updated"
        # Auto-commit, auto-cleanup


def get_user(user_id: str):
    with get_db_session() as db:  # New session per call
        return db.query(User).filter(User.id == user_id).first()


# --------------------------------------------------------------------------- best practices


def keep_transactions_short():
    # GOOD: Short transaction
    with get_db_session() as db:
        user = db.query(User).first()
        user.name = "Updated"


# GOOD: Let context manager handle rollback
def update_user(user_id: str, data: dict):
    with get_db_session() as db:
        user = db.query(User).filter(User.id == user_id).first()
        if not user:
            raise ValueError(f"User {user_id} not found")
        user.update(data)
        # Auto-rollback on ValueError


# GOOD: Multiple operations, one transaction
def transfer_data(from_id: str, to_id: str):
    with get_db_session() as db:
        from_user = db.query(User).filter(User.id == from_id).first()
        to_user = db.query(User).filter(User.id == to_id).first()

        from_user.data_count -= 1
        to_user.data_count += 1

        db.commit()  # Single commit for both updates


def eager_load_relationships():
    # GOOD: Eager load to avoid N+1 queries
    with get_db_session() as db:
        # fmt: off
        users = db.query(User).options(
            joinedload(User.posts)
        ).all()
        # fmt: on
    return users  # (returned so the test can read the loaded posts)


# --------------------------------------------------------------------------- performance tips


def select_only_needed_columns():
    # GOOD: Select only needed columns
    with get_db_session() as db:
        users = db.query(User.id, User.email).all()
    return users


def use_indexes(email):
    # GOOD: Use indexes
    with get_db_session() as db:
        user = db.query(User).filter(User.email == email).first()
        # Ensure User.email has index
    return user


def batch_operations(user_data_list):
    # GOOD: Batch operations
    with get_db_session() as db:
        db.bulk_insert_mappings(User, user_data_list)


# --------------------------------------------------------------------------- troubleshooting


def get_user_email_bad(user_id: str):
    # BAD
    with get_db_session() as db:
        user = db.query(User).first()
    return user.email  # Error! Session closed


def get_user_email(user_id: str):
    # GOOD
    with get_db_session() as db:
        user = db.query(User).first()
        return user.email  # OK: Still in context


def posts_after_close_bad():
    # "Detached instance": a lazy relationship read after the session closed
    with get_db_session() as db:
        user = db.query(User).first()
    return user.posts
