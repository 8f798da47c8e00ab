"""erasures

Revision ID: 3c1f0e7a9b21
Revises: 97edff00ab98
Create Date: 2026-11-25 09:20:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "3c1f0e7a9b21"
down_revision: str | Sequence[str] | None = "97edff00ab98"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "erasures",
        sa.Column("erasure_id", sa.String(length=64), nullable=False),
        sa.Column("record_id", sa.String(length=401), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("source_id", sa.String(length=200), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_by", sa.String(length=300), nullable=True),
        sa.Column("raw_records_erased", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("erasure_id"),
        sa.UniqueConstraint("event_id"),
    )
    with op.batch_alter_table("erasures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_erasures_record_id"), ["record_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_erasures_published_at"), ["published_at"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("erasures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_erasures_published_at"))
        batch_op.drop_index(batch_op.f("ix_erasures_record_id"))
    op.drop_table("erasures")
