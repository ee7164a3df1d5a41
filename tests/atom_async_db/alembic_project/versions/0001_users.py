"""Users, and notes that point at them.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mig_users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(200), nullable=True),
    )
    op.create_table(
        "mig_notes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("mig_users.id"), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mig_notes")
    op.drop_table("mig_users")
