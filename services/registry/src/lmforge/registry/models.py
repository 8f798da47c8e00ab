"""Registry owns model versions, aliases and the audit log."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, DateTime, Integer, MetaData, String, Table, Text, UniqueConstraint

from lmforge.common.db import Inbox, Outbox

metadata = MetaData()
inbox = Inbox(metadata)
outbox = Outbox(metadata, source="lmforge/registry")

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("model_name", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("run_id", String(64), nullable=False, unique=True),
    Column("job_id", String(64), nullable=False),
    Column("artifact_uri", Text, nullable=False),
    Column("base_model", Text, nullable=False),
    Column("dataset", String(200), nullable=False),
    Column("dataset_version", Integer, nullable=False),
    Column("dataset_manifest_uri", Text, nullable=False),
    Column("hyperparameters", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    # The trainer's test-split evaluation (eval set and tokenizer fingerprints, metrics, report URI).
    Column("evaluation", JSON, nullable=True),
    Column("gate", JSON, nullable=False),
    Column("deployment", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("model_name", "version", name="uq_model_version"),
)

aliases = Table(
    "aliases",
    metadata,
    Column("model_name", String(200), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    # Who: an API key's name (with its id in actor_key_id) for moves made through the gateway, or
    # the registry itself ("registry", "registry-gate").
    Column("actor", String(200), nullable=False),
    Column("actor_key_id", String(32), nullable=True),
    Column("action", String(64), nullable=False),
    Column("model_name", String(200), nullable=False, index=True),
    Column("details", JSON, nullable=False),
)
