"""erasures

Revision ID: 5b7d2c4e8f10
Revises: 1266a1bf501b
Create Date: 2026-11-25 09:30:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "5b7d2c4e8f10"
down_revision: str | Sequence[str] | None = "1266a1bf501b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "erasures",
        sa.Column("erasure_id", sa.String(length=64), nullable=False),
        sa.Column("record_id", sa.String(length=401), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_by", sa.String(length=300), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cleaned_records_erased", sa.Integer(), nullable=False),
        sa.Column("dropped_records_erased", sa.Integer(), nullable=False),
        sa.Column("events_forgotten", sa.Integer(), nullable=False),
        sa.Column("dataset_versions", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("erasure_id"),
    )
    with op.batch_alter_table("erasures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_erasures_record_id"), ["record_id"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("erasures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_erasures_record_id"))
    op.drop_table("erasures")
