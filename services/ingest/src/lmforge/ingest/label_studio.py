"""A Label Studio JSON export as records: one pure function, ``tasks_to_records``.

Each task is ``{"id", "data": {<text field>: ...}, "annotations": [{"result": [...], ...}]}``.
The record's ``source_id`` is the task id, its ``text`` is ``data[<text field>]``, its ``label`` the
one choice of the ``choices`` result of the task's latest annotation that was not cancelled, and
the other results of that annotation (spans, text areas, ratings...) are kept in its metadata under
``label_studio`` (docs/curation.md, "Labels and Label Studio"). Predictions are not read: they are
a model's, not a reviewer's.
"""

from __future__ import annotations

import json
from typing import Any

METADATA_KEY = "label_studio"
_KEPT = ("id", "type", "from_name", "to_name", "value")  # of each result: what says what was annotated


class TaskError(ValueError):
    """A task that cannot be a record: ``index`` in the export, ``field`` the path inside the task."""

    def __init__(self, index: int, field: str, message: str) -> None:
        super().__init__(f"tasks[{index}].{field}: {message}")
        self.index, self.field = index, field


def _latest(annotations: list[Any]) -> tuple[int, dict[str, Any]] | None:
    """The latest annotation not cancelled (by ``updated_at``, else ``created_at``, else its place)."""
    live = [(i, a) for i, a in enumerate(annotations) if isinstance(a, dict) and not a.get("was_cancelled")]
    if not live:
        return None

    def when(item: tuple[int, dict[str, Any]]) -> tuple[str, int]:
        i, a = item
        stamp = a.get("updated_at") or a.get("created_at") or ""
        return (stamp if isinstance(stamp, str) else "", i)

    return max(live, key=when)


def _label(index: int, where: str, results: list[tuple[int, dict[str, Any]]]) -> str | None:
    choices = [(k, r) for k, r in results if r.get("type") == "choices"]
    if not choices:
        return None
    if len(choices) > 1:
        raise TaskError(index, where, "more than one choices result: a record has one label")
    k, result = choices[0]
    value = result.get("value")
    chosen = value.get("choices") if isinstance(value, dict) else None
    field = f"{where}.result[{k}].value.choices"
    if not isinstance(chosen, list) or not all(isinstance(c, str) for c in chosen):
        raise TaskError(index, field, "not a list of strings")
    if len(chosen) != 1:
        raise TaskError(index, field, f"{len(chosen)} choices: a record has exactly one label")
    return chosen[0]


def task_to_record(index: int, task: Any, source: str, text_field: str = "text") -> dict[str, Any]:
    """One task as an upstream record (a dict for ``UpstreamRecord``), or ``TaskError``."""
    if not isinstance(task, dict):
        raise TaskError(index, "<task>", "not a JSON object")
    task_id = task.get("id")
    if task_id is None:
        raise TaskError(index, "id", "missing: the task id is the record's source_id")
    if isinstance(task_id, bool) or not isinstance(task_id, int | str):
        raise TaskError(index, "id", "not a string or an integer")
    data = task.get("data")
    if not isinstance(data, dict):
        raise TaskError(index, "data", "missing or not a JSON object")
    if text_field not in data:
        raise TaskError(index, f"data.{text_field}", "missing: the text field of the task")
    text = data[text_field]
    if not isinstance(text, str):
        raise TaskError(index, f"data.{text_field}", f"not a string ({type(text).__name__})")
    annotations = task.get("annotations", [])
    if annotations is None:
        annotations = []
    if not isinstance(annotations, list):
        raise TaskError(index, "annotations", "not a list")
    record: dict[str, Any] = {"source": source, "source_id": str(task_id), "text": text}
    latest = _latest(annotations)
    if latest is None:
        return record
    j, annotation = latest
    where = f"annotations[{j}]"
    raw_results = annotation.get("result", [])
    if raw_results is None:
        raw_results = []
    if not isinstance(raw_results, list):
        raise TaskError(index, f"{where}.result", "not a list")
    results = []
    for k, r in enumerate(raw_results):
        if not isinstance(r, dict):
            raise TaskError(index, f"{where}.result[{k}]", "not a JSON object")
        results.append((k, r))
    label = _label(index, where, results)
    if label is not None:
        record["label"] = label
    others = [{key: r[key] for key in _KEPT if key in r} for _, r in results if r.get("type") != "choices"]
    # Record metadata holds one level of nesting, so the results are kept as one JSON string.
    record["metadata"] = {
        METADATA_KEY: {
            "task_id": task_id,
            "annotation_id": annotation.get("id") if isinstance(annotation.get("id"), int | str) else None,
            "results": json.dumps(others, ensure_ascii=False, separators=(",", ":")),
        }
    }
    return record


def tasks_to_records(tasks: list[Any], source: str, text_field: str = "text") -> list[dict[str, Any]]:
    """Every task as a record, in order; the first task that cannot be one raises ``TaskError``."""
    return [task_to_record(i, task, source, text_field) for i, task in enumerate(tasks)]
