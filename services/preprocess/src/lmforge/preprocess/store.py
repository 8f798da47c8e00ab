"""Dataset versions: immutable Parquet shards plus a manifest, announced through the outbox."""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import func, select

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import DatasetVersionCreatedV1, Split, Topic
from lmforge.common.telemetry import inject_context

from .cleaning import CONFIG_HASH, PIPELINE_CONFIG
from .models import cleaned_records, dataset_versions, dropped_records, outbox


class EmptyDataset(ValueError):
    pass


class DatasetStore:
    def __init__(self, db: Database, artifacts: ArtifactStore, relay: OutboxRelay) -> None:
        self.db = db
        self.artifacts = artifacts
        self.relay = relay

    async def create_version(self, dataset: str, sources: list[str] | None = None) -> dict[str, Any]:
        """Snapshot the cleaned records (optionally of some sources) as the dataset's next version."""
        t = cleaned_records
        query = select(
            t.c.record_id,
            t.c.content_hash,
            t.c.text,
            t.c.label,
            t.c.split,
            t.c.source,
            t.c.source_partition,
            t.c.source_offset,
        ).order_by(t.c.id)
        if sources:
            query = query.where(t.c.source.in_(sources))
        async with self.db.sessions() as session:
            rows = (await session.execute(query)).all()
            version = (
                await session.execute(
                    select(func.coalesce(func.max(dataset_versions.c.version), 0)).where(
                        dataset_versions.c.dataset == dataset
                    )
                )
            ).scalar_one() + 1
        if not rows:
            raise EmptyDataset(f"no cleaned records{' for sources ' + ', '.join(sources) if sources else ''}")
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
        split_counts = {s.value: 0 for s in Split} | dict(Counter(r.split for r in rows))
        manifest = {
            "dataset": dataset,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(),
            "config_hash": CONFIG_HASH,
            "pipeline_config": PIPELINE_CONFIG,
            "record_count": len(rows),
            "split_counts": split_counts,
            "sources": sorted({r.source for r in rows}),
            "source_offsets": {Topic.RAW_DATA.value: offsets},
            "shards": shards,
            "records": [{"record_id": r.record_id, "content_hash": r.content_hash, "split": r.split} for r in rows],
            # The trace that cut this version: training runs link to it (a fan-in, not a parent).
            "trace": dict((k, v.decode()) for k, v in inject_context([])),
        }
        manifest_uri = self.artifacts.write_bytes(f"{prefix}/manifest.json", json.dumps(manifest, indent=1).encode())
        async with self.db.sessions.begin() as session:
            await session.execute(
                dataset_versions.insert().values(
                    dataset=dataset,
                    version=version,
                    manifest_uri=manifest_uri,
                    record_count=len(rows),
                    split_counts=split_counts,
                    config_hash=CONFIG_HASH,
                    created_at=datetime.now(UTC),
                )
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
                    config_hash=CONFIG_HASH,
                ),
                key=dataset,
            )
        self.relay.wake()
        return {k: manifest[k] for k in ("dataset", "version", "record_count", "split_counts", "config_hash")} | {
            "manifest_uri": manifest_uri
        }

    async def list_versions(self, dataset: str | None = None) -> list[dict[str, Any]]:
        t = dataset_versions
        query = select(t).order_by(t.c.dataset, t.c.version)
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
