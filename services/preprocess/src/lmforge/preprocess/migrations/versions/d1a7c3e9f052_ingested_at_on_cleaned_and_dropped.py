"""cleaned and dropped records: ingested_at, when ingest stored the copy they came from

Revision ID: d1a7c3e9f052
Revises: b4c9e2d7a1f3
Create Date: 2026-11-25 13:10:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "d1a7c3e9f052"
down_revision: str | Sequence[str] | None = "b4c9e2d7a1f3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema. Rows from before stay null: an erasure takes them as older than itself."""
    with op.batch_alter_table("cleaned_records") as batch:
        batch.add_column(sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("dropped_records") as batch:
        batch.add_column(sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("dropped_records") as batch:
        batch.drop_column("ingested_at")
    with op.batch_alter_table("cleaned_records") as batch:
        batch.drop_column("ingested_at")
