"""Dialect-specific statements, written once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert


def insert_ignoring_conflicts(
    dialect: str, table: Table, rows: dict[str, Any] | list[dict[str, Any]] | None = None
) -> Insert:
    """``INSERT .. ON CONFLICT DO NOTHING`` for PostgreSQL and SQLite: idempotent writes.

    Without ``rows``, the statement takes its rows as ``session.execute(stmt, rows)`` parameters:
    one cached statement, sent as multi-row ``INSERT``s (SQLAlchemy's "insertmanyvalues"), also
    with ``RETURNING``."""
    stmt: postgresql.Insert | sqlite.Insert
    if dialect == "postgresql":
        stmt = postgresql.insert(table)
    elif dialect == "sqlite":
        stmt = sqlite.insert(table)
    else:
        raise NotImplementedError(f"insert_ignoring_conflicts: unsupported dialect {dialect}")
    if rows is not None:
        stmt = stmt.values(rows)
    return stmt.on_conflict_do_nothing()


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
