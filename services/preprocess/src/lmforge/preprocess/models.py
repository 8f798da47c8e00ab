"""Preprocess owns the cleaned records, the dedup index, dropped records and dataset versions."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, DateTime, Integer, MetaData, String, Table, Text, UniqueConstraint

from lmforge.common.db import Inbox, Outbox

metadata = MetaData()
inbox = Inbox(metadata)
outbox = Outbox(metadata, source="lmforge/preprocess")

_id = BigInteger().with_variant(Integer, "sqlite")

cleaned_records = Table(
    "cleaned_records",
    metadata,
    Column("id", _id, primary_key=True, autoincrement=True),
    Column("record_id", String(401), nullable=False, index=True),
    Column("raw_event_id", String(64), nullable=False, unique=True),
    # The dedup index: one cleaned record per cleaned-text hash.
    Column("content_hash", String(64), nullable=False, unique=True),
    Column("raw_content_hash", String(64), nullable=False),
    Column("source", String(200), nullable=False),
    Column("text", Text, nullable=False),
    Column("label", String(200), nullable=True),
    Column("metadata", JSON, nullable=False),
    Column("masked_entities", JSON, nullable=False),
    Column("split", String(8), nullable=False),
    Column("source_partition", Integer, nullable=False),
    Column("source_offset", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

dropped_records = Table(
    "dropped_records",
    metadata,
    Column("raw_event_id", String(64), primary_key=True),
    Column("record_id", String(401), nullable=False),
    Column("reason", String(32), nullable=False),  # "duplicate" or "empty"
    Column("duplicate_of", String(401), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# A version number is claimed first (state "pending", unique per dataset), then its files are
# written under it, then it becomes "ready": two concurrent cuts never share a number or files.
dataset_versions = Table(
    "dataset_versions",
    metadata,
    Column("id", _id, primary_key=True, autoincrement=True),
    Column("dataset", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("state", String(16), nullable=False, server_default="ready"),
    Column("manifest_uri", Text, nullable=True),
    Column("record_count", Integer, nullable=False),
    Column("split_counts", JSON, nullable=False),
    Column("config_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("dataset", "version", name="uq_dataset_version"),
)
