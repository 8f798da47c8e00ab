"""Ingest owns the raw records: append-only, one row per (source, source id, text and label)."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, DateTime, Integer, MetaData, String, Table, Text, UniqueConstraint

metadata = MetaData()

raw_records = Table(
    "raw_records",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("record_id", String(401), nullable=False, index=True),
    Column("source", String(200), nullable=False),
    Column("source_id", String(200), nullable=False),
    Column("content_hash", String(64), nullable=False),
    # The hash of the text and the label (``store.revision_hash``): a record with the same text and
    # a new label is a new revision of it (a reviewed label), not a duplicate.
    Column("revision_hash", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("label", String(200), nullable=True),
    Column("timestamp", DateTime(timezone=True), nullable=True),
    Column("ingested_at", DateTime(timezone=True), nullable=False),
    # The raw-data event id is fixed at first insert, so a re-publish after a broker failure
    # carries the same id and downstream inboxes absorb it.
    Column("event_id", String(64), nullable=False, unique=True),
    Column("published_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("source", "source_id", "revision_hash", name="uq_raw_records_revision"),
)

# Erasure requests (a data subject's right to erasure): the audit entry of each, and the event
# that carries it downstream. The raw rows are deleted in the same transaction; no text is kept.
erasures = Table(
    "erasures",
    metadata,
    Column("erasure_id", String(64), primary_key=True),
    Column("record_id", String(401), nullable=False, index=True),
    Column("source", String(200), nullable=False),
    Column("source_id", String(200), nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("requested_by", String(300), nullable=True),  # the API key (name and id); null: an operator
    Column("raw_records_erased", Integer, nullable=False),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("published_at", DateTime(timezone=True), nullable=True, index=True),
)
