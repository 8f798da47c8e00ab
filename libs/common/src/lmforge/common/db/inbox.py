"""The idempotent-consumer inbox.

A handler claims ``(consumer group, event id)`` in the *same transaction* as its own writes. The
claim is an ``INSERT .. ON CONFLICT DO NOTHING``: on a redelivery it inserts nothing, the
handler skips its work, and the side effects stay exactly-once.

    async with db.sessions.begin() as session:
        if not await inbox.claim(session, GROUP, event.id):
            return                      # already handled
        session.add(Thing(...))         # committed together with the claim
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, MetaData, String, Table, select
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from .statements import insert_ignoring_conflicts


class Inbox:
    def __init__(self, metadata: MetaData, table_name: str = "inbox") -> None:
        self.table = Table(
            table_name,
            metadata,
            Column("consumer_group", String(200), primary_key=True),
            Column("event_id", String(200), primary_key=True),
            Column("received_at", DateTime(timezone=True), nullable=False),
        )

    async def seen(self, session: AsyncSession, consumer_group: str, event_id: str) -> bool:
        """Whether this group has claimed this event already (a check that records nothing)."""
        t = self.table
        found = await session.execute(
            select(t.c.event_id).where(t.c.consumer_group == consumer_group, t.c.event_id == event_id)
        )
        return found.first() is not None

    async def claim(self, session: AsyncSession, consumer_group: str, event_id: str) -> bool:
        """True if this event is new for this group (and is now recorded); False if seen before."""
        values = {
            "consumer_group": consumer_group,
            "event_id": event_id,
            "received_at": datetime.now(UTC),
        }
        stmt = insert_ignoring_conflicts(session.get_bind().dialect.name, self.table, values)
        result = await session.execute(stmt)
        assert isinstance(result, CursorResult)
        return bool(result.rowcount == 1)

    async def claim_many(self, session: AsyncSession, consumer_group: str, event_ids: Iterable[str]) -> set[str]:
        """The events of ``event_ids`` that are new for this group (and are now recorded), in one
        statement; an id given twice is claimed once."""
        unique = list(dict.fromkeys(event_ids))
        if not unique:
            return set()
        now = datetime.now(UTC)
        t = self.table
        stmt = insert_ignoring_conflicts(session.get_bind().dialect.name, t).returning(t.c.event_id)
        rows = [{"consumer_group": consumer_group, "event_id": e, "received_at": now} for e in unique]
        return set((await session.execute(stmt, rows)).scalars())
