"""erasures: completed_at, set once the dataset versions are rewritten too

Revision ID: b4c9e2d7a1f3
Revises: 8d3e1f2a6c47
Create Date: 2026-11-25 13:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "b4c9e2d7a1f3"
down_revision: str | Sequence[str] | None = "8d3e1f2a6c47"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("erasures") as batch:
        batch.add_column(sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True))
    # Entries written before: their rewrite is over if their event was claimed; the audit keeps
    # no event id, so they are taken as completed when they were applied.
    op.execute("UPDATE erasures SET completed_at = applied_at")


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("erasures") as batch:
        batch.drop_column("completed_at")
