"""Dialect-specific statements, written once."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, overload

from sqlalchemy import Table, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert

T = TypeVar("T")

# Values bound in one ``IN (...)`` list at most: drivers cap the parameters of one statement
# (asyncpg 32,767; SQLite 32,766). Multi-row inserts need no cap of their own: passed as
# ``session.execute(stmt, rows)``, SQLAlchemy sends them in pages ("insertmanyvalues").
IN_LIST_LIMIT = 5_000


def chunks(values: Sequence[T], size: int = IN_LIST_LIMIT) -> Iterator[Sequence[T]]:
    """``values`` in consecutive slices of at most ``size``: one ``IN`` list each."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


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


async def lock_names(session: AsyncSession, names: Iterable[str]) -> None:
    """Hold a lock on each name until the caller's transaction ends: two transactions that lock the
    same name run one after the other from here on. PostgreSQL: transaction-scoped advisory locks,
    taken in a fixed order (so two transactions never wait on each other in a cycle). SQLite
    serialises writers already: nothing to do."""
    if session.get_bind().dialect.name != "postgresql":
        return
    keys = sorted({int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "big", signed=True) for n in names})
    if keys:
        # unnest yields the array in its order: the locks are taken in key order.
        await session.execute(
            text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k"), {"keys": keys}
        )
