"""``raw-data`` -> the recipe (clean, filter, mask), de-duplicate, split -> ``cleaned-data`` (through the outbox)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import CleanedRecordV1, RawRecordV1, Topic, content_hash
from lmforge.common.kafka import InboundMessage

from .cleaning import split_for
from .models import DropReason, cleaned_records, dropped_records, inbox, outbox
from .near_dup import OPERATOR as NEAR_DUP_OPERATOR
from .near_dup import NearDuplicate, NearDuplicateIndex
from .recipe import Pipeline, default_pipeline


class RawRecordHandler:
    """One transaction per record: inbox claim, then the record kept or dropped with its reason.

    ``pipeline`` is the recipe that cleans, filters and masks (default: the shipped recipe);
    ``near_dups`` is the near-duplicate index (None: only exact duplicates are dropped).
    """

    def __init__(
        self,
        db: Database,
        group: str,
        relay: OutboxRelay,
        pipeline: Pipeline | None = None,
        near_dups: NearDuplicateIndex | None = None,
    ) -> None:
        self.db = db
        self.group = group
        self.relay = relay
        self.pipeline = pipeline or default_pipeline()
        self.recipe_hash = self.pipeline.recipe.hash
        self.near_dups = near_dups

    async def __call__(self, msg: InboundMessage) -> None:
        event = msg.event(RawRecordV1)
        raw: RawRecordV1 = event.data
        outcome = self.pipeline.run(raw.text)
        text, masked, filtered = outcome.text, outcome.masked, outcome.dropped
        digest = content_hash(text)
        keep = bool(text) and filtered is None
        fingerprint = self.near_dups.fingerprint(text) if self.near_dups is not None and keep else None
        now = datetime.now(UTC)
        async with self.db.sessions.begin() as session:
            if not await inbox.claim(session, self.group, event.id):
                return
            if not text:  # measured: characters left after cleaning
                await self._drop(session, event.id, raw.record_id, now, "empty", "clean_text", 0.0, 1.0)
                return
            if filtered is not None:  # the reason is the filter's name (models.DropReason lists them)
                reason = cast(DropReason, filtered.operator)
                await self._drop(
                    session, event.id, raw.record_id, now, reason, reason, filtered.measured, filtered.threshold
                )
                return
            original = (
                await session.execute(
                    select(cleaned_records.c.record_id).where(cleaned_records.c.content_hash == digest)
                )
            ).scalar_one_or_none()
            if original is not None:
                await self._drop(session, event.id, raw.record_id, now, "duplicate", "exact_dedup", 1.0, 1.0, original)
                return
            checked: set[int] = set()
            if fingerprint is not None:
                assert self.near_dups is not None
                near, checked = await self.near_dups.find(session, fingerprint, raw.record_id)
                if near is not None:
                    await self._drop_near_duplicate(session, event.id, raw.record_id, near, now)
                    return
            split = split_for(raw.record_id)
            inserted = await session.execute(
                cleaned_records.insert()
                .returning(cleaned_records.c.id)
                .values(
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
                    minhash=fingerprint.signature if fingerprint is not None else None,
                    recipe_hash=self.recipe_hash,
                )
            )
            cleaned_id = int(inserted.scalar_one())
            if fingerprint is not None:
                assert self.near_dups is not None
                near = await self.near_dups.add(session, fingerprint, cleaned_id, raw.record_id, checked)
                if near is not None:  # a concurrent replica kept a near-duplicate first
                    # Its band rows go with it (ON DELETE CASCADE; SQLite engines enforce foreign keys).
                    await session.execute(delete(cleaned_records).where(cleaned_records.c.id == cleaned_id))
                    await self._drop_near_duplicate(session, event.id, raw.record_id, near, now)
                    return
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

    async def _drop_near_duplicate(
        self, session: AsyncSession, event_id: str, record_id: str, near: NearDuplicate, now: datetime
    ) -> None:
        assert self.near_dups is not None
        await self._drop(
            session,
            event_id,
            record_id,
            now,
            "near_duplicate",
            NEAR_DUP_OPERATOR,
            near.similarity,
            self.near_dups.threshold,
            near.record_id,
        )

    async def _drop(
        self,
        session: AsyncSession,
        event_id: str,
        record_id: str,
        now: datetime,
        reason: DropReason,
        operator: str,
        measured: float,
        threshold: float,
        duplicate_of: str | None = None,
    ) -> None:
        """Keep a dropped record with its reason: the operator, what it measured, the threshold,
        and the recipe that held it to that threshold."""
        await session.execute(
            dropped_records.insert().values(
                raw_event_id=event_id,
                record_id=record_id,
                reason=reason,
                duplicate_of=duplicate_of,
                operator=operator,
                measured=measured,
                threshold=threshold,
                recipe_hash=self.recipe_hash,
                created_at=now,
            )
        )
