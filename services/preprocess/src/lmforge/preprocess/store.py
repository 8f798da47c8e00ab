"""Dataset versions: immutable Parquet shards plus a manifest, announced through the outbox."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay, as_utc, lock_names
from lmforge.common.events import DatasetVersionCreatedV1, Split, Topic
from lmforge.common.telemetry import inject_context

from .models import ALWAYS_COUNTED, cleaned_records, dataset_versions, dropped_records, erasures, outbox
from .near_dup import NearDuplicateIndex
from .pii import PiiType, Sensitivity, sensitivity_of
from .recipe import Recipe, default_recipe
from .splits import SplitSpec

# Held by the transaction that applies an erasure here (its rows deleted) and by the one that makes
# a dataset version ready: a version is either ready before the erasure looks for versions to
# rewrite, or checked for the erasure before it is ready.
ERASURE_LOCK = "lmforge-preprocess:erasures"


class _ErasedMeanwhile(Exception):
    """A record of a cut was erased while the cut was written: roll back, take it out, retry."""


class EmptyDataset(ValueError):
    pass


class VersionContention(RuntimeError):
    """Too many concurrent cuts of one dataset: the caller may retry."""


class DatasetStore:
    """``recipe`` is the one the service runs (default: the shipped recipe); its hash is each new
    version's ``config_hash``. Each record in a manifest names the recipe that cleaned it."""

    def __init__(
        self,
        db: Database,
        artifacts: ArtifactStore,
        relay: OutboxRelay,
        near_dups: NearDuplicateIndex | None = None,
        recipe: Recipe | None = None,
    ) -> None:
        self.db = db
        self.artifacts = artifacts
        self.relay = relay
        self.near_dups = near_dups  # named in each manifest: the parameters the records were kept under
        self.recipe = recipe or default_recipe()
        self.config_hash = self.recipe.hash
        self.claim_attempts = 20
        self.read_chunk = 1_000  # rows fetched per round trip while cutting a version
        self.row_group_size = 10_000  # rows per Parquet row group

    async def create_version(
        self, dataset: str, sources: list[str] | None = None, split: SplitSpec | None = None
    ) -> dict[str, Any]:
        """Snapshot the cleaned records (optionally of some sources) as the dataset's next version.

        A record edited upstream (same source and source id, new text) has several cleaned rows:
        the newest is in the version, the older ones are listed under ``superseded`` in the
        manifest (and stay in the versions cut before the edit). ``split`` says which records go
        to train, val and test (default: 8:1:1 by hash, the split each record got when cleaned).

        The cut streams: rows are read in chunks of ``read_chunk`` and each split's Parquet file is
        written in row groups of ``row_group_size`` to a local folder, off the event loop, then
        uploaded with the manifest. Only the manifest's per-record entries are held, not the texts.
        """
        spec = split or SplitSpec()
        started = datetime.now(UTC)
        work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="lmforge-cut-"))
        try:
            cut = await self._write_shards(work, sources, spec)
            version = await self._claim_version(dataset, cut.record_count, cut.split_counts)
            try:
                manifest = await asyncio.to_thread(self._publish, dataset, version, work, cut, spec)
            except BaseException:
                async with self.db.sessions.begin() as session:  # give the number back: nothing was announced
                    await session.execute(
                        delete(dataset_versions).where(
                            dataset_versions.c.dataset == dataset,
                            dataset_versions.c.version == version,
                            dataset_versions.c.state == "pending",
                        )
                    )
                raise
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        manifest_uri = manifest["manifest_uri"]
        in_cut = {r["record_id"] for r in cut.records}
        handled: set[str] = set()
        while True:
            # An erasure applied since this cut read its snapshot may have missed this version (it
            # was not ready): such records leave it before it is ready and announced.
            missed = await self._ready_unless_erased(dataset, version, manifest_uri, manifest, started, in_cut, handled)
            if not missed:
                break
            for erasure_id, record_id in missed:
                keep = await self._remaining_texts({record_id})
                manifest, _ = await asyncio.to_thread(
                    self._remove_from_version, manifest_uri, {record_id}, erasure_id, keep
                )
                handled.add(erasure_id)
        self.relay.wake()
        return {k: manifest[k] for k in ("dataset", "version", "record_count", "split_counts", "config_hash")} | {
            "manifest_uri": manifest_uri
        }

    async def _ready_unless_erased(
        self,
        dataset: str,
        version: int,
        manifest_uri: str,
        manifest: dict[str, Any],
        started: datetime,
        in_cut: set[str],
        handled: set[str],
    ) -> list[tuple[str, str]]:
        """Mark the version ready and announce it, in one transaction, unless an erasure applied
        since ``started`` (and not yet handled) names one of its records: then nothing changes and
        those erasures are returned. The transaction holds the erasure lock (``ERASURE_LOCK``; on
        SQLite the write lock, from its first statement), so an erasure applied after this check
        finds the version ready and rewrites it itself."""
        missed: list[tuple[str, str]] = []
        try:
            async with self.db.sessions.begin() as session:
                await lock_names(session, [ERASURE_LOCK])
                await session.execute(
                    update(dataset_versions)
                    .where(dataset_versions.c.dataset == dataset, dataset_versions.c.version == version)
                    .values(
                        state="ready",
                        manifest_uri=manifest_uri,
                        record_count=manifest["record_count"],
                        split_counts=manifest["split_counts"],
                    )
                )
                late = await session.execute(
                    select(erasures.c.erasure_id, erasures.c.record_id).where(erasures.c.applied_at >= started)
                )
                missed = [(e, r) for e, r in late if r in in_cut and e not in handled]
                if missed:
                    raise _ErasedMeanwhile
                await outbox.add(
                    session,
                    Topic.DATASET_EVENTS,
                    DatasetVersionCreatedV1(
                        dataset=dataset,
                        version=version,
                        manifest_uri=manifest_uri,
                        record_count=manifest["record_count"],
                        split_counts=manifest["split_counts"],
                        config_hash=self.config_hash,
                    ),
                    key=dataset,
                )
        except _ErasedMeanwhile:
            return missed
        return []

    async def remove_from_versions(
        self, record_ids: set[str], erasure_id: str, only: tuple[str, int] | None = None
    ) -> list[dict[str, Any]]:
        """Take these records out of every ready dataset version that holds them (or only the one
        named): their rows leave the Parquet shards, their entries leave the manifest (records and
        superseded), its counts are updated, and the manifest lists the erasure under ``erased``.
        A text of theirs that still has a cleaned row (a copy sent again after the erasure was
        requested) stays. Idempotent. Returns the versions changed, as ``{"dataset", "version"}``.

        Each version is rewritten inside a transaction that first updates its row: the row lock on
        PostgreSQL (SQLite's write lock) keeps two erasures from rewriting one version at once.
        """
        t = dataset_versions
        query = select(t.c.id, t.c.dataset, t.c.version).where(t.c.state == "ready").order_by(t.c.id)
        if only is not None:
            query = query.where(t.c.dataset == only[0], t.c.version == only[1])
        async with self.db.sessions() as session:
            versions = (await session.execute(query)).all()
        keep = await self._remaining_texts(record_ids)
        changed = []
        for version in versions:
            async with self.db.sessions.begin() as session:
                locked = (
                    await session.execute(
                        update(t)
                        .where(t.c.id == version.id)
                        .values(record_count=t.c.record_count)
                        .returning(t.c.manifest_uri)
                    )
                ).scalar_one()
                manifest, rewritten = await asyncio.to_thread(
                    self._remove_from_version, locked, record_ids, erasure_id, keep
                )
                # The counts follow the manifest (also after a crash between its write and this).
                await session.execute(
                    update(t)
                    .where(t.c.id == version.id)
                    .values(record_count=manifest["record_count"], split_counts=manifest["split_counts"])
                )
            if rewritten:
                changed.append({"dataset": version.dataset, "version": version.version})
        return changed

    async def _remaining_texts(self, record_ids: set[str]) -> set[str]:
        """The content hashes of these records' cleaned rows left after an erasure's delete: copies
        sent again after it was requested, which stay."""
        t = cleaned_records
        async with self.db.sessions() as session:
            return set((await session.execute(select(t.c.content_hash).where(t.c.record_id.in_(record_ids)))).scalars())

    def _remove_from_version(
        self, manifest_uri: str, record_ids: set[str], erasure_id: str, keep: set[str]
    ) -> tuple[dict[str, Any], bool]:
        """Rewrite one version without these records' texts, except those in ``keep`` (content
        hashes; file I/O: call it off the event loop). Returns its manifest, and whether it held
        any of them (then the manifest is the new one)."""
        manifest = self.manifest(manifest_uri)

        def erased(entry: dict[str, Any]) -> bool:
            return entry["record_id"] in record_ids and entry["content_hash"] not in keep

        removed = [r for r in manifest["records"] if erased(r)]
        superseded = [r for r in manifest.get("superseded", []) if erased(r)]
        if not removed and not superseded:
            # Already rewritten for this erasure (a redelivery after a crash between the rewrite
            # and the audit entry): still one of the versions it changed.
            return manifest, any(e.get("erasure_id") == erasure_id for e in manifest.get("erased", []))
        ids = pa.array(sorted(record_ids), type=pa.string())
        kept_texts = pa.array(sorted(keep), type=pa.string())
        for split in sorted({r["split"] for r in removed}):
            key = self.artifacts.key_of(manifest["shards"][split])
            with tempfile.TemporaryDirectory(prefix="lmforge-erase-") as tmp:
                local = Path(tmp) / f"{split}.parquet"
                with self.artifacts.open(key) as source:
                    reader = pq.ParquetFile(source)
                    with pq.ParquetWriter(local, reader.schema_arrow) as writer:
                        for batch in reader.iter_batches(batch_size=self.row_group_size):
                            gone = pc.and_(
                                pc.is_in(batch.column("record_id"), value_set=ids),
                                pc.invert(pc.is_in(batch.column("content_hash"), value_set=kept_texts)),
                            )
                            kept = batch.filter(pc.invert(gone))
                            writer.write_table(pa.Table.from_batches([kept]), row_group_size=self.row_group_size)
                self.artifacts.put_file(local, key)
        manifest["records"] = [r for r in manifest["records"] if not erased(r)]
        manifest["superseded"] = [r for r in manifest.get("superseded", []) if not erased(r)]
        manifest["record_count"] = len(manifest["records"])
        for r in removed:
            manifest["split_counts"][r["split"]] -= 1
            if r.get("sensitivity") is not None and "sensitivity" in manifest:
                manifest["sensitivity"][r["sensitivity"]] -= 1
            for pii_type, n in r.get("masked", {}).items():
                if pii_type in manifest.get("masked", {}):
                    manifest["masked"][pii_type] -= n
        if "masked" in manifest:
            manifest["masked"] = {t: n for t, n in manifest["masked"].items() if n > 0}
        # Which erasures took records out of this version after it was cut (their audit entries
        # name this version); the entries themselves, ids and content hashes, are gone.
        manifest.setdefault("erased", []).append(
            {"erasure_id": erasure_id, "records": len(removed), "superseded": len(superseded)}
        )
        self.artifacts.write_bytes(self.artifacts.key_of(manifest_uri), json.dumps(manifest, indent=1).encode())
        return manifest, True

    async def _write_shards(self, work: Path, sources: list[str] | None, spec: SplitSpec) -> _Cut:
        """Read the version's rows in id order, in chunks, and write them to ``work/<split>.parquet``.

        One snapshot: the rows up to the highest id seen first (on SQLite, where writers are
        serialised, no row below it commits later), read in one REPEATABLE READ transaction on
        PostgreSQL. The newest row per record id is found by the database (``max(id)`` per
        record id), so older texts are never loaded.
        """
        t = cleaned_records
        scope = [t.c.source.in_(sources)] if sources else []
        drops = select(dropped_records.c.reason, func.count()).group_by(dropped_records.c.reason)
        if sources:
            drops = drops.where(
                or_(*(dropped_records.c.record_id.startswith(f"{s}:", autoescape=True) for s in sources))
            )
        empty = EmptyDataset(f"no cleaned records{' for sources ' + ', '.join(sources) if sources else ''}")
        async with self.db.sessions() as session:
            if self.db.dialect == "postgresql":
                await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            highest = (await session.execute(select(func.max(t.c.id)).where(*scope))).scalar_one()
            if highest is None:
                raise empty
            scope.append(t.c.id <= highest)
            latest = select(func.max(t.c.id)).where(*scope).group_by(t.c.record_id)
            count = (await session.execute(select(func.count()).select_from(latest.subquery()))).scalar_one()
            dropped = {reason: 0 for reason in ALWAYS_COUNTED} | {r: n for r, n in (await session.execute(drops)).all()}
            superseded = [
                {"record_id": r.record_id, "content_hash": r.content_hash}
                for r in await session.execute(
                    select(t.c.record_id, t.c.content_hash).where(*scope, t.c.id.not_in(latest)).order_by(t.c.id)
                )
            ]
            cut = _Cut(dropped=dropped, superseded=superseded)
            assign = spec.assigner(count)
            query = (
                select(
                    t.c.record_id,
                    t.c.content_hash,
                    t.c.text,
                    t.c.label,
                    t.c.source,
                    t.c.source_partition,
                    t.c.source_offset,
                    t.c.masked_entities,
                    t.c.recipe_hash,
                )
                .where(*scope, t.c.id.in_(latest))
                .order_by(t.c.id)
                .execution_options(yield_per=self.read_chunk)
            )
            # One thread does all of the writer's work, in order: if the cut is cancelled while a
            # write runs, the close queued behind it waits for it, and the close is awaited before
            # the caller removes the folder, so no write is left running into a removed folder.
            loop = asyncio.get_running_loop()
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmforge-cut") as thread:
                writer = await loop.run_in_executor(thread, _ShardWriter, work, self.row_group_size)
                try:
                    result = await session.stream(query)
                    async for chunk in result.partitions():
                        batch: dict[Split, list[tuple[str, str, str, str | None]]] = {s: [] for s in Split}
                        for r in chunk:
                            split = assign(cut.record_count, r.record_id)
                            cut.add(r, split)
                            batch[split].append((r.record_id, r.content_hash, r.text, r.label))
                        await loop.run_in_executor(thread, writer.write, batch)
                finally:
                    await asyncio.shield(loop.run_in_executor(thread, writer.close))
        if not cut.record_count:
            raise empty
        return cut

    async def _claim_version(self, dataset: str, record_count: int, split_counts: dict[str, int]) -> int:
        """Take the dataset's next version number for this cut: a unique row, committed before
        any file is written. A concurrent cut that took the same number first makes this try the next."""
        for _ in range(self.claim_attempts):
            try:
                async with self.db.sessions.begin() as session:
                    version = (
                        await session.execute(
                            select(func.coalesce(func.max(dataset_versions.c.version), 0)).where(
                                dataset_versions.c.dataset == dataset
                            )
                        )
                    ).scalar_one() + 1
                    await session.execute(
                        dataset_versions.insert().values(
                            dataset=dataset,
                            version=version,
                            state="pending",
                            record_count=record_count,
                            split_counts=split_counts,
                            config_hash=self.config_hash,
                            created_at=datetime.now(UTC),
                        )
                    )
                return int(version)
            except IntegrityError:
                continue  # another cut claimed this number between our read and our insert
        raise VersionContention(f"dataset {dataset}: no version number free after {self.claim_attempts} tries")

    def _publish(self, dataset: str, version: int, work: Path, cut: _Cut, spec: SplitSpec) -> dict[str, Any]:
        """Upload the shards and write the manifest under the claimed version (files nobody else writes)."""
        prefix = f"datasets/{dataset}/v{version}"
        self.artifacts.put_dir(work, prefix)
        shards = {s.value: self.artifacts.uri(f"{prefix}/{s.value}.parquet") for s in Split}
        manifest = {
            "dataset": dataset,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(),
            # The recipe this version was cut under: its hash, and its whole definition.
            "config_hash": self.config_hash,
            "recipe": self.recipe.reference(),
            "pipeline_config": self.recipe.definition(),
            "record_count": cut.record_count,
            "split_counts": cut.split_counts,
            # How the records were split: ratios (train, val, test) and by "hash" or "time".
            "split": spec.manifest(),
            "sources": sorted(cut.sources),
            "source_offsets": {Topic.RAW_DATA.value: cut.offsets},
            "shards": shards,
            "records": cut.records,
            # What was masked in this version's records (entities per PII type), and how many
            # records are at each sensitivity level (the highest level of what was found in them).
            "masked": dict(+cut.masked),
            "sensitivity": {level.value: 0 for level in Sensitivity} | dict(cut.sensitivity),
            # Older versions of records edited upstream: not in this version, kept for lineage.
            "superseded": cut.superseded,
            # Records dropped so far (of these sources), per reason: "duplicate", "near_duplicate",
            # "empty" always, and each recipe filter (by its name) that dropped any.
            "dropped": cut.dropped,
            "near_dup": self.near_dups.parameters() if self.near_dups is not None else None,
            # The trace that cut this version: training runs link to it (a fan-in, not a parent).
            "trace": dict((k, v.decode()) for k, v in inject_context([])),
        }
        uri = self.artifacts.write_bytes(f"{prefix}/manifest.json", json.dumps(manifest, indent=1).encode())
        return manifest | {"manifest_uri": uri}

    async def list_versions(self, dataset: str | None = None) -> list[dict[str, Any]]:
        t = dataset_versions
        query = select(t).where(t.c.state == "ready").order_by(t.c.dataset, t.c.version)
        if dataset:
            query = query.where(t.c.dataset == dataset)
        async with self.db.sessions() as session:
            rows = (await session.execute(query)).mappings().all()
        return [
            {k: row[k] for k in ("dataset", "version", "manifest_uri", "record_count", "split_counts", "config_hash")}
            | {"created_at": row["created_at"].isoformat()}
            for row in rows
        ]

    def manifest(self, manifest_uri: str) -> dict[str, Any]:
        return json.loads(self.artifacts.read_bytes(self.artifacts.key_of(manifest_uri)))  # type: ignore[no-any-return]

    async def erasure(self, erasure_id: str) -> dict[str, Any] | None:
        """An applied erasure's audit entry (``models.erasures``), or None: also while it is being
        applied (its rows deleted, the dataset versions not yet rewritten). ``applied_at`` is when
        it was completed."""
        t = erasures
        async with self.db.sessions() as session:
            row = (
                await session.execute(select(t).where(t.c.erasure_id == erasure_id, t.c.completed_at.is_not(None)))
            ).first()
        if row is None:
            return None
        entry = dict(row._mapping)
        return entry | {"requested_at": as_utc(entry["requested_at"]), "applied_at": as_utc(entry["completed_at"])}

    async def stats(self) -> dict[str, Any]:
        async with self.db.sessions() as session:
            cleaned = (await session.execute(select(func.count()).select_from(cleaned_records))).scalar_one()
            dropped = (
                await session.execute(select(dropped_records.c.reason, func.count()).group_by(dropped_records.c.reason))
            ).all()
        return {"cleaned": cleaned, "dropped": {reason: n for reason, n in dropped}}

    async def dropped(
        self, reason: str | None = None, record_id: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Dropped records, oldest first, with the operator, measured value and threshold."""
        t = dropped_records
        query = select(t).order_by(t.c.created_at, t.c.raw_event_id).limit(limit).offset(offset)
        if reason:
            query = query.where(t.c.reason == reason)
        if record_id:
            query = query.where(t.c.record_id == record_id)
        async with self.db.sessions() as session:
            rows = (await session.execute(query)).mappings().all()
        return [dict(row) for row in rows]


def _sensitivity(masked_entities: dict[str, int] | None) -> Sensitivity:
    """A record's sensitivity from the entities masked in it (types this version does not know,
    from records cleaned by an older pipeline, count as nothing found)."""
    return sensitivity_of(t for t, n in (masked_entities or {}).items() if n and t in _PII_TYPES)


_PII_TYPES = frozenset(t.value for t in PiiType)


_SHARD_SCHEMA = pa.schema(
    [("record_id", pa.string()), ("content_hash", pa.string()), ("text", pa.string()), ("label", pa.string())]
)


class _ShardWriter:
    """One Parquet file per split, written in row groups of ``row_group_size`` rows: rows wait in a
    split's buffer until a row group is full, so at most one row group per split is in memory.
    Its methods do file I/O and encoding: call them off the event loop."""

    def __init__(self, folder: Path, row_group_size: int) -> None:
        self.row_group_size = row_group_size
        self.pending: dict[Split, list[tuple[str, str, str, str | None]]] = {s: [] for s in Split}
        self.writers: dict[Split, pq.ParquetWriter] = {}
        for s in Split:
            self.writers[s] = pq.ParquetWriter(folder / f"{s.value}.parquet", _SHARD_SCHEMA)

    def write(self, batch: dict[Split, list[tuple[str, str, str, str | None]]]) -> None:
        for split, rows in batch.items():
            pending = self.pending[split]
            pending.extend(rows)
            while len(pending) >= self.row_group_size:
                self._flush(split, pending[: self.row_group_size])
                del pending[: self.row_group_size]

    def close(self) -> None:
        try:
            for split, pending in self.pending.items():
                if pending:
                    self._flush(split, pending)
                    pending.clear()
        finally:
            for writer in self.writers.values():
                writer.close()

    def _flush(self, split: Split, rows: list[tuple[str, str, str, str | None]]) -> None:
        columns = list(zip(*rows, strict=True))
        table = pa.Table.from_arrays([pa.array(c, type=pa.string()) for c in columns], schema=_SHARD_SCHEMA)
        self.writers[split].write_table(table, row_group_size=self.row_group_size)


@dataclass
class _Cut:
    """What a cut's manifest says besides the shards: per-record entries (ids, not texts) and totals."""

    dropped: dict[str, int]
    superseded: list[dict[str, str]]
    records: list[dict[str, Any]] = field(default_factory=list)
    split_counts: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in Split})
    sources: set[str] = field(default_factory=set)
    offsets: dict[str, int] = field(default_factory=dict)
    masked: Counter[str] = field(default_factory=Counter)
    sensitivity: Counter[str] = field(default_factory=Counter)

    @property
    def record_count(self) -> int:
        return len(self.records)

    def add(self, row: Any, split: Split) -> None:
        level = _sensitivity(row.masked_entities)
        entry = {
            "record_id": row.record_id,
            "content_hash": row.content_hash,
            "split": split.value,
            "sensitivity": level.value,
            "recipe": row.recipe_hash,  # the recipe that cleaned it (null: before recipes)
        }
        masked = {t: n for t, n in (row.masked_entities or {}).items() if n}
        if masked:  # what was masked in it, so an erasure can take it out of the version's totals
            entry["masked"] = masked
        self.records.append(entry)
        self.split_counts[split.value] += 1
        self.sources.add(row.source)
        key = str(row.source_partition)
        self.offsets[key] = max(self.offsets.get(key, 0), row.source_offset + 1)
        self.masked.update(row.masked_entities or {})
        self.sensitivity[level.value] += 1
