"""Dialect-specific statements, written once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert


def insert_ignoring_conflicts(dialect: str, table: Table, rows: dict[str, Any] | list[dict[str, Any]]) -> Insert:
    """``INSERT .. ON CONFLICT DO NOTHING`` for PostgreSQL and SQLite: idempotent writes."""
    if dialect == "postgresql":
        return postgresql.insert(table).values(rows).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).values(rows).on_conflict_do_nothing()
    raise NotImplementedError(f"insert_ignoring_conflicts: unsupported dialect {dialect}")
