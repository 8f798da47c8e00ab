"""Inference owns desired vs. actual serving state, per model alias."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text

from lmforge.common.db import Inbox, Outbox

metadata = MetaData()
inbox = Inbox(metadata)
outbox = Outbox(metadata, source="lmforge/inference")

deployments = Table(
    "deployments",
    metadata,
    Column("model_name", String(200), primary_key=True),
    Column("alias", String(64), primary_key=True),
    # What the registry wants served...
    Column("desired_version", Integer, nullable=False),
    Column("desired_artifact_uri", Text, nullable=False),
    # ...and what Triton serves now (the previous version keeps serving if a deployment fails).
    Column("serving_version", Integer, nullable=True),
    Column("triton_model", String(300), nullable=True),
    # The serving version's context window (prompt + new tokens), from its weights' config.json,
    # and when it started serving (GET /served-models' ``created``).
    Column("context_length", Integer, nullable=True),
    Column("deployed_at", DateTime(timezone=True), nullable=True),
    Column("state", String(16), nullable=False),
    # The last version whose deployment failed: not retried until the desired version changes.
    Column("failed_version", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
