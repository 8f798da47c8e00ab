"""Trainer owns training jobs (one per request) and their runs."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, DateTime, ForeignKey, Integer, MetaData, String, Table, Text

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
    # The test-split evaluation (EvaluationSummary: eval set, tokenizer, metrics, report URI).
    Column("evaluation", JSON, nullable=True),
    # The claim: the replica running the job holds a lease it renews while the job runs; a job whose
    # lease ran out (its trainer died) is claimed again and resumes from its last checkpoint.
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("checkpoint_step", Integer, nullable=True),
    # Hyperparameter search: the search job keeps its spec; each trial is a job of its own that
    # names its search and its number (docs/training.md, "Hyperparameter search").
    Column("search", JSON, nullable=True),
    Column("parent_job_id", String(64), nullable=True, index=True),
    Column("trial", Integer, nullable=True),
    # The request's trace context: the job's work continues that trace after a restart too.
    Column("traceparent", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Metric history, for curves: one row per progress line of the run (loss, learning rate, eval loss).
training_metrics = Table(
    "training_metrics",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("job_id", String(64), ForeignKey("training_jobs.job_id", ondelete="CASCADE"), nullable=False, index=True),
    Column("step", Integer, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)
