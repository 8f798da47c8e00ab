"""near-duplicate index state: the banding its rows were written under

Revision ID: 8d3e1f2a6c47
Revises: 5b7d2c4e8f10
Create Date: 2026-11-25 09:40:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "8d3e1f2a6c47"
down_revision: str | Sequence[str] | None = "5b7d2c4e8f10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "near_dup_state",
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("banding", sa.String(length=200), nullable=False),
        sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("near_dup_state")
