"""``raw-data`` -> the recipe (clean, filter, mask), de-duplicate, split -> ``cleaned-data`` (through the outbox).

Records are handled in batches (what the consumer runner has queued for a partition): the recipe
runs per record, then one transaction decides and writes them all, in a few multi-row statements.
An erasure on ``raw-data`` (``lmforge.record.erased.v1``) removes the record from every store here
and is passed on to ``cleaned-data`` (docs/curation.md, "Erasure").
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from opentelemetry import trace
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from lmforge.common.db import Database, OutboxRelay, as_utc, chunks, insert_ignoring_conflicts, lock_names
from lmforge.common.events import CleanedRecordV2, Event, RawRecordV1, RecordErasedV1, Split, Topic, content_hash
from lmforge.common.kafka import BatchItem, InboundMessage
from lmforge.common.telemetry import get_logger

from .cleaning import split_for
from .models import DropReason, cleaned_records, dropped_records, erasures, inbox, outbox
from .near_dup import OPERATOR as NEAR_DUP_OPERATOR
from .near_dup import Candidate, Fingerprint, IndexView, NearDuplicate, NearDuplicateIndex
from .recipe import Outcome, Pipeline, default_pipeline
from .store import ERASURE_LOCK, DatasetStore

log = get_logger(__name__)


def _before(column: Any, at: datetime) -> Any:
    """Stored at ingest no later than ``at`` (null: from before the time was kept, so older)."""
    return or_(column.is_(None), column <= at)


# A batch decided against a view another transaction changed before it wrote (a concurrent
# replica kept one of its duplicates first) is decided again, this many times at most.
DECISION_ATTEMPTS = 10
# Raw texts whose recipe outcome and signature are kept for reuse (exact copies are common).
RECENT_TEXTS = 4_096
RECENT_TEXT_CHARS = 4_096  # longer texts are not kept: the memory stays bounded (tens of MB)


class _BandTaken(Exception):
    """A band row the batch's view saw free was taken by another transaction meanwhile."""


@dataclass
class _Raw:
    """A raw record of the batch after the recipe: what the transaction decides on."""

    item: BatchItem
    event_id: str
    raw: RawRecordV1
    outcome: Outcome
    digest: str
    fingerprint: Fingerprint | None
    split: Split


@dataclass(eq=False)
class _Row:
    """A cleaned row as the batch sees it: stored (``id``), or kept earlier in the batch
    (``values``, inserted when the batch writes)."""

    record_id: str
    label: str | None
    metadata: Any
    id: int | None = None
    values: dict[str, Any] | None = None
    candidate: Candidate | None = None
    bands: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class _Writes:
    """What a batch writes, in the order it is written: label edits, deleted rows, kept rows (and
    their band rows), dropped rows, outbox rows."""

    relabels: dict[int, dict[str, Any]] = field(default_factory=dict)
    received_again: dict[int, datetime] = field(default_factory=dict)
    deleted: list[int] = field(default_factory=list)
    kept: list[_Row] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    announced: list[dict[str, Any]] = field(default_factory=list)


class RawRecordHandler:
    """Raw records in, each kept (cleaned, announced) or dropped with its reason.

    ``handle_batch`` takes a partition's queued records together (the consumer runner's batch
    handler); calling the handler with one message handles a batch of one (the runner's fallback,
    with its retries and dead letters, when a batch fails). Either way a record gets the decision
    it would get handled alone, in order.

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
        self._recent: OrderedDict[str, tuple[Outcome, Fingerprint | None]] = OrderedDict()

    async def __call__(self, msg: InboundMessage) -> None:
        await self.handle_batch([BatchItem(msg, trace.get_current_span())])

    async def handle_batch(self, items: Sequence[BatchItem]) -> None:
        """Records in order: raw records in one transaction per run between erasures, each erasure
        on its own. Every event is decoded first, so an invalid one fails the batch before anything
        is written (the runner then handles the records one at a time and dead-letters it)."""
        events = [item.message.event((RawRecordV1, RecordErasedV1)) for item in items]
        run: list[_Raw] = []
        for item, event in zip(items, events, strict=True):
            if isinstance(event.data, RecordErasedV1):
                await self._handle_raw(run)
                run = []
                with trace.use_span(item.span, end_on_exit=False):
                    await self._erase(event)
            else:
                run.append(self._prepare(item, event))
        await self._handle_raw(run)

    def _prepare(self, item: BatchItem, event: Event[Any]) -> _Raw:
        """The recipe and the signature: the work of one record that needs no database. Both are
        pure functions of the text, so a text seen among the last ``RECENT_TEXTS`` (an exact copy,
        a resubmission) reuses them."""
        raw: RawRecordV1 = event.data
        recent = self._recent.get(raw.text)
        if recent is not None:
            self._recent.move_to_end(raw.text)
            outcome, fingerprint = recent
        else:
            with trace.use_span(item.span, end_on_exit=False):
                outcome = self.pipeline.run(raw.text)
                keep = bool(outcome.text) and outcome.dropped is None
                fingerprint = self.near_dups.fingerprint(outcome.text) if self.near_dups is not None and keep else None
            if len(raw.text) <= RECENT_TEXT_CHARS:
                self._recent[raw.text] = (outcome, fingerprint)
                if len(self._recent) > RECENT_TEXTS:
                    self._recent.popitem(last=False)
        return _Raw(item, event.id, raw, outcome, content_hash(outcome.text), fingerprint, split_for(raw.record_id))

    async def _handle_raw(self, batch: list[_Raw]) -> None:
        if not batch:
            return
        for attempt in range(1, DECISION_ATTEMPTS + 1):
            try:
                async with self.db.sessions.begin() as session:
                    announced = await self._decide_and_write(session, batch)
                break
            except (_BandTaken, IntegrityError, OperationalError) as exc:
                # Another transaction kept one of this batch's duplicates first (a band row or a
                # content hash taken; SQLite: a write after another's commit): decide again.
                if attempt == DECISION_ATTEMPTS:
                    raise
                log.info("batch raced another transaction, deciding again", attempt=attempt, error=type(exc).__name__)
        if announced:
            self.relay.wake()

    async def _decide_and_write(self, session: AsyncSession, batch: list[_Raw]) -> bool:
        """Claim the batch's events, read what its decisions need, decide each record in order,
        write. True when something was announced on ``cleaned-data``."""
        claimed = await inbox.claim_many(session, self.group, (r.event_id for r in batch))
        todo: list[_Raw] = []
        for r in batch:
            if r.event_id in claimed:
                claimed.discard(r.event_id)  # the same event twice in a batch: handled once
                todo.append(r)
        todo = await self._not_erased(session, todo)
        keepable = [r for r in todo if r.outcome.text and r.outcome.dropped is None]
        by_hash, newest = await self._stored_rows(session, keepable)
        view = None
        if self.near_dups is not None:
            view = await self.near_dups.view(session, [r.fingerprint for r in keepable if r.fingerprint is not None])
        writes = _Writes()
        now = datetime.now(UTC)
        for r in todo:
            self._decide(r, by_hash, newest, view, writes, now)
        await self._write(session, writes)
        return bool(writes.announced)

    async def _not_erased(self, session: AsyncSession, batch: list[_Raw]) -> list[_Raw]:
        """The records not erased after their copy was ingested (a late delivery is ignored)."""
        record_ids = sorted({r.raw.record_id for r in batch})
        erased: dict[str, list[datetime]] = {}
        for some in chunks(record_ids):
            rows = await session.execute(
                select(erasures.c.record_id, erasures.c.requested_at).where(erasures.c.record_id.in_(some))
            )
            for record_id, requested_at in rows:
                erased.setdefault(record_id, []).append(as_utc(requested_at))
        kept = []
        for r in batch:
            if any(at >= r.raw.ingested_at for at in erased.get(r.raw.record_id, ())):
                log.info("raw record erased after it was ingested: ignored", record_id=r.raw.record_id)
            else:
                kept.append(r)
        return kept

    async def _stored_rows(
        self, session: AsyncSession, batch: list[_Raw]
    ) -> tuple[dict[str, _Row], dict[str, _Row | int]]:
        """The stored cleaned rows with the batch's cleaned texts (by content hash), and the newest
        stored row id of each of its records."""
        t = cleaned_records
        digests = sorted({r.digest for r in batch})
        by_hash: dict[str, _Row] = {}
        for some in chunks(digests):
            rows = await session.execute(
                select(t.c.id, t.c.record_id, t.c.label, t.c.metadata, t.c.content_hash).where(
                    t.c.content_hash.in_(some)
                )
            )
            for row in rows:
                by_hash[row.content_hash] = _Row(row.record_id, row.label, row.metadata, id=row.id)
        record_ids = sorted({r.raw.record_id for r in batch})
        newest: dict[str, _Row | int] = {}
        for some in chunks(record_ids):
            tops = await session.execute(
                select(t.c.record_id, func.max(t.c.id)).where(t.c.record_id.in_(some)).group_by(t.c.record_id)
            )
            newest.update({record_id: int(top) for record_id, top in tops})
        return by_hash, newest

    def _decide(
        self,
        r: _Raw,
        by_hash: dict[str, _Row],
        newest: dict[str, _Row | int],
        view: IndexView | None,
        writes: _Writes,
        now: datetime,
    ) -> None:
        """Keep the record (it is announced on ``cleaned-data``) or drop it with its reason."""
        raw, outcome = r.raw, r.outcome
        if not outcome.text:  # measured: characters left after cleaning
            writes.dropped.append(self._dropped(r, now, "empty", "clean_text", 0.0, 1.0))
            return
        if outcome.dropped is not None:  # the reason is the filter's name (models.DropReason lists them)
            reason = cast(DropReason, outcome.dropped.operator)
            writes.dropped.append(
                self._dropped(r, now, reason, reason, outcome.dropped.measured, outcome.dropped.threshold)
            )
            return
        original = by_hash.get(r.digest)
        if original is not None and original.record_id == raw.record_id:
            # The record's own cleaned text again: an edit (a reviewed label), never a duplicate
            # of itself, unless nothing of it changed.
            top = newest.get(raw.record_id)
            if original is top or (original.id is not None and original.id == top):
                if (original.label, original.metadata) != (raw.label, raw.metadata):
                    self._relabel(r, original, writes)
                    return
            else:  # its text went back to an older one: that row gives way to this, the newest
                self._delete(original, view, writes)
                del by_hash[r.digest]
                original = None
        if original is not None:
            if original.record_id == raw.record_id:  # the same record, sent again unchanged
                self._received_again(r, original, writes)
            writes.dropped.append(self._dropped(r, now, "duplicate", "exact_dedup", 1.0, 1.0, original.record_id))
            return
        if r.fingerprint is not None and view is not None:
            near = view.match(r.fingerprint, raw.record_id)
            if near is not None:
                writes.dropped.append(self._dropped_near_duplicate(r, near, now))
                return
        row = _Row(raw.record_id, raw.label, raw.metadata, values=self._row_values(r, now))
        if r.fingerprint is not None and view is not None:
            row.candidate, row.bands = view.keep(r.fingerprint, raw.record_id)
        writes.kept.append(row)
        by_hash[r.digest] = row
        newest[raw.record_id] = row
        self._announce(r, writes)

    def _row_values(self, r: _Raw, now: datetime) -> dict[str, Any]:
        raw, msg = r.raw, r.item.message
        return {
            "record_id": raw.record_id,
            "raw_event_id": r.event_id,
            "content_hash": r.digest,
            "raw_content_hash": raw.content_hash,
            "source": raw.source,
            "text": r.outcome.text,
            "label": raw.label,
            "metadata": raw.metadata,
            "masked_entities": r.outcome.masked,
            "split": r.split.value,
            "source_partition": msg.partition,
            "source_offset": msg.offset,
            "created_at": now,
            "ingested_at": raw.ingested_at,
            "minhash": r.fingerprint.signature if r.fingerprint is not None else None,
            "recipe_hash": self.recipe_hash,
        }

    def _relabel(self, r: _Raw, row: _Row, writes: _Writes) -> None:
        """A new label (or metadata) for the record's current cleaned text: its row takes them in
        place, keeping its place in the order records were cleaned (a split by time keeps it where
        it was), and the record is announced again with them."""
        raw, msg = r.raw, r.item.message
        change = {
            "raw_event_id": r.event_id,
            "raw_content_hash": raw.content_hash,
            "label": raw.label,
            "metadata": raw.metadata,
            "source_partition": msg.partition,
            "source_offset": msg.offset,
            "recipe_hash": self.recipe_hash,
            "ingested_at": raw.ingested_at,
        }
        row.label, row.metadata = raw.label, raw.metadata
        if row.values is not None:  # kept earlier in this batch: not written yet
            row.values.update(change)
        else:
            assert row.id is not None
            writes.relabels[row.id] = change
        self._announce(r, writes)

    @staticmethod
    def _received_again(r: _Raw, row: _Row, writes: _Writes) -> None:
        """The record's current text and label sent again: its row keeps the newest time it was
        received (an erasure requested in between leaves a copy sent after it)."""
        if row.values is not None:
            row.values["ingested_at"] = max(row.values["ingested_at"], r.raw.ingested_at)
        else:
            assert row.id is not None
            writes.received_again[row.id] = max(writes.received_again.get(row.id, r.raw.ingested_at), r.raw.ingested_at)

    @staticmethod
    def _delete(row: _Row, view: IndexView | None, writes: _Writes) -> None:
        """A cleaned row that gives way to a newer one of its record (its band rows go with it)."""
        if row.values is not None:
            writes.kept.remove(row)
        else:
            assert row.id is not None
            writes.deleted.append(row.id)
            writes.relabels.pop(row.id, None)
            writes.received_again.pop(row.id, None)
        if view is not None:
            view.release(row.candidate, row.id)

    def _announce(self, r: _Raw, writes: _Writes) -> None:
        """The record as cleaned, on ``cleaned-data`` (an outbox row, in the batch's transaction),
        in the record's own trace."""
        raw, outcome = r.raw, r.outcome
        cleaned = CleanedRecordV2(
            record_id=raw.record_id,
            source=raw.source,
            source_id=raw.source_id,
            text=outcome.text,
            content_hash=r.digest,
            raw_content_hash=raw.content_hash,
            split=r.split,
            label=raw.label,
            metadata=raw.metadata,
            masked_entities=outcome.masked,
            sensitivity=outcome.sensitivity.value,
            recipe_hash=self.recipe_hash,
        )
        with trace.use_span(r.item.span, end_on_exit=False):
            _, row = outbox.row(Topic.CLEANED_DATA, cleaned, key=raw.record_id, subject=raw.record_id)
        writes.announced.append(row)

    async def _write(self, session: AsyncSession, writes: _Writes) -> None:
        t = cleaned_records
        for row_id, change in writes.relabels.items():
            await session.execute(update(t).where(t.c.id == row_id).values(**change))
        for row_id, at in writes.received_again.items():
            await session.execute(
                update(t)
                .where(t.c.id == row_id, or_(t.c.ingested_at.is_(None), t.c.ingested_at < at))
                .values(ingested_at=at)
            )
        if writes.deleted:
            await session.execute(delete(t).where(t.c.id.in_(writes.deleted)))
        if writes.kept:
            ids = (
                await session.execute(
                    t.insert().returning(t.c.id, sort_by_parameter_order=True),
                    [cast(dict[str, Any], row.values) for row in writes.kept],
                )
            ).scalars()
            bands = []
            for row, cleaned_id in zip(writes.kept, ids, strict=True):
                row.id = int(cleaned_id)
                if row.candidate is not None:
                    row.candidate.cleaned_id = row.id
                bands += [{"band": b, "band_hash": h, "cleaned_id": row.id} for b, h in row.bands]
            if bands:
                assert self.near_dups is not None
                # In key order: two transactions inserting overlapping band rows wait on each
                # other's rows in the same order, never in a cycle.
                bands.sort(key=lambda row: (row["band"], row["band_hash"]))
                if await self.near_dups.insert_bands(session, bands) < len(bands):
                    raise _BandTaken
        if writes.dropped:
            await session.execute(dropped_records.insert(), writes.dropped)
        await outbox.add_rows(session, writes.announced)

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
        async with self.db.sessions.begin() as session:
            await lock_names(session, [ERASURE_LOCK])  # a cut becoming ready meanwhile sees this one
            now = datetime.now(UTC)
            # The copies stored at ingest before the erasure was requested; a copy sent again after
            # it (an erasure published late, after a 503, can arrive after it) is new data and stays.
            c, d = cleaned_records.c, dropped_records.c
            cleaned = await session.execute(
                delete(cleaned_records).where(c.record_id == record_id, _before(c.ingested_at, erased.requested_at))
            )
            dropped = await session.execute(
                delete(dropped_records).where(d.record_id == record_id, _before(d.ingested_at, erased.requested_at))
            )
            newer = set((await session.execute(select(c.content_hash).where(c.record_id == record_id))).scalars())
            if not newer:  # records dropped as its duplicates stay dropped, but no longer name it
                await session.execute(
                    update(dropped_records).where(d.duplicate_of == record_id).values(duplicate_of=None)
                )
            forgotten = await outbox.forget(
                session,
                topic=Topic.CLEANED_DATA,
                key=record_id,
                keep=lambda value: json.loads(value).get("content_hash") in newer,
            )
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
            await session.execute(
                update(erasures)
                .where(erasures.c.erasure_id == erased.erasure_id)
                .values(dataset_versions=versions, completed_at=datetime.now(UTC))
            )
            await outbox.add(session, Topic.CLEANED_DATA, erased, key=record_id, subject=record_id)
        self.relay.wake()
        log.info("record erased", record_id=record_id, erasure_id=erased.erasure_id, dataset_versions=len(versions))

    def _dropped_near_duplicate(self, r: _Raw, near: NearDuplicate, now: datetime) -> dict[str, Any]:
        assert self.near_dups is not None
        return self._dropped(
            r, now, "near_duplicate", NEAR_DUP_OPERATOR, near.similarity, self.near_dups.threshold, near.record_id
        )

    def _dropped(
        self,
        r: _Raw,
        now: datetime,
        reason: DropReason,
        operator: str,
        measured: float,
        threshold: float,
        duplicate_of: str | None = None,
    ) -> dict[str, Any]:
        """A dropped record's row, with its reason: the operator, what it measured, the threshold,
        and the recipe that held it to that threshold."""
        return {
            "raw_event_id": r.event_id,
            "record_id": r.raw.record_id,
            "reason": reason,
            "duplicate_of": duplicate_of,
            "operator": operator,
            "measured": measured,
            "threshold": threshold,
            "recipe_hash": self.recipe_hash,
            "created_at": now,
            "ingested_at": r.raw.ingested_at,
        }
