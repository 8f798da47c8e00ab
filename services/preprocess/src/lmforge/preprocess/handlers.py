"""``raw-data`` -> the recipe (clean, filter, mask), de-duplicate, split -> ``cleaned-data`` (through the outbox).

An erasure on ``raw-data`` (``lmforge.record.erased.v1``) removes the record from every store here
and is passed on to ``cleaned-data`` (docs/curation.md, "Erasure").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from lmforge.common.db import Database, OutboxRelay, insert_ignoring_conflicts
from lmforge.common.events import CleanedRecordV2, Event, RawRecordV1, RecordErasedV1, Split, Topic, content_hash
from lmforge.common.kafka import InboundMessage
from lmforge.common.telemetry import get_logger

from .cleaning import split_for
from .models import DropReason, cleaned_records, dropped_records, erasures, inbox, outbox
from .near_dup import OPERATOR as NEAR_DUP_OPERATOR
from .near_dup import Fingerprint, NearDuplicate, NearDuplicateIndex
from .recipe import Outcome, Pipeline, default_pipeline
from .store import DatasetStore

log = get_logger(__name__)


class RawRecordHandler:
    """One transaction per record: inbox claim, then the record kept or dropped with its reason.

    ``pipeline`` is the recipe that cleans, filters and masks (default: the shipped recipe);
    ``near_dups`` is the near-duplicate index (None: only exact duplicates are dropped);
    ``datasets`` is where an erasure takes the record out of dataset versions (None: no versions,
    for tests without an artifact store).
    """

    def __init__(
        self,
        db: Database,
        group: str,
        relay: OutboxRelay,
        pipeline: Pipeline | None = None,
        near_dups: NearDuplicateIndex | None = None,
        datasets: DatasetStore | None = None,
    ) -> None:
        self.db = db
        self.datasets = datasets
        self.group = group
        self.relay = relay
        self.pipeline = pipeline or default_pipeline()
        self.recipe_hash = self.pipeline.recipe.hash
        self.near_dups = near_dups

    async def __call__(self, msg: InboundMessage) -> None:
        event = msg.event((RawRecordV1, RecordErasedV1))
        if isinstance(event.data, RecordErasedV1):
            await self._erase(event)
            return
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
            if await self._erased_since(session, raw):
                log.info("raw record erased after it was ingested: ignored", record_id=raw.record_id)
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
        await self._announce(session, raw, outcome, digest, split)
        return True

    async def _announce(
        self, session: AsyncSession, raw: RawRecordV1, outcome: Outcome, digest: str, split: Split
    ) -> None:
        """The record as cleaned, on ``cleaned-data`` (through the outbox, in the same transaction)."""
        cleaned = CleanedRecordV2(
            record_id=raw.record_id,
            source=raw.source,
            source_id=raw.source_id,
            text=outcome.text,
            content_hash=digest,
            raw_content_hash=raw.content_hash,
            split=split,
            label=raw.label,
            metadata=raw.metadata,
            masked_entities=outcome.masked,
            sensitivity=outcome.sensitivity.value,
            recipe_hash=self.recipe_hash,
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
        await self._announce(session, raw, outcome, digest, split)

    async def _erased_since(self, session: AsyncSession, raw: RawRecordV1) -> bool:
        """Whether the record was erased after this copy of it was ingested (a late delivery)."""
        t = erasures
        found = await session.execute(
            select(t.c.erasure_id).where(t.c.record_id == raw.record_id, t.c.requested_at >= raw.ingested_at).limit(1)
        )
        return found.first() is not None

    async def _erase(self, event: Event[RecordErasedV1]) -> None:
        """Remove the record from every store here, in three idempotent steps (a redelivery after a
        crash between them repeats them; the inbox is claimed in the last):

        1. delete its cleaned rows (their near-duplicate band rows go with them), its dropped rows
           and the outbox rows of its ``cleaned-data`` events (their values hold its text), and
           write the audit entry;
        2. take it out of every dataset version that holds it (shards and manifest);
        3. name those versions in the audit entry, claim the event, and pass the erasure on to
           ``cleaned-data``.
        """
        erased: RecordErasedV1 = event.data
        record_id = erased.record_id
        async with self.db.sessions() as session:
            if await inbox.seen(session, self.group, event.id):
                return
        now = datetime.now(UTC)
        async with self.db.sessions.begin() as session:
            cleaned = await session.execute(delete(cleaned_records).where(cleaned_records.c.record_id == record_id))
            dropped = await session.execute(delete(dropped_records).where(dropped_records.c.record_id == record_id))
            # Records dropped as its duplicates stay dropped, but no longer name it.
            await session.execute(
                update(dropped_records).where(dropped_records.c.duplicate_of == record_id).values(duplicate_of=None)
            )
            forgotten = await outbox.forget(session, topic=Topic.CLEANED_DATA, key=record_id)
            await session.execute(
                insert_ignoring_conflicts(
                    self.db.dialect,
                    erasures,
                    {
                        "erasure_id": erased.erasure_id,
                        "record_id": record_id,
                        "requested_at": erased.requested_at,
                        "requested_by": erased.requested_by,
                        "applied_at": now,
                        "cleaned_records_erased": cleaned.rowcount or 0,  # type: ignore[attr-defined]
                        "dropped_records_erased": dropped.rowcount or 0,  # type: ignore[attr-defined]
                        "events_forgotten": forgotten,
                        "dataset_versions": [],
                    },
                )
            )
        versions = (
            await self.datasets.remove_from_versions({record_id}, erased.erasure_id)
            if self.datasets is not None
            else []
        )
        async with self.db.sessions.begin() as session:
            if not await inbox.claim(session, self.group, event.id):
                return
            if versions:
                await session.execute(
                    update(erasures).where(erasures.c.erasure_id == erased.erasure_id).values(dataset_versions=versions)
                )
            await outbox.add(session, Topic.CLEANED_DATA, erased, key=record_id, subject=record_id)
        self.relay.wake()
        log.info("record erased", record_id=record_id, erasure_id=erased.erasure_id, dataset_versions=len(versions))

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
