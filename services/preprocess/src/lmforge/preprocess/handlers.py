"""``raw-data`` -> the recipe (clean, filter, mask), de-duplicate, split -> ``cleaned-data`` (through the outbox)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import CleanedRecordV1, RawRecordV1, Split, Topic, content_hash
from lmforge.common.kafka import InboundMessage

from .cleaning import split_for
from .models import DropReason, cleaned_records, dropped_records, inbox, outbox
from .near_dup import OPERATOR as NEAR_DUP_OPERATOR
from .near_dup import Fingerprint, NearDuplicate, NearDuplicateIndex
from .recipe import Outcome, Pipeline, default_pipeline


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
        text = outcome.text
        digest = content_hash(text)
        keep = bool(text) and outcome.dropped is None
        fingerprint = self.near_dups.fingerprint(text) if self.near_dups is not None and keep else None
        now = datetime.now(UTC)
        async with self.db.sessions.begin() as session:
            if not await inbox.claim(session, self.group, event.id):
                return
            announced = await self._keep_or_drop(session, msg, event.id, raw, outcome, digest, fingerprint, now)
        if announced:
            self.relay.wake()

    async def _keep_or_drop(
        self,
        session: AsyncSession,
        msg: InboundMessage,
        event_id: str,
        raw: RawRecordV1,
        outcome: Outcome,
        digest: str,
        fingerprint: Fingerprint | None,
        now: datetime,
    ) -> bool:
        """Keep the record (``True``: it is announced on ``cleaned-data``) or drop it with its reason."""
        text, masked, filtered = outcome.text, outcome.masked, outcome.dropped
        if not text:  # measured: characters left after cleaning
            await self._drop(session, event_id, raw.record_id, now, "empty", "clean_text", 0.0, 1.0)
            return False
        if filtered is not None:  # the reason is the filter's name (models.DropReason lists them)
            reason = cast(DropReason, filtered.operator)
            await self._drop(
                session, event_id, raw.record_id, now, reason, reason, filtered.measured, filtered.threshold
            )
            return False
        original = (
            await session.execute(
                select(
                    cleaned_records.c.id,
                    cleaned_records.c.record_id,
                    cleaned_records.c.label,
                    cleaned_records.c.metadata,
                ).where(cleaned_records.c.content_hash == digest)
            )
        ).one_or_none()
        if original is not None and original.record_id == raw.record_id:
            # The record's own cleaned text again: an edit (a reviewed label), never a
            # duplicate of itself, unless nothing of it changed.
            newest = (
                await session.execute(
                    select(func.max(cleaned_records.c.id)).where(cleaned_records.c.record_id == raw.record_id)
                )
            ).scalar_one()
            if original.id == newest:
                if (original.label, original.metadata) != (raw.label, raw.metadata):
                    await self._relabel(session, msg, event_id, raw, original.id, outcome, digest)
                    return True
            else:  # its text went back to an older one: that row gives way to this, the newest
                await session.execute(delete(cleaned_records).where(cleaned_records.c.id == original.id))
                original = None
        if original is not None:
            await self._drop(
                session, event_id, raw.record_id, now, "duplicate", "exact_dedup", 1.0, 1.0, original.record_id
            )
            return False
        checked: set[int] = set()
        if fingerprint is not None:
            assert self.near_dups is not None
            near, checked = await self.near_dups.find(session, fingerprint, raw.record_id)
            if near is not None:
                await self._drop_near_duplicate(session, event_id, raw.record_id, near, now)
                return False
        split = split_for(raw.record_id)
        inserted = await session.execute(
            cleaned_records.insert()
            .returning(cleaned_records.c.id)
            .values(
                record_id=raw.record_id,
                raw_event_id=event_id,
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
                await self._drop_near_duplicate(session, event_id, raw.record_id, near, now)
                return False
        await self._announce(session, raw, text, digest, split, masked)
        return True

    async def _announce(
        self, session: AsyncSession, raw: RawRecordV1, text: str, digest: str, split: Split, masked: dict[str, int]
    ) -> None:
        """The record as cleaned, on ``cleaned-data`` (through the outbox, in the same transaction)."""
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

    async def _relabel(
        self,
        session: AsyncSession,
        msg: InboundMessage,
        event_id: str,
        raw: RawRecordV1,
        row_id: int,
        outcome: Outcome,
        digest: str,
    ) -> None:
        """A new label (or metadata) for the record's current cleaned text: its row takes them in
        place, keeping its place in the order records were cleaned (a split by time keeps it where
        it was), and the record is announced again with them."""
        split = split_for(raw.record_id)
        await session.execute(
            update(cleaned_records)
            .where(cleaned_records.c.id == row_id)
            .values(
                raw_event_id=event_id,
                raw_content_hash=raw.content_hash,
                label=raw.label,
                metadata=raw.metadata,
                source_partition=msg.partition,
                source_offset=msg.offset,
                recipe_hash=self.recipe_hash,
            )
        )
        await self._announce(session, raw, outcome.text, digest, split, outcome.masked)

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
