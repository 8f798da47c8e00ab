"""revision hash: a record's text and label

Revision ID: 726c95238d19
Revises: 3c1f0e7a9b21
Create Date: 2026-11-25 08:54:25.530994

A raw record is stored once per (source, source id, text and label), no longer per text alone: a
new label for the same text (a reviewed label) is a new revision. Rows stored before have their
revision hash filled in: the content hash without a label, else computed from the text and label.
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "726c95238d19"
down_revision: str | Sequence[str] | None = "3c1f0e7a9b21"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_raw = sa.table(
    "raw_records",
    sa.column("id", sa.Integer),
    sa.column("source", sa.String),
    sa.column("source_id", sa.String),
    sa.column("text", sa.Text),
    sa.column("label", sa.String),
    sa.column("content_hash", sa.String),
    sa.column("revision_hash", sa.String),
)


def _revision_hash(text: str, label: str) -> str:
    """``lmforge.ingest.store.revision_hash`` of a labelled record, as it was when this was written."""
    return hashlib.sha256(f"{text}\x00{label}".encode()).hexdigest()


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("raw_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision_hash", sa.String(length=64), nullable=True))
    op.execute(_raw.update().where(_raw.c.label.is_(None)).values(revision_hash=_raw.c.content_hash))
    bind = op.get_bind()
    while True:
        rows = bind.execute(
            sa.select(_raw.c.id, _raw.c.text, _raw.c.label)
            .where(_raw.c.revision_hash.is_(None))
            .order_by(_raw.c.id)
            .limit(1000)
        ).all()
        if not rows:
            break
        for row in rows:
            bind.execute(
                _raw.update().where(_raw.c.id == row.id).values(revision_hash=_revision_hash(row.text, row.label))
            )
    with op.batch_alter_table("raw_records", schema=None) as batch_op:
        batch_op.alter_column("revision_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_constraint("uq_raw_records_content", type_="unique")
        batch_op.create_unique_constraint("uq_raw_records_revision", ["source", "source_id", "revision_hash"])


def downgrade() -> None:
    """Downgrade schema: of the revisions of a record with the same text, the first stored is kept."""
    first = sa.alias(_raw, "first")
    op.execute(
        _raw.delete().where(
            sa.exists().where(
                first.c.source == _raw.c.source,
                first.c.source_id == _raw.c.source_id,
                first.c.content_hash == _raw.c.content_hash,
                first.c.id < _raw.c.id,
            )
        )
    )
    with op.batch_alter_table("raw_records", schema=None) as batch_op:
        batch_op.drop_constraint("uq_raw_records_revision", type_="unique")
        batch_op.create_unique_constraint("uq_raw_records_content", ["source", "source_id", "content_hash"])
        batch_op.drop_column("revision_hash")
