"""Dataset versions: immutable Parquet shards plus a manifest, announced through the outbox."""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import DatasetVersionCreatedV1, Split, Topic
from lmforge.common.telemetry import inject_context

from .models import ALWAYS_COUNTED, cleaned_records, dataset_versions, dropped_records, outbox
from .near_dup import NearDuplicateIndex
from .pii import PiiType, Sensitivity, sensitivity_of
from .recipe import Recipe, default_recipe


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

    async def create_version(self, dataset: str, sources: list[str] | None = None) -> dict[str, Any]:
        """Snapshot the cleaned records (optionally of some sources) as the dataset's next version.

        A record edited upstream (same source and source id, new text) has several cleaned rows:
        the newest is in the version, the older ones are listed under ``superseded`` in the
        manifest (and stay in the versions cut before the edit).
        """
        t = cleaned_records
        columns = (
            t.c.id,
            t.c.record_id,
            t.c.content_hash,
            t.c.text,
            t.c.label,
            t.c.split,
            t.c.source,
            t.c.source_partition,
            t.c.source_offset,
            t.c.masked_entities,
            t.c.recipe_hash,
        )
        query = select(*columns).order_by(t.c.id)
        if sources:
            query = query.where(t.c.source.in_(sources))
        drops = select(dropped_records.c.reason, func.count()).group_by(dropped_records.c.reason)
        if sources:
            drops = drops.where(
                or_(*(dropped_records.c.record_id.startswith(f"{s}:", autoescape=True) for s in sources))
            )
        async with self.db.sessions() as session:
            every = (await session.execute(query)).all()
            dropped = {reason: 0 for reason in ALWAYS_COUNTED} | {r: n for r, n in (await session.execute(drops)).all()}
        # Rows come in id order, so the last one seen per record is its newest text.
        latest = set({r.record_id: r.id for r in every}.values())
        rows = [r for r in every if r.id in latest]
        superseded = [{"record_id": r.record_id, "content_hash": r.content_hash} for r in every if r.id not in latest]
        if not rows:
            raise EmptyDataset(f"no cleaned records{' for sources ' + ', '.join(sources) if sources else ''}")
        split_counts = {s.value: 0 for s in Split} | dict(Counter(r.split for r in rows))
        version = await self._claim_version(dataset, len(rows), split_counts)
        try:
            manifest = await asyncio.to_thread(
                self._write_version, dataset, version, rows, superseded, split_counts, dropped
            )
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
        manifest_uri = manifest["manifest_uri"]
        async with self.db.sessions.begin() as session:
            await session.execute(
                update(dataset_versions)
                .where(dataset_versions.c.dataset == dataset, dataset_versions.c.version == version)
                .values(state="ready", manifest_uri=manifest_uri)
            )
            await outbox.add(
                session,
                Topic.DATASET_EVENTS,
                DatasetVersionCreatedV1(
                    dataset=dataset,
                    version=version,
                    manifest_uri=manifest_uri,
                    record_count=len(rows),
                    split_counts=split_counts,
                    config_hash=self.config_hash,
                ),
                key=dataset,
            )
        self.relay.wake()
        return {k: manifest[k] for k in ("dataset", "version", "record_count", "split_counts", "config_hash")} | {
            "manifest_uri": manifest_uri
        }

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

    def _write_version(
        self,
        dataset: str,
        version: int,
        rows: list[Any],
        superseded: list[dict[str, str]],
        split_counts: dict[str, int],
        dropped: dict[str, int],
    ) -> dict[str, Any]:
        """Write the shards and the manifest under the claimed version (files nobody else writes)."""
        prefix = f"datasets/{dataset}/v{version}"
        shards = {}
        for split in Split:
            part = [r for r in rows if r.split == split.value]
            table = pa.table(
                {
                    "record_id": [r.record_id for r in part],
                    "content_hash": [r.content_hash for r in part],
                    "text": [r.text for r in part],
                    "label": pa.array([r.label for r in part], type=pa.string()),
                }
            )
            buf = io.BytesIO()
            pq.write_table(table, buf)
            shards[split.value] = self.artifacts.write_bytes(f"{prefix}/{split.value}.parquet", buf.getvalue())
        offsets: dict[str, int] = {}
        for r in rows:
            key = str(r.source_partition)
            offsets[key] = max(offsets.get(key, 0), r.source_offset + 1)
        levels = [_sensitivity(r.masked_entities) for r in rows]
        manifest = {
            "dataset": dataset,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(),
            # The recipe this version was cut under: its hash, and its whole definition.
            "config_hash": self.config_hash,
            "recipe": self.recipe.reference(),
            "pipeline_config": self.recipe.definition(),
            "record_count": len(rows),
            "split_counts": split_counts,
            "sources": sorted({r.source for r in rows}),
            "source_offsets": {Topic.RAW_DATA.value: offsets},
            "shards": shards,
            "records": [
                {
                    "record_id": r.record_id,
                    "content_hash": r.content_hash,
                    "split": r.split,
                    "sensitivity": level.value,
                    "recipe": r.recipe_hash,  # the recipe that cleaned it (null: before recipes)
                }
                for r, level in zip(rows, levels, strict=True)
            ],
            # What was masked in this version's records (entities per PII type), and how many
            # records are at each sensitivity level (the highest level of what was found in them).
            "masked": dict(sum((Counter(r.masked_entities or {}) for r in rows), Counter())),
            "sensitivity": {level.value: 0 for level in Sensitivity} | dict(Counter(level.value for level in levels)),
            # Older versions of records edited upstream: not in this version, kept for lineage.
            "superseded": superseded,
            # Records dropped so far (of these sources), per reason: "duplicate", "near_duplicate",
            # "empty" always, and each recipe filter (by its name) that dropped any.
            "dropped": dropped,
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
