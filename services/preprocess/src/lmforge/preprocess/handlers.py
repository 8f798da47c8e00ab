"""``raw-data`` -> clean, de-duplicate, mask, split -> ``cleaned-data`` (through the outbox)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import CleanedRecordV1, RawRecordV1, Topic, content_hash
from lmforge.common.kafka import InboundMessage

from .cleaning import DEFAULT_MASKER, clean_text, split_for
from .models import cleaned_records, dropped_records, inbox, outbox
from .pii import PiiMasker


class RawRecordHandler:
    def __init__(self, db: Database, group: str, relay: OutboxRelay, masker: PiiMasker = DEFAULT_MASKER) -> None:
        self.db = db
        self.group = group
        self.relay = relay
        self.masker = masker

    async def __call__(self, msg: InboundMessage) -> None:
        event = msg.event(RawRecordV1)
        raw: RawRecordV1 = event.data
        cleaned_text = clean_text(raw.text, self.masker)
        text, masked = cleaned_text.text, cleaned_text.masked
        digest = content_hash(text)
        now = datetime.now(UTC)
        async with self.db.sessions.begin() as session:
            if not await inbox.claim(session, self.group, event.id):
                return
            if not text:
                await session.execute(
                    dropped_records.insert().values(
                        raw_event_id=event.id, record_id=raw.record_id, reason="empty", created_at=now
                    )
                )
                return
            original = (
                await session.execute(
                    select(cleaned_records.c.record_id).where(cleaned_records.c.content_hash == digest)
                )
            ).scalar_one_or_none()
            if original is not None:
                await session.execute(
                    dropped_records.insert().values(
                        raw_event_id=event.id,
                        record_id=raw.record_id,
                        reason="duplicate",
                        duplicate_of=original,
                        created_at=now,
                    )
                )
                return
            split = split_for(raw.record_id)
            await session.execute(
                cleaned_records.insert().values(
                    record_id=raw.record_id,
                    raw_event_id=event.id,
                    content_hash=digest,
                    raw_content_hash=raw.content_hash,
                    source=raw.source,
                    text=text,
                    label=raw.label,
                    metadata=raw.metadata,
                    masked_entities=masked,
                    split=split.value,
                    source_partition=msg.partition,
                    source_offset=msg.offset,
                    created_at=now,
                )
            )
            cleaned = CleanedRecordV1(
                record_id=raw.record_id,
                source=raw.source,
                source_id=raw.source_id,
                text=text,
                content_hash=digest,
                raw_content_hash=raw.content_hash,
                split=split,
                label=raw.label,
                metadata=raw.metadata,
                masked_entities=masked,
            )
            await outbox.add(session, Topic.CLEANED_DATA, cleaned, key=raw.record_id, subject=raw.record_id)
        self.relay.wake()
