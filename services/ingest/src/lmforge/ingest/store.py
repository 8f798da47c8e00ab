"""Persist raw records idempotently, then publish the new ones to ``raw-data``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import select, update

from lmforge.common.db import Database, insert_ignoring_conflicts
from lmforge.common.events import Event, RawRecordV1, Topic, UpstreamRecord, content_hash, record_key
from lmforge.common.kafka import EventProducer

from .models import raw_records


@dataclass(frozen=True)
class IngestResult:
    record_id: str
    status: Literal["accepted", "duplicate"]
    event_id: str


class RawRecordStore:
    def __init__(self, db: Database, producer: EventProducer) -> None:
        self.db = db
        self.producer = producer

    async def accept(self, records: list[UpstreamRecord]) -> list[IngestResult]:
        """Store each record once and publish every stored record not yet acknowledged by the broker.

        Returns only after the broker acknowledged the writes (``BrokerUnavailable`` otherwise; the
        rows stay unpublished, and the client's retry publishes them with the same event ids).
        """
        now = datetime.now(UTC)
        rows = [
            {
                "record_id": record_key(r.source, r.source_id),
                "source": r.source,
                "source_id": r.source_id,
                "content_hash": content_hash(r.text),
                "text": r.text,
                "metadata": r.metadata,
                "label": r.label,
                "timestamp": r.timestamp,
                "ingested_at": now,
                "event_id": str(uuid.uuid4()),
            }
            for r in records
        ]
        t = raw_records
        async with self.db.sessions.begin() as session:
            await session.execute(insert_ignoring_conflicts(self.db.dialect, t, rows))
            keys = {(r["source"], r["source_id"], r["content_hash"]) for r in rows}
            # One IN over record ids (not an OR per record: SQLite caps expression depth at 1000).
            candidates = (
                await session.execute(select(t).where(t.c.record_id.in_({r["record_id"] for r in rows})))
            ).all()
        stored = [c for c in candidates if (c.source, c.source_id, c.content_hash) in keys]
        by_key = {(s.source, s.source_id, s.content_hash): s for s in stored}
        pending = {s.id: s for s in stored if s.published_at is None}
        if pending:
            events = [
                (
                    row.record_id,
                    Event(
                        data=RawRecordV1(
                            record_id=row.record_id,
                            source=row.source,
                            source_id=row.source_id,
                            text=row.text,
                            content_hash=row.content_hash,
                            metadata=row.metadata,
                            label=row.label,
                            timestamp=row.timestamp,
                            ingested_at=row.ingested_at,
                        ),
                        source=self.producer.source,
                        id=row.event_id,
                        subject=row.record_id,
                    ),
                )
                for row in pending.values()
            ]
            await self.producer.publish_many(Topic.RAW_DATA, events)  # type: ignore[arg-type]
            async with self.db.sessions.begin() as session:
                await session.execute(update(t).where(t.c.id.in_(list(pending))).values(published_at=datetime.now(UTC)))
        results = []
        for r in rows:
            row = by_key[(r["source"], r["source_id"], r["content_hash"])]
            status: Literal["accepted", "duplicate"] = "accepted" if row.id in pending else "duplicate"
            results.append(IngestResult(row.record_id, status, row.event_id))
        return results
