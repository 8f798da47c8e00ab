"""A dataset version as Label Studio tasks, for review: read from its Parquet shards, streamed.

Each record is one task, ``{"data": {"text", "record_id", "split"}}``, with its label (when it has
one) as a ``choices`` result, among the task's ``predictions`` (default) or ``annotations``. The
shards are read a row group batch at a time through the artifact store's block reader, and the
JSON array is written a task at a time: nothing holds the version's texts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import pyarrow.parquet as pq

from lmforge.common.artifacts import ArtifactStore

LabelAs = Literal["predictions", "annotations"]


def task(
    record_id: str,
    text: str,
    split: str,
    label: str | None,
    *,
    label_as: LabelAs = "predictions",
    from_name: str = "label",
    to_name: str = "text",
    model_version: str | None = None,
) -> dict[str, Any]:
    """One record as a Label Studio task."""
    out: dict[str, Any] = {"data": {"text": text, "record_id": record_id, "split": split}}
    if label is not None:
        result = [{"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [label]}}]
        entry: dict[str, Any] = {"result": result}
        if label_as == "predictions" and model_version is not None:
            entry["model_version"] = model_version
        out[label_as] = [entry]
    return out


def shard_rows(artifacts: ArtifactStore, uri: str, batch_size: int = 1_000) -> Iterator[dict[str, Any]]:
    """The rows of one shard, ``batch_size`` at a time from the store (never the whole file)."""
    with artifacts.open(artifacts.key_of(uri)) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=["record_id", "text", "label"]):
            yield from batch.to_pylist()


def version_tasks_json(
    artifacts: ArtifactStore,
    manifest: dict[str, Any],
    *,
    label_as: LabelAs = "predictions",
    from_name: str = "label",
    to_name: str = "text",
    batch_size: int = 1_000,
) -> Iterator[bytes]:
    """The version's records as one JSON array of tasks, in pieces: train, then val, then test,
    each in the order its shard keeps (the order the records were cleaned)."""
    model_version = f"{manifest['dataset']}@v{manifest['version']}"
    first = True
    yield b"["
    for split, uri in manifest["shards"].items():
        for row in shard_rows(artifacts, uri, batch_size):
            one = task(
                row["record_id"],
                row["text"],
                split,
                row["label"],
                label_as=label_as,
                from_name=from_name,
                to_name=to_name,
                model_version=model_version,
            )
            yield (b"" if first else b",\n") + json.dumps(one, ensure_ascii=False).encode()
            first = False
    yield b"]\n"
