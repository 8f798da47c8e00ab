"""A Label Studio JSON export as records: ``tasks_to_records``, a pure function of validated tasks.

The tasks are ``lmforge.common.label_studio.ImportTask`` (what the published schema allows; the
route validates them first). Each task is one record (docs/curation.md, "Labels and Label Studio"):

- ``source`` and ``source_id``: the import's source and the task ``id``.
- ``text``: ``data.text``, as it is.
- ``label``: the one choice of the ``choices`` result of the latest annotation not cancelled
  (none without such an annotation, or without a ``choices`` result in it). Predictions are not
  read: they are a model's, not a reviewer's.
- ``metadata.label_studio``: the task and annotation ids and what is kept of that annotation's
  other results (``kept_result``): never their text, which can hold the personal data that
  preprocess masks in the record's text but not in its metadata.

A task from lmforge's own export names its record in ``data.record_id`` (``<source>:<source id>``):
it is a review of that record, and the record it makes is an edit of the stored one (``stored``):
the same source, source id, raw text, timestamp and metadata, with the label of its latest
annotation (and that annotation's ``metadata.label_studio``). Without an annotation it changes
nothing: the stored label stays. The task's ``data.text`` is the cleaned, masked text of the
export, never the record's own. A record ingest does not hold is made from the task as it is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lmforge.common.label_studio import ChoicesResult, ImportTask, OtherResult, kept_result, latest_annotation

METADATA_KEY = "label_studio"


@dataclass(frozen=True)
class StoredRecord:
    """The latest stored revision of a record, as a re-imported task edits it."""

    text: str
    label: str | None
    metadata: dict[str, Any]
    timestamp: datetime | None


def _id(value: Any) -> int | str | None:
    """An annotation's id as metadata can hold it: an integer or a short string, else none."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) <= 200 and value.isprintable():
        return value
    return None


def _review(task: ImportTask) -> tuple[bool, str | None, dict[str, Any]]:
    """Whether the task has an annotation to read, the label it gives and the metadata it adds."""
    latest = latest_annotation(task)
    if latest is None:
        return False, None, {}
    _, annotation = latest
    choices = [r for r in annotation.result if isinstance(r, ChoicesResult)]
    others = [kept_result(r) for r in annotation.result if isinstance(r, OtherResult)]
    # Record metadata holds one level of nesting, so the results are kept as one JSON string.
    kept = {
        "task_id": task.id,
        "annotation_id": _id(annotation.id),
        "results": json.dumps(others, ensure_ascii=False, separators=(",", ":")),
    }
    return True, choices[0].value.choices[0] if choices else None, {METADATA_KEY: kept}


def task_to_record(task: ImportTask, source: str, stored: Mapping[str, StoredRecord] | None = None) -> dict[str, Any]:
    """One task as an upstream record (a dict for ``UpstreamRecord``). ``stored``: the latest
    revision of the records that tasks from lmforge's export name, by record id."""
    reviewed, label, metadata = _review(task)
    record_id = task.data.record_id
    if record_id is not None:
        source, source_id = record_id.split(":", 1)
        current = (stored or {}).get(record_id)
        if current is not None:
            edit: dict[str, Any] = {"source": source, "source_id": source_id, "text": current.text}
            edit["label"] = label if reviewed else current.label
            edit["metadata"] = current.metadata | metadata
            if current.timestamp is not None:
                stamp = current.timestamp
                edit["timestamp"] = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)  # SQLite: naive UTC
            return edit
    else:
        source_id = str(task.id)
    record: dict[str, Any] = {"source": source, "source_id": source_id, "text": task.data.text}
    if label is not None:
        record["label"] = label
    if reviewed:
        record["metadata"] = metadata
    return record


def tasks_to_records(
    tasks: list[ImportTask], source: str, stored: Mapping[str, StoredRecord] | None = None
) -> list[dict[str, Any]]:
    """Every task as a record, in order."""
    return [task_to_record(task, source, stored) for task in tasks]
