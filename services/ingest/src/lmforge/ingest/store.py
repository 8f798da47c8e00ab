"""Persist raw records idempotently, then publish the new ones to ``raw-data``."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from opentelemetry.context import Context
from sqlalchemy import delete, func, select, update

from lmforge.common.db import Database, as_utc, insert_ignoring_conflicts, lock_names
from lmforge.common.events import (
    Event,
    RawRecordV1,
    RecordErasedV1,
    Topic,
    UpstreamRecord,
    content_hash,
    record_key,
)
from lmforge.common.kafka import EventProducer

from .models import erasures, raw_records


@dataclass(frozen=True)
class IngestResult:
    record_id: str
    status: Literal["accepted", "duplicate"]
    event_id: str


@dataclass(frozen=True)
class Erasure:
    """An erasure request as ingest keeps it: the audit entry, without any text."""

    erasure_id: str
    record_id: str
    source: str
    source_id: str
    requested_at: datetime
    requested_by: str | None
    raw_records_erased: int
    event_id: str
    published_at: datetime | None


class RecordTooLarge(ValueError):
    """A record whose event would not fit in one Kafka message: refused before it is stored."""

    def __init__(self, index: int, size: int, limit: int) -> None:
        super().__init__(f"record {index} is {size} bytes as JSON: at most {limit}")
        self.index, self.size, self.limit = index, size, limit


def check_record_size(records: list[UpstreamRecord], limit: int) -> None:
    """Refuse any record over ``limit`` bytes as JSON: its raw-data event could never be published,
    and a stored row that cannot be published would wait for ever."""
    for i, record in enumerate(records):
        size = len(record.model_dump_json().encode())
        if size > limit:
            raise RecordTooLarge(i, size, limit)


def revision_hash(text: str, label: str | None) -> str:
    """What makes a record's revision: its text and its label. Without a label it is the text's
    ``content_hash``; with one, the SHA-256 of the text, a NUL and the label (neither holds a NUL)."""
    if label is None:
        return content_hash(text)
    return hashlib.sha256(f"{text}\x00{label}".encode()).hexdigest()


class RawRecordStore:
    def __init__(self, db: Database, producer: EventProducer, *, max_record_bytes: int = 512 * 1024) -> None:
        self.db = db
        self.producer = producer
        self.max_record_bytes = max_record_bytes

    async def accept(self, records: list[UpstreamRecord], contexts: list[Context] | None = None) -> list[IngestResult]:
        """Store each revision of a record once (its source, source id, text and label: a new label
        for the same text is a new revision) and publish every stored record not yet acknowledged
        by the broker. ``contexts`` (one per record: a consumed batch's records, each in its own
        trace) makes each record's ``raw-data`` event continue its own trace.

        Returns only after the broker acknowledged the writes (``BrokerUnavailable`` otherwise; the
        rows stay unpublished, and the client's retry, or the sweeper, publishes them with the same
        event ids). A record too large to publish raises ``RecordTooLarge`` before anything is stored.
        """
        check_record_size(records, self.max_record_bytes)
        rows: list[dict[str, Any]] = [
            {
                "record_id": record_key(r.source, r.source_id),
                "source": r.source,
                "source_id": r.source_id,
                "content_hash": content_hash(r.text),
                "revision_hash": revision_hash(r.text, r.label),
                "text": r.text,
                "metadata": r.metadata,
                "label": r.label,
                "timestamp": r.timestamp,
                "event_id": str(uuid.uuid4()),
            }
            for r in records
        ]
        t = raw_records
        async with self.db.sessions.begin() as session:
            # Against an erasure of the same record at the same moment: one waits for the other,
            # and the time is taken once the lock is held (a copy stored after the erasure is
            # newer than it, and kept downstream; one stored before is deleted by it).
            await lock_names(session, {r["record_id"] for r in rows})
            now = datetime.now(UTC)
            for values in rows:
                values["ingested_at"] = now
            await session.execute(insert_ignoring_conflicts(self.db.dialect, t, rows))
            keys = [(r["source"], r["source_id"], r["revision_hash"]) for r in rows]  # a revision's identity
            # One IN over record ids (not an OR per record: SQLite caps expression depth at 1000).
            candidates = (
                await session.execute(select(t).where(t.c.record_id.in_({r["record_id"] for r in rows})))
            ).all()
        wanted = set(keys)
        by_key = {key: c for c in candidates if (key := (c.source, c.source_id, c.revision_hash)) in wanted}
        pending = {s.id: (s, key) for key, s in by_key.items() if s.published_at is None}
        if pending:
            context_of = dict(zip(keys, contexts, strict=True)) if contexts is not None else None
            await self._publish(
                [s for s, _ in pending.values()],
                [context_of[key] for _, key in pending.values()] if context_of is not None else None,
            )
        results = []
        for key in keys:
            row = by_key[key]
            status: Literal["accepted", "duplicate"] = "accepted" if row.id in pending else "duplicate"
            results.append(IngestResult(row.record_id, status, row.event_id))
        return results

    async def latest(self, record_ids: set[str]) -> dict[str, Any]:
        """The latest stored revision (the last row stored) of each of these records that exists."""
        if not record_ids:
            return {}
        t = raw_records
        newest = select(func.max(t.c.id)).where(t.c.record_id.in_(record_ids)).group_by(t.c.record_id)
        async with self.db.sessions() as session:
            rows = (await session.execute(select(t).where(t.c.id.in_(newest)))).all()
        return {row.record_id: row for row in rows}

    async def erased(self, record_ids: set[str]) -> dict[str, str]:
        """Of these records, the ones with an erasure: record id -> its latest erasure id."""
        if not record_ids:
            return {}
        e = erasures
        async with self.db.sessions() as session:
            rows = (
                await session.execute(
                    select(e.c.record_id, e.c.erasure_id)
                    .where(e.c.record_id.in_(record_ids))
                    .order_by(e.c.requested_at)
                )
            ).all()
        return {row.record_id: row.erasure_id for row in rows}

    async def _publish(self, rows: list[Any], contexts: list[Context] | None = None) -> None:
        """Publish stored rows (in the given order) with their fixed event ids, then mark them."""
        t = raw_records
        payloads = [raw_record_payload(row) for row in rows]
        await self._publish_and_mark(payloads, [r.event_id for r in rows], t, t.c.id, [r.id for r in rows], contexts)

    async def _publish_and_mark(
        self,
        payloads: list[Any],
        event_ids: list[str],
        table: Any,
        key: Any,
        keys: list[Any],
        contexts: list[Context] | None = None,
    ) -> datetime:
        """Publish each payload on ``raw-data`` with its fixed event id, keyed by its record, once
        the broker acknowledged all of them mark their rows (``key`` in ``keys``) published."""
        events = [
            (p.record_id, Event(data=p, source=self.producer.source, id=event_id, subject=p.record_id))
            for p, event_id in zip(payloads, event_ids, strict=True)
        ]
        await self.producer.publish_many(Topic.RAW_DATA, events, contexts=contexts)  # type: ignore[arg-type]
        now = datetime.now(UTC)
        async with self.db.sessions.begin() as session:
            await session.execute(update(table).where(key.in_(keys)).values(published_at=now))
        return now

    async def erase(self, source: str, source_id: str, requested_by: str | None) -> Erasure:
        """Delete every raw row of the record and keep an audit entry, in one transaction; then
        publish ``lmforge.record.erased.v1`` to ``raw-data`` (keyed like the record) and return
        once the broker acknowledged it. ``BrokerUnavailable``: the rows are already gone and the
        entry waits unpublished; the sweeper publishes it (or a retry of the request does: erasing
        a record that has no rows left is a new entry that deletes nothing and is published too).
        """
        record_id = record_key(source, source_id)
        row: dict[str, Any] = {
            "erasure_id": str(uuid.uuid4()),
            "record_id": record_id,
            "source": source,
            "source_id": source_id,
            "requested_by": requested_by,
            "event_id": str(uuid.uuid4()),
            "published_at": None,
        }
        t = raw_records
        async with self.db.sessions.begin() as session:
            await lock_names(session, [record_id])  # see accept
            row["requested_at"] = datetime.now(UTC)
            deleted = await session.execute(delete(t).where(t.c.source == source, t.c.source_id == source_id))
            row["raw_records_erased"] = deleted.rowcount or 0  # type: ignore[attr-defined]
            await session.execute(erasures.insert().values(**row))
        erasure = Erasure(**row)  # type: ignore[arg-type]
        return await self._publish_erasures([erasure]) or erasure

    async def erasure(self, erasure_id: str) -> Erasure | None:
        async with self.db.sessions() as session:
            row = (await session.execute(select(erasures).where(erasures.c.erasure_id == erasure_id))).first()
        return _erasure(row) if row is not None else None

    async def _publish_erasures(self, entries: list[Erasure]) -> Erasure | None:
        """Publish erasure events with their fixed ids, then mark them; returns the last, marked."""
        if not entries:
            return None
        payloads = [
            RecordErasedV1(
                erasure_id=e.erasure_id,
                record_id=e.record_id,
                source=e.source,
                source_id=e.source_id,
                requested_at=e.requested_at,
                requested_by=e.requested_by,
            )
            for e in entries
        ]
        ids = [e.erasure_id for e in entries]
        now = await self._publish_and_mark(
            payloads, [e.event_id for e in entries], erasures, erasures.c.erasure_id, ids
        )
        return Erasure(**{**entries[-1].__dict__, "published_at": now})

    async def publish_stranded(self, older_than_s: float, limit: int) -> tuple[int, float]:
        """Publish rows stored but never acknowledged (their request got a 503, or the process
        died between commit and ack), oldest first: raw records, then erasure requests. Rows
        younger than ``older_than_s`` are left to the request that is publishing them. Returns
        (published, age in seconds of the oldest unpublished row left, 0 if none)."""
        t, e = raw_records, erasures
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        async with self.db.sessions() as session:
            rows = (
                await session.execute(
                    select(t).where(t.c.published_at.is_(None), t.c.ingested_at < cutoff).order_by(t.c.id).limit(limit)
                )
            ).all()
            stranded_erasures = (
                await session.execute(
                    select(e)
                    .where(e.c.published_at.is_(None), e.c.requested_at < cutoff)
                    .order_by(e.c.requested_at)
                    .limit(limit)
                )
            ).all()
        if rows:
            await self._publish(list(rows))
        if stranded_erasures:
            await self._publish_erasures([_erasure(r) for r in stranded_erasures])
        return len(rows) + len(stranded_erasures), await self.oldest_unpublished_age_s()

    async def oldest_unpublished_age_s(self) -> float:
        t, e = raw_records, erasures
        async with self.db.sessions() as session:
            oldest_record = (
                await session.execute(select(func.min(t.c.ingested_at)).where(t.c.published_at.is_(None)))
            ).scalar_one_or_none()
            oldest_erasure = (
                await session.execute(select(func.min(e.c.requested_at)).where(e.c.published_at.is_(None)))
            ).scalar_one_or_none()
        return max(_age_s(oldest_record), _age_s(oldest_erasure))


def raw_record_payload(row: Any) -> RawRecordV1:
    """The ``raw-data`` payload of a stored ``raw_records`` row."""
    return RawRecordV1(
        record_id=row.record_id,
        source=row.source,
        source_id=row.source_id,
        text=row.text,
        content_hash=row.content_hash,
        metadata=row.metadata,
        label=row.label,
        timestamp=row.timestamp,
        ingested_at=row.ingested_at,
    )


def _erasure(row: Any) -> Erasure:
    found = dict(row._mapping)
    return Erasure(
        **found | {"requested_at": as_utc(found["requested_at"]), "published_at": as_utc(found["published_at"])}
    )


def _age_s(at: datetime | None) -> float:
    if at is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - as_utc(at)).total_seconds())
