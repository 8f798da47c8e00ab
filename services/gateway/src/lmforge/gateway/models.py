"""The gateway owns API keys: only a SHA-256 of each secret is stored."""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, MetaData, String, Table

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("secret_sha256", String(64), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)
