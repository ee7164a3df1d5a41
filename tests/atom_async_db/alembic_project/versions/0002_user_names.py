"""Users get a name; e-mail becomes required (an ALTER that SQLite runs in batch mode).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mig_users") as batch:
        batch.add_column(sa.Column("name", sa.String(100)))
        batch.alter_column("email", existing_type=sa.String(200), nullable=False)
        batch.create_index("ix_mig_users_email", ["email"])


def downgrade() -> None:
    with op.batch_alter_table("mig_users") as batch:
        batch.drop_index("ix_mig_users_email")
        batch.alter_column("email", existing_type=sa.String(200), nullable=True)
        batch.drop_column("name")
