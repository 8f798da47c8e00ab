"""A Label Studio JSON export as records: the pure conversion on export shapes as Label Studio
writes them, and ``POST /records/label-studio`` against a real broker and database."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmforge.common.events import UpstreamRecord
from lmforge.common.settings import KafkaSettings
from lmforge.ingest.label_studio import TaskError, tasks_to_records

from .test_api import _client, _settings

# Two tasks of a text classification project with a span labelling control and a comment box, as
# "Export > JSON" writes them (trimmed of fields the conversion ignores: they stay ignored).
EXPORT: list[dict[str, Any]] = [
    {
        "id": 101,
        "data": {"text": "My order 58213 never arrived, call me on 13812345678", "ticket": "T-1"},
        "annotations": [
            {
                "id": 7,
                "completed_by": 1,
                "was_cancelled": False,
                "ground_truth": False,
                "created_at": "2024-03-01T10:00:00.000000Z",
                "updated_at": "2024-03-01T10:00:00.000000Z",
                "lead_time": 12.5,
                "result": [
                    {
                        "id": "a1",
                        "type": "choices",
                        "value": {"choices": ["shipping"]},
                        "origin": "manual",
                        "to_name": "text",
                        "from_name": "intent",
                    }
                ],
            },
            {
                "id": 9,
                "completed_by": 2,
                "was_cancelled": False,
                "created_at": "2024-03-02T09:00:00.000000Z",
                "updated_at": "2024-03-02T09:30:00.000000Z",
                "result": [
                    {
                        "id": "b1",
                        "type": "choices",
                        "value": {"choices": ["delivery"]},
                        "origin": "manual",
                        "to_name": "text",
                        "from_name": "intent",
                    },
                    {
                        "id": "b2",
                        "type": "labels",
                        "value": {"start": 9, "end": 14, "text": "58213", "labels": ["ORDER"]},
                        "origin": "manual",
                        "to_name": "text",
                        "from_name": "spans",
                    },
                    {
                        "id": "b3",
                        "type": "textarea",
                        "value": {"text": ["asks for a call back"]},
                        "to_name": "text",
                        "from_name": "comment",
                    },
                    {"id": "b4", "type": "rating", "value": {"rating": 4}, "to_name": "text", "from_name": "quality"},
                ],
            },
            {
                "id": 11,
                "was_cancelled": True,
                "created_at": "2024-03-03T09:00:00.000000Z",
                "updated_at": "2024-03-03T09:00:00.000000Z",
                "result": [],
            },
        ],
        "predictions": [{"model_version": "v1", "result": [{"type": "choices", "value": {"choices": ["spam"]}}]}],
        "created_at": "2024-02-28T08:00:00.000000Z",
        "project": 3,
    },
    {"id": 102, "data": {"text": "退款还没到账 请帮忙查一下"}, "annotations": [], "predictions": []},
]


def test_latest_annotation_gives_label_and_the_other_results() -> None:
    first, second = tasks_to_records(EXPORT, "labelled")
    assert first["source_id"] == "101" and first["source"] == "labelled"
    assert first["text"] == EXPORT[0]["data"]["text"]
    assert first["label"] == "delivery", "the latest annotation not cancelled; predictions are not read"
    kept = first["metadata"]["label_studio"]
    assert kept["task_id"] == 101 and kept["annotation_id"] == 9
    assert json.loads(kept["results"]) == [
        {
            "id": "b2",
            "type": "labels",
            "from_name": "spans",
            "to_name": "text",
            "value": {"start": 9, "end": 14, "text": "58213", "labels": ["ORDER"]},
        },
        {
            "id": "b3",
            "type": "textarea",
            "from_name": "comment",
            "to_name": "text",
            "value": {"text": ["asks for a call back"]},
        },
        {"id": "b4", "type": "rating", "from_name": "quality", "to_name": "text", "value": {"rating": 4}},
    ]
    assert second == {"source": "labelled", "source_id": "102", "text": "退款还没到账 请帮忙查一下"}
    for record in (first, second):
        UpstreamRecord.model_validate(record)  # the metadata fits what records may carry


def test_order_without_dates_and_every_annotation_cancelled() -> None:
    task = {
        "id": "abc",
        "data": {"body": "hello there"},
        "annotations": [
            {"result": [{"type": "choices", "value": {"choices": ["a"]}, "from_name": "c", "to_name": "t"}]},
            {"result": [{"type": "choices", "value": {"choices": ["b"]}, "from_name": "c", "to_name": "t"}]},
        ],
    }
    (record,) = tasks_to_records([task], "s", text_field="body")
    assert record["label"] == "b" and record["source_id"] == "abc", "without dates, the last one"
    cancelled = copy.deepcopy(task)
    for a in cancelled["annotations"]:
        a["was_cancelled"] = True
    (record,) = tasks_to_records([cancelled], "s", text_field="body")
    assert "label" not in record and "metadata" not in record


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"id": 1, "data": {"body": "x"}}, "tasks[1].data.text: missing: the text field of the task"),
        ({"id": 1, "data": {"text": 5}}, "tasks[1].data.text: not a string (int)"),
        ({"id": 1, "data": {"text": None}}, "tasks[1].data.text: not a string (NoneType)"),
        ({"id": 1}, "tasks[1].data: missing or not a JSON object"),
        ({"data": {"text": "x"}}, "tasks[1].id: missing: the task id is the record's source_id"),
        ({"id": True, "data": {"text": "x"}}, "tasks[1].id: not a string or an integer"),
        ([1, 2], "tasks[1].<task>: not a JSON object"),
        (
            {
                "id": 1,
                "data": {"text": "x"},
                "annotations": [{"result": [{"type": "choices", "value": {"choices": ["a", "b"]}}]}],
            },
            "tasks[1].annotations[0].result[0].value.choices: 2 choices: a record has exactly one label",
        ),
        (
            {
                "id": 1,
                "data": {"text": "x"},
                "annotations": [
                    {"result": [{"type": "choices", "value": {"choices": ["a"]}}] * 2},
                ],
            },
            "tasks[1].annotations[0]: more than one choices result: a record has one label",
        ),
    ],
)
def test_a_task_that_cannot_be_a_record(task: Any, message: str) -> None:
    with pytest.raises(TaskError) as caught:
        tasks_to_records([EXPORT[1], task], "s")
    assert str(caught.value) == message and caught.value.index == 1


@pytest.fixture
async def client(kafka_settings: KafkaSettings, tmp_path: Path, unique: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = _settings(kafka_settings, tmp_path, unique).model_copy(update={"max_request_bytes": 64 * 1024})
    async for c in _client(settings):
        yield c


async def test_import_stores_every_task_or_none(client: httpx.AsyncClient) -> None:
    bad = [EXPORT[0], {"id": 103, "data": {"text": ["not", "text"]}}]
    r = await client.post("/records/label-studio", params={"source": "labelled"}, json=bad)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["message"] == "tasks[1].data.text: not a string (list)"
    assert (error["index"], error["field"]) == (1, "data.text")
    r = await client.post(
        "/records/label-studio", params={"source": "labelled"}, json=[EXPORT[0], {"id": 4, "data": {"text": "  "}}]
    )
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("tasks[1].data.text: "), r.text
    r = await client.post("/records/label-studio", json=EXPORT)
    assert r.status_code == 422 and "source" in r.text
    r = await client.post("/records/label-studio", params={"source": "labelled"}, json=EXPORT)
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["accepted"], body["duplicates"]) == (2, 0), "the refused batches stored nothing"
    assert [x["record_id"] for x in body["records"]] == ["labelled:101", "labelled:102"]
    r = await client.post("/records/label-studio", params={"source": "labelled"}, json=EXPORT)
    assert (r.json()["accepted"], r.json()["duplicates"]) == (0, 2)
    r = await client.post("/records/label-studio", params={"source": "labelled", "text_field": "ticket"}, json=EXPORT)
    assert (
        r.status_code == 422
        and r.json()["error"]["message"] == "tasks[1].data.ticket: missing: the text field of the task"
    )
