"""A Label Studio JSON export as records: the published task schema and the validation agree, the
conversion on export shapes as Label Studio writes them keeps no text of a result, and
``POST /records/label-studio`` against a real broker and database stores every task or none, and
takes a reviewed label for the same text as an edit."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from lmforge.common.events import UpstreamRecord
from lmforge.common.label_studio import IMPORT_TASKS, ImportTask, import_tasks_schema, label_studio_body
from lmforge.common.settings import KafkaSettings
from lmforge.ingest.label_studio import tasks_to_records
from lmforge.ingest.models import raw_records

from .test_api import _client, _settings

PHONE, EMAIL, OTHER_EMAIL = "13812345678", "jane.doe@example.com", "li.wei@example.org"

# Two tasks of a text classification project with a span labelling control, a comment box, a rating
# and an HTML view, as "Export > JSON" writes them (trimmed of fields the conversion ignores: they
# stay ignored). The span, the comment and the HTML hold personal data.
EXPORT: list[dict[str, Any]] = [
    {
        "id": 101,
        "data": {"text": f"My order 58213 never arrived, call me on {PHONE} or {EMAIL}", "ticket": "T-1"},
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
                        "value": {"start": 41, "end": 52, "text": PHONE, "labels": ["PHONE"]},
                        "origin": "manual",
                        "to_name": "text",
                        "from_name": "spans",
                        "meta": {"text": [f"the customer's mobile, {PHONE}"]},
                    },
                    {
                        "id": "b3",
                        "type": "textarea",
                        "value": {"text": [f"asks for a call back on {PHONE}, copy {OTHER_EMAIL}"]},
                        "to_name": "text",
                        "from_name": "comment",
                    },
                    {"id": "b4", "type": "rating", "value": {"rating": 4}, "to_name": "text", "from_name": "quality"},
                    {
                        "id": "b5",
                        "type": "hypertextlabels",
                        "value": {
                            "start": "/p[1]/text()[1]",
                            "end": "/p[1]/text()[1]",
                            "startOffset": 3,
                            "endOffset": 23,
                            "text": EMAIL,
                            "html": f"<b>{EMAIL}</b>",
                            "htmlfragment": f"<span>{EMAIL}</span>",
                            "htmllabels": ["EMAIL"],
                        },
                        "to_name": "page",
                        "from_name": "html_spans",
                    },
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


def _records(tasks: list[dict[str, Any]], source: str = "labelled") -> list[dict[str, Any]]:
    return tasks_to_records(IMPORT_TASKS.validate_python(tasks), source)


def test_latest_annotation_gives_the_label_and_no_text_of_its_results() -> None:
    first, second = _records(EXPORT)
    assert first["source_id"] == "101" and first["source"] == "labelled"
    assert first["text"] == EXPORT[0]["data"]["text"]
    assert first["label"] == "delivery", "the latest annotation not cancelled; predictions are not read"
    kept = first["metadata"]["label_studio"]
    assert kept["task_id"] == 101 and kept["annotation_id"] == 9
    assert json.loads(kept["results"]) == [
        {
            "type": "labels",
            "from_name": "spans",
            "to_name": "text",
            "value": {"start": 41, "end": 52, "labels": ["PHONE"]},
        },
        {"type": "textarea", "from_name": "comment", "to_name": "text", "value": {}},
        {"type": "rating", "from_name": "quality", "to_name": "text", "value": {"rating": 4}},
        {
            "type": "hypertextlabels",
            "from_name": "html_spans",
            "to_name": "page",
            "value": {"startOffset": 3, "endOffset": 23, "htmllabels": ["EMAIL"]},
        },
    ]
    for value in (PHONE, EMAIL, OTHER_EMAIL, "call back", "mobile"):
        assert value not in json.dumps(first["metadata"], ensure_ascii=False), value
    assert second == {"source": "labelled", "source_id": "102", "text": "退款还没到账 请帮忙查一下"}
    for record in (first, second):
        UpstreamRecord.model_validate(record)  # the metadata fits what records may carry


def test_order_without_dates_and_every_annotation_cancelled() -> None:
    task = {
        "id": "abc",
        "data": {"text": "hello there"},
        "annotations": [
            {"result": [{"type": "choices", "value": {"choices": ["a"]}, "from_name": "c", "to_name": "t"}]},
            {"result": [{"type": "choices", "value": {"choices": ["b"]}, "from_name": "c", "to_name": "t"}]},
        ],
    }
    (record,) = _records([task], "s")
    assert record["label"] == "b" and record["source_id"] == "abc", "without dates, the last one"
    cancelled = copy.deepcopy(task)
    for a in cancelled["annotations"]:
        a["was_cancelled"] = True
    (record,) = _records([cancelled], "s")
    assert "label" not in record and "metadata" not in record
    (record,) = _records([{**task, "annotations": [{"result": []}]}], "s")
    assert "label" not in record and json.loads(record["metadata"]["label_studio"]["results"]) == []


def test_a_task_from_an_lmforge_export_is_its_record() -> None:
    task = {"id": 5, "data": {"text": "hello", "record_id": "crm:T-1:a", "split": "train"}}
    (record,) = _records([task], "reviewed")
    assert (record["source"], record["source_id"]) == ("crm", "T-1:a"), "the source named, the first ':' splits"
    (record,) = _records([{**task, "data": {"text": "hello", "record_id": None}}], "reviewed")
    assert (record["source"], record["source_id"]) == ("reviewed", "5")


def _task(**changes: Any) -> dict[str, Any]:
    task: dict[str, Any] = {"id": 1, "data": {"text": "hello"}}
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = task
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return task


def _annotated(*results: Any, **annotation: Any) -> dict[str, Any]:
    return _task(annotations=[{"result": list(results), **annotation}])


CHOICE = {"type": "choices", "value": {"choices": ["refund"]}, "from_name": "intent", "to_name": "text"}
ACCEPTED = [
    [_task()],
    [_task(id="T-1"), _task(id=-5), _task(id=7.0), _task(id=2**63 - 1), _task(id=" x ")],
    [_task(data__record_id="crm:T-1"), _task(data__record_id=None), _task(data__record_id="a:" + "x" * 200)],
    [_task(id="\ufeff", data__text="\ufeff", data__record_id="crm:\ufeff")],  # not whitespace to str.isspace
    [_task(data__ticket=[1, {"a": None}], meta={"x": 1}, predictions="ignored", drafts=None)],
    [_task(annotations=[]), _task(annotations=[{}]), _annotated(), _annotated(CHOICE, was_cancelled=True)],
    [_annotated(CHOICE, {"type": "labels", "value": {"text": "\x00"}}, {"type": "x", "value": 3}, {"type": ""})],
    [_annotated({**CHOICE, "value": {"choices": ["x" * 200]}, "extra": [1]}, id={"any": "thing"}, updated_at=None)],
    [_annotated({**CHOICE, "value": {"choices": [""]}}, created_at="not a date")],
    [_task()] * 1000,
]
REFUSED = [
    [],
    [_task()] * 1001,
    [{"data": {"text": "hello"}}],
    [_task(id=True)],
    [_task(id=1.5)],
    [_task(id=2**63)],
    [_task(id=None)],
    [_task(id="")],
    [_task(id=" \t")],
    [_task(id="\u0085\u3000")],
    [_task(id="x" * 201)],
    [_task(id=[1])],
    [{"id": 1}],
    [{"id": 1, "data": "hello"}],
    [{"id": 1, "data": {"body": "hello"}}],
    [_task(data__text=5)],
    [_task(data__text=None)],
    [_task(data__text=" \n ")],
    [_task(data__text="a\x00b")],
    [_task(data__text="x" * 100_001)],
    [_task(data__record_id="Crm:T-1")],
    [_task(data__record_id="crm:")],
    [_task(data__record_id="crm:  ")],
    [_task(data__record_id="crm:\u0085")],
    [_task(data__text="\u0085\u2028")],
    [_task(data__record_id="crm")],
    [_task(data__record_id="crm:" + "x" * 201)],
    [_task(data__record_id="crm:a\x00")],
    [_task(data__record_id=5)],
    [_task(annotations=None)],
    [_task(annotations={"result": []})],
    [_task(annotations=[{"result": None}])],
    [_task(annotations=["x"])],
    [_annotated("x")],
    [_annotated({"value": {}})],
    [_annotated({"type": 5})],
    [_annotated({"type": None})],
    [_annotated({"type": "choices"})],
    [_annotated({"type": "choices", "value": {}})],
    [_annotated({"type": "choices", "value": {"choices": []}})],
    [_annotated({"type": "choices", "value": {"choices": ["a", "b"]}})],
    [_annotated({"type": "choices", "value": {"choices": [5]}})],
    [_annotated({"type": "choices", "value": {"choices": ["x" * 201]}})],
    [_annotated({"type": "choices", "value": {"choices": ["a\x00"]}})],
    [_annotated({"type": "choices", "value": {"choices": "a"}})],
    [_annotated(CHOICE, CHOICE)],
    [_annotated(CHOICE, {"type": "labels"}, {**CHOICE, "value": {"choices": ["other"]}}, was_cancelled=True)],
    [_annotated(CHOICE, was_cancelled="true")],
    [_annotated(CHOICE, was_cancelled=None)],
    [_annotated(CHOICE, updated_at=5)],
]


def _accepted(body: Any) -> bool:
    try:
        IMPORT_TASKS.validate_python(body)
    except ValidationError:
        return False
    return 1 <= len(body) <= 1000


@pytest.mark.parametrize(("body", "expected"), [(b, True) for b in ACCEPTED] + [(b, False) for b in REFUSED])
def test_the_published_schema_is_what_is_accepted(body: Any, expected: bool) -> None:
    """The JSON Schema (judged as schemathesis judges it) and the validation agree, both ways."""
    valid = jsonschema_rs.validator_for(import_tasks_schema()).is_valid(body)
    assert valid == _accepted(body) == expected, json.dumps(body)[:300]


@pytest.fixture
async def client(kafka_settings: KafkaSettings, tmp_path: Path, unique: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = _settings(kafka_settings, tmp_path, unique).model_copy(update={"max_request_bytes": 64 * 1024})
    async for c in _client(settings):
        yield c


async def _stored(client: httpx.AsyncClient, record_id: str) -> list[Any]:
    db = client._transport.app.state.store.db  # type: ignore[attr-defined]
    async with db.sessions() as session:
        query = select(raw_records).where(raw_records.c.record_id == record_id).order_by(raw_records.c.id)
        return list((await session.execute(query)).all())


async def test_import_stores_every_task_or_none(client: httpx.AsyncClient) -> None:
    post = client.post
    bad = [EXPORT[0], {"id": 103, "data": {"text": ["not", "text"]}}]
    r = await post("/records/label-studio", params={"source": "labelled"}, json=bad)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["message"] == "tasks[1].data.text: Input should be a valid string"
    assert (error["index"], error["field"]) == (1, "data.text")
    two_choices = copy.deepcopy(EXPORT)
    two_choices[1]["annotations"] = [{"result": [{"type": "choices", "value": {"choices": ["a", "b"]}}]}]
    r = await post("/records/label-studio", params={"source": "labelled"}, json=two_choices)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "annotations[0].result[0].value.choices", r.text
    r = await post("/records/label-studio", params={"source": "labelled"}, json=[EXPORT[0], {"id": 4, "data": {}}])
    assert r.status_code == 422 and r.json()["error"]["message"] == "tasks[1].data.text: Field required", r.text
    r = await post("/records/label-studio", json=EXPORT)
    assert r.status_code == 422 and "source" in r.text
    r = await post("/records/label-studio", params={"source": "labelled", "text_field": "text"}, json=EXPORT)
    assert r.status_code == 422 and r.json()["error"]["param"] == "query.text_field", "not ignored"
    r = await post("/records/label-studio", params={"source": "labelled"}, json=EXPORT[0])
    assert r.status_code == 422 and r.json()["error"]["message"] == "body: not a JSON array of tasks"
    r = await post("/records/label-studio", params={"source": "labelled"}, json=[])
    assert r.status_code == 422 and r.json()["error"]["message"] == "no tasks in the request"
    r = await post("/records/label-studio", params={"source": "labelled"}, json=[_task(id=i) for i in range(6)])
    assert r.status_code == 413, "over max_records_per_request (5 here)"
    jsonl = json.dumps(EXPORT[1]) + "\n"
    r = await post(
        "/records/label-studio",
        params={"source": "labelled"},
        content=jsonl,
        headers={"content-type": "application/x-ndjson"},
    )
    assert r.status_code == 415

    r = await post("/records/label-studio", params={"source": "labelled"}, json=EXPORT)
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["accepted"], body["duplicates"]) == (2, 0), "the refused batches stored nothing"
    assert [x["record_id"] for x in body["records"]] == ["labelled:101", "labelled:102"]
    r = await post("/records/label-studio", params={"source": "labelled"}, json=EXPORT)
    assert (r.json()["accepted"], r.json()["duplicates"]) == (0, 2)

    (row,) = await _stored(client, "labelled:101")
    assert row.label == "delivery"
    stored = json.dumps(row.metadata, ensure_ascii=False)
    for value in (PHONE, EMAIL, OTHER_EMAIL, "call back"):
        assert value not in stored, f"{value} in the stored metadata: {stored}"


async def test_a_reviewed_label_for_the_same_text_is_an_edit(client: httpx.AsyncClient) -> None:
    """Same source, source id and text, another label: a new revision of the record, published
    (accepted); the same revision again is a duplicate."""
    task = {"id": 7, "data": {"text": "Where is my parcel?"}, "annotations": [{"result": [CHOICE]}]}
    relabelled = copy.deepcopy(task)
    relabelled["annotations"].append(
        {"result": [{**CHOICE, "value": {"choices": ["delivery"]}}], "updated_at": "2024-05-01T00:00:00Z"}
    )
    statuses = []
    for tasks in ([task], [relabelled], [relabelled], [{"id": 7, "data": {"text": "Where is my parcel?"}}]):
        r = await client.post("/records/label-studio", params={"source": "shop"}, json=tasks)
        assert r.status_code == 202, r.text
        statuses.append(r.json()["records"][0]["status"])
    assert statuses == ["accepted", "accepted", "duplicate", "accepted"]
    assert [(row.text, row.label) for row in await _stored(client, "shop:7")] == [
        ("Where is my parcel?", "refund"),
        ("Where is my parcel?", "delivery"),
        ("Where is my parcel?", None),
    ]
    # The same through POST /records: a label is part of what a record is.
    record = {"source": "shop", "source_id": "8", "text": "Where is my parcel?"}
    for label, status in (("refund", "accepted"), ("delivery", "accepted"), ("delivery", "duplicate")):
        r = await client.post("/records", json=record | {"label": label})
        assert r.json()["records"][0]["status"] == status, (label, r.text)


async def test_a_reviewed_task_of_an_erased_record_does_not_bring_it_back(client: httpx.AsyncClient) -> None:
    """Exported, then erased, then the reviewer's annotations come back: the import is refused
    naming the task, and nothing is stored. Sent again after that (new data), it is kept."""
    record = {"source": "shop", "source_id": "9", "text": "My email is li.na@example.com, call me"}
    assert (await client.post("/records", json=record)).status_code == 202
    erasure = await client.post("/erasures", json={"source": "shop", "source_id": "9"})
    assert erasure.status_code == 202, erasure.text
    erased_task = {"text": "My email is [EMAIL], call me", "record_id": "shop:9"}
    reviewed = [
        {"id": 1, "data": {"text": "Where is my parcel?", "record_id": "shop:10"}},
        {"id": 9, "data": erased_task, "annotations": [{"result": [CHOICE]}]},
    ]
    r = await client.post("/records/label-studio", params={"source": "reviewed"}, json=reviewed)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "record_erased" and error["message"].startswith(
        "tasks[1].data.record_id: shop:9 was erased"
    )
    assert await _stored(client, "shop:9") == [] and await _stored(client, "shop:10") == []
    assert (await client.post("/records", json=record)).status_code == 202, "sent again: new data"
    r = await client.post("/records/label-studio", params={"source": "reviewed"}, json=reviewed[1:])
    assert r.status_code == 202, r.text
    assert [row.label for row in await _stored(client, "shop:9")] == [None, "refund"]


async def test_the_task_schema_is_declared(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    op = spec["paths"]["/records/label-studio"]["post"]
    assert op["requestBody"] == label_studio_body()["requestBody"]
    assert "$ref" not in json.dumps(op["requestBody"])
    assert [p["name"] for p in op["parameters"]] == ["source"]
    assert ImportTask.model_fields.keys() == {"id", "data", "annotations"}
