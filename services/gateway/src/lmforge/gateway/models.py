"""The gateway owns API keys: only a SHA-256 of each secret is stored."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, DateTime, Integer, MetaData, String, Table, false

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
    # No expiry when empty; an expired key is refused like a revoked one.
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("rotated_at", DateTime(timezone=True), nullable=True),
    # Written at most once a minute per key (auth.py), so a request costs no write.
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    # The key from LMFORGE_GATEWAY_BOOTSTRAP_ADMIN_KEY: its lifecycle is the setting's, not the API's.
    Column("bootstrap", Boolean, nullable=False, server_default=false()),
    # This key's own limits; empty: the gateway's settings.
    Column("requests_per_minute", Integer, nullable=True),
    Column("completion_tokens_per_day", BigInteger, nullable=True),
)
