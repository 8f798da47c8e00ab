"""Write a dataset version the way preprocess writes one, without running the data path.

Parquet shards per split and a manifest in the artifact store: what a training spec's
``dataset_manifest_uri`` points at. The trainer tests and the trainer benchmark use it.
"""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.common.artifacts import ArtifactStore

Row = str | tuple[str, str | None]


def write_dataset(store: ArtifactStore, name: str, splits: dict[str, list[Row]], version: int = 1) -> str:
    """Write ``splits`` (texts, or ``(text, label)``) as a dataset version; returns the manifest URI."""
    shards = {}
    for split, rows in splits.items():
        texts = [r if isinstance(r, str) else r[0] for r in rows]
        labels = [None if isinstance(r, str) else r[1] for r in rows]
        table = pa.table(
            {
                "record_id": [f"{name}:{split}:{i}" for i in range(len(rows))],
                "content_hash": [hashlib.sha256(t.encode()).hexdigest() for t in texts],
                "text": texts,
                "label": pa.array(labels, type=pa.string()),
            }
        )
        buf = io.BytesIO()
        pq.write_table(table, buf)
        shards[split] = store.write_bytes(f"datasets/{name}/v{version}/{split}.parquet", buf.getvalue())
    manifest = {"dataset": name, "version": version, "shards": shards, "trace": {}}
    return store.write_bytes(f"datasets/{name}/v{version}/manifest.json", json.dumps(manifest).encode())
