"""Preprocess owns the cleaned records, the dedup index, dropped records and dataset versions."""

from __future__ import annotations

from typing import Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from lmforge.common.db import Inbox, Outbox

# Why a raw record did not become a cleaned record (``dropped_records.reason``): a duplicate, a
# near-duplicate, nothing left after cleaning, or the name of the recipe filter that dropped it
# (``recipe.FILTER_OPERATORS``).
DropReason = Literal[
    "duplicate",
    "near_duplicate",
    "empty",
    "char_length",
    "token_length",
    "symbol_ratio",
    "digit_ratio",
    "repeated_ngrams",
    "language",
    "blocklist",
]
DROP_REASONS: tuple[DropReason, ...] = get_args(DropReason)
# Counted in every dataset manifest, zero or not; a filter's reason appears once it has dropped a record.
ALWAYS_COUNTED: tuple[DropReason, ...] = ("duplicate", "near_duplicate", "empty")

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
    # When ingest stored the newest copy of this text (the raw event's ``ingested_at``): an erasure
    # removes the copies stored before it was requested, not one sent again after it. Null for
    # rows cleaned before this column: older than any erasure.
    Column("ingested_at", DateTime(timezone=True), nullable=True),
    # The record's MinHash signature (near_dup.py): uint32 little-endian, one per permutation.
    # Null for records cleaned before the near-duplicate index existed, or with it switched off.
    Column("minhash", LargeBinary, nullable=True),
    # The hash of the recipe that cleaned it (recipe.py); null for records cleaned before recipes.
    Column("recipe_hash", String(64), nullable=True),
)

# The near-duplicate LSH index (near_dup.py, docs/curation.md "Near-duplicates"): one row per
# (band, band hash), owned by the first surviving record that had it. The primary key is what
# arbitrates between replicas: a second transaction inserting the same band row waits for the
# first to finish, then sees the conflict and re-checks against the owner.
near_dup_bands = Table(
    "near_dup_bands",
    metadata,
    Column("band", SmallInteger, nullable=False),
    Column("band_hash", BigInteger, nullable=False),
    Column("cleaned_id", _id, ForeignKey("cleaned_records.id", ondelete="CASCADE"), nullable=False, index=True),
    PrimaryKeyConstraint("band", "band_hash", name="pk_near_dup_bands"),
)

# Which banding the rows of ``near_dup_bands`` were written under (one row, ``name`` "lsh"): a
# service started with another threshold (another banding) rebuilds the index before it consumes.
near_dup_state = Table(
    "near_dup_state",
    metadata,
    Column("name", String(16), primary_key=True),
    Column("banding", String(200), nullable=False),
    Column("indexed_at", DateTime(timezone=True), nullable=False),
)

dropped_records = Table(
    "dropped_records",
    metadata,
    Column("raw_event_id", String(64), primary_key=True),
    Column("record_id", String(401), nullable=False),
    Column("reason", String(32), nullable=False),  # a DropReason
    Column("duplicate_of", String(401), nullable=True),
    # Which operator dropped it, what it measured and the threshold it was held to (null for rows
    # dropped before these columns existed).
    Column("operator", String(64), nullable=True),
    Column("measured", Float, nullable=True),
    Column("threshold", Float, nullable=True),
    Column("recipe_hash", String(64), nullable=True),  # the recipe it was held to (null before recipes)
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("ingested_at", DateTime(timezone=True), nullable=True),  # as on cleaned_records
    Index("ix_dropped_records_reason_created_at", "reason", "created_at"),  # GET /dropped?reason=
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

# Erasures applied here (a source record erased at ingest, ``lmforge.record.erased.v1``): the audit
# entry of each, without text. A raw event for the record ingested before ``requested_at`` is
# ignored, so a late or repeated delivery cannot bring the text back. ``dataset_versions`` lists
# the versions (``{"dataset", "version"}``) whose shards and manifest the record was removed from.
erasures = Table(
    "erasures",
    metadata,
    Column("erasure_id", String(64), primary_key=True),
    Column("record_id", String(401), nullable=False, index=True),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("requested_by", String(300), nullable=True),
    # When its rows here were deleted (step 1), and when the dataset versions were rewritten too
    # and the erasure passed on (step 3; null until then: not yet applied, as the API says).
    Column("applied_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("cleaned_records_erased", Integer, nullable=False),
    Column("dropped_records_erased", Integer, nullable=False),
    Column("events_forgotten", Integer, nullable=False),
    Column("dataset_versions", JSON, nullable=False),
)
