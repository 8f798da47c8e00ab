"""Trainer owns training jobs (one per request) and their runs."""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, Integer, MetaData, String, Table, Text

from lmforge.common.db import Inbox, Outbox

metadata = MetaData()
inbox = Inbox(metadata)
outbox = Outbox(metadata, source="lmforge/trainer")

training_jobs = Table(
    "training_jobs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("run_id", String(64), nullable=False, unique=True),
    Column("model_name", String(200), nullable=False),
    Column("dataset", String(200), nullable=False),
    Column("dataset_version", Integer, nullable=False),
    Column("dataset_manifest_uri", Text, nullable=False, server_default=""),
    Column("base_model", Text, nullable=False),
    Column("hyperparameters", JSON, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("step", Integer, nullable=False, default=0),
    Column("metrics", JSON, nullable=False),
    Column("artifact_uri", Text, nullable=True),
    Column("error", Text, nullable=True),
    # The request's trace context: the job's work continues that trace after a restart too.
    Column("traceparent", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
