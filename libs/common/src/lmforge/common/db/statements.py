"""Dialect-specific statements, written once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, overload

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


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """A timestamp read back from the database, with its zone: SQLite hands timestamps back
    without one, and every timestamp here is written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
