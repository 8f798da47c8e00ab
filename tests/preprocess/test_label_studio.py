"""Labels from a Label Studio export to a dataset version and back out as Label Studio tasks,
through preprocess's own API on SQLite and the real PostgreSQL.

The export is converted by ingest's conversion (the one ``POST /records/label-studio`` runs), each
record goes through preprocess's record handler (cleaning, PII masking), a version is cut, and
``GET /datasets/{name}/versions/{version}/label-studio`` gives every record back as a task with
the same label per source id and the masked text, never the raw personal data. A reviewed label,
imported back from that export, is an edit of its record: the next version has it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import Event, RawRecordV1, Topic, UpstreamRecord, content_hash, record_key
from lmforge.common.http import create_app
from lmforge.common.kafka import EventProducer, InboundMessage
from lmforge.common.label_studio import IMPORT_TASKS
from lmforge.common.settings import KafkaSettings
from lmforge.ingest.label_studio import StoredRecord
from lmforge.ingest.label_studio import tasks_to_records as convert
from lmforge.preprocess import api as preprocess_api
from lmforge.preprocess.handlers import RawRecordHandler
from lmforge.preprocess.label_studio import version_tasks_json
from lmforge.preprocess.models import cleaned_records, dropped_records, metadata, outbox
from lmforge.preprocess.store import DatasetStore

from ..helpers import INTERNAL_AUTH, INTERNAL_HEADERS

EMAIL = "jane.doe@example.com"
TEXTS = {
    1: f"Please refund order 58213, the parcel arrived broken. Write to me at {EMAIL} when it is done.",
    2: "The invoice for March lists the same monitor twice and I was charged for both of them.",
    3: "How do I change the delivery address of an order that has not been shipped yet?",
    4: "Your courier left the package at the wrong building again, third time this month.",
}
LABELS = {1: "refund", 2: "billing", 3: None, 4: "delivery"}


def _export() -> list[dict[str, Any]]:
    tasks = []
    for task_id, text in TEXTS.items():
        label = LABELS[task_id]
        result = [{"type": "choices", "value": {"choices": [label]}, "from_name": "intent", "to_name": "text"}]
        if task_id == 1:
            result.append(
                {
                    "type": "labels",
                    "value": {"start": 14, "end": 19, "labels": ["ORDER"]},
                    "from_name": "ner",
                    "to_name": "text",
                }
            )
        annotations = [{"id": task_id, "result": result, "was_cancelled": False}] if label else []
        tasks.append({"id": task_id, "data": {"text": text}, "annotations": annotations})
    return tasks


def tasks_to_records(tasks: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """What ``POST /records/label-studio`` stores: the tasks validated by the published schema, converted."""
    return convert(IMPORT_TASKS.validate_python(tasks), source)


def _message(offset: int, record: UpstreamRecord) -> InboundMessage:
    raw = RawRecordV1(
        record_id=record_key(record.source, record.source_id),
        source=record.source,
        source_id=record.source_id,
        text=record.text,
        content_hash=content_hash(record.text),
        metadata=record.metadata,
        label=record.label,
        ingested_at=datetime.now(UTC),
    )
    value, headers = Event(data=raw, source="tests").to_kafka()
    return InboundMessage("raw-data", 0, offset, raw.record_id.encode(), value, tuple(headers), 0)


@pytest.fixture
async def preprocess(database: Database, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    await database.create_all(metadata)
    relay = OutboxRelay(outbox, database.sessions, EventProducer(KafkaSettings(), source="tests"))  # only woken
    handle = RawRecordHandler(database, "lmforge-preprocess", relay)
    records = [UpstreamRecord.model_validate(r) for r in tasks_to_records(_export(), "labelled")]
    for offset, record in enumerate(records):
        await handle(_message(offset, record))
    app = create_app("preprocess", internal=INTERNAL_AUTH)
    app.state.handle = handle
    app.state.datasets = DatasetStore(database, ArtifactStore(str(tmp_path / "artifacts")), relay)
    app.include_router(preprocess_api.router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://preprocess", headers=INTERNAL_HEADERS) as client:
        yield client


async def test_labels_survive_import_clean_version_export(preprocess: httpx.AsyncClient, database: Database) -> None:
    r = await preprocess.post("/datasets/reviewed/versions", json={"sources": ["labelled"]})
    assert r.status_code == 201, r.text
    version = r.json()["version"]
    manifest = (await preprocess.get(f"/datasets/reviewed/versions/{version}")).json()
    splits = {m["record_id"]: m["split"] for m in manifest["records"]}

    r = await preprocess.get(f"/datasets/reviewed/versions/{version}/label-studio")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    tasks = r.json()
    assert len(tasks) == len(TEXTS)
    by_source_id = {t["data"]["record_id"].removeprefix("labelled:"): t for t in tasks}
    for task_id, label in LABELS.items():
        task = by_source_id[str(task_id)]
        assert task["data"]["split"] == splits[f"labelled:{task_id}"]
        if label is None:
            assert set(task) == {"data"}
            continue
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == f"reviewed@v{version}"
        assert prediction["result"] == [
            {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}
        ]
    masked = by_source_id["1"]["data"]["text"]
    assert EMAIL not in masked and "order 58213" in masked, masked
    assert EMAIL not in r.text, "no raw personal data anywhere in the export"
    assert by_source_id["2"]["data"]["text"] == TEXTS[2]

    # As annotations, under the names of the reviewer's labelling config.
    r = await preprocess.get(
        f"/datasets/reviewed/versions/{version}/label-studio",
        params={"label_as": "annotations", "from_name": "intent", "to_name": "ticket"},
    )
    task = next(t for t in r.json() if t["data"]["record_id"] == "labelled:2")
    assert "predictions" not in task
    assert task["annotations"] == [
        {"result": [{"from_name": "intent", "to_name": "ticket", "type": "choices", "value": {"choices": ["billing"]}}]}
    ]

    # The other results of the annotation travel with the cleaned record's metadata.
    async with database.sessions() as session:
        kept = (
            await session.execute(select(cleaned_records.c.metadata).where(cleaned_records.c.record_id == "labelled:1"))
        ).scalar_one()
    assert json.loads(kept["label_studio"]["results"]) == [
        {
            "type": "labels",
            "value": {"start": 14, "end": 19, "labels": ["ORDER"]},
            "from_name": "ner",
            "to_name": "text",
        }
    ]


async def test_unknown_dataset_or_version_is_404(preprocess: httpx.AsyncClient) -> None:
    assert (await preprocess.post("/datasets/reviewed/versions", json={})).status_code == 201
    for path in ("/datasets/reviewed/versions/2/label-studio", "/datasets/nothing/versions/1/label-studio"):
        r = await preprocess.get(path)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "dataset_version_not_found"
    for params in ({"label_as": "guesses"}, {"label": "annotations"}):
        r = await preprocess.get("/datasets/reviewed/versions/1/label-studio", params=params)
        assert r.status_code == 422, params


async def test_the_export_reads_shards_in_batches(preprocess: httpx.AsyncClient) -> None:
    r = await preprocess.post("/datasets/reviewed/versions", json={})
    store: DatasetStore = preprocess._transport.app.state.datasets  # type: ignore[attr-defined]
    manifest = store.manifest(r.json()["manifest_uri"])
    pieces = list(version_tasks_json(store.artifacts, manifest, batch_size=1))
    assert len(pieces) == len(TEXTS) + 2, "one piece per task, between the brackets"
    tasks = json.loads(b"".join(pieces))
    assert sorted(t["data"]["record_id"] for t in tasks) == sorted(f"labelled:{i}" for i in TEXTS)


async def _clean(
    preprocess: httpx.AsyncClient,
    tasks: list[dict[str, Any]],
    source: str,
    stored: dict[str, StoredRecord] | None = None,
) -> None:
    """The tasks converted as ingest converts them (``stored``: what ingest holds of the records
    that tasks from lmforge's export name), then each record through the record handler."""
    handle: RawRecordHandler = preprocess._transport.app.state.handle  # type: ignore[attr-defined]
    for record in convert(IMPORT_TASKS.validate_python(tasks), source, stored):
        async with handle.db.sessions() as session:
            offset = len((await session.execute(select(cleaned_records.c.id))).all()) + 100
        await handle(_message(offset, UpstreamRecord.model_validate(record)))


async def _shard_labels(preprocess: httpx.AsyncClient, version: int) -> dict[str, str | None]:
    r = await preprocess.get(f"/datasets/reviewed/versions/{version}/label-studio")
    assert r.status_code == 200, r.text
    return {
        t["data"]["record_id"]: t["predictions"][0]["result"][0]["value"]["choices"][0] if "predictions" in t else None
        for t in r.json()
    }


async def _rows(database: Database) -> dict[str, list[tuple[int, str | None]]]:
    """Each record's cleaned rows, oldest first: (id, label)."""
    async with database.sessions() as session:
        query = select(cleaned_records.c.record_id, cleaned_records.c.id, cleaned_records.c.label)
        rows: dict[str, list[tuple[int, str | None]]] = {}
        for r in await session.execute(query.order_by(cleaned_records.c.id)):
            rows.setdefault(r.record_id, []).append((r.id, r.label))
        return rows


async def test_a_reviewed_label_is_an_edit_of_its_record(preprocess: httpx.AsyncClient, database: Database) -> None:
    """Tasks of the version's export, reviewed in Label Studio and imported back: each is an edit of
    the record it names (same source, source id and raw text: ingest's stored revision), and the
    record handler takes a new label for the same cleaned text in place, never as a duplicate of
    itself. The next version has the new labels; the version before keeps the old ones."""
    r = await preprocess.post("/datasets/reviewed/versions", json={})
    assert r.status_code == 201, r.text
    exported = {
        t["data"]["record_id"]: t for t in (await preprocess.get("/datasets/reviewed/versions/1/label-studio")).json()
    }
    assert EMAIL not in json.dumps(exported["labelled:1"]), "the export's text is masked"
    stored = {
        f"labelled:{r['source_id']}": StoredRecord(r["text"], r.get("label"), r.get("metadata", {}), None)
        for r in tasks_to_records(_export(), "labelled")
    }
    before = await _rows(database)

    reviewed = {"labelled:1": "refund_request", "labelled:2": "duplicate_charge", "labelled:3": "address_change"}
    project = [
        {
            "id": 500 + n,
            "data": exported[record_id]["data"],
            "predictions": exported[record_id].get("predictions", []),
            "annotations": [{"result": [{"type": "choices", "value": {"choices": [label]}, "from_name": "label"}]}],
        }
        for n, (record_id, label) in enumerate(reviewed.items())
    ]
    await _clean(preprocess, project, "label-studio-review", stored)

    async with database.sessions() as session:
        dropped = (await session.execute(select(dropped_records.c.record_id))).all()
        sources = set((await session.execute(select(cleaned_records.c.source))).scalars())
    assert dropped == [], "a record's own text with a new label is an edit, never a duplicate of itself"
    assert sources == {"labelled"}, "the records named by data.record_id, not new ones of the import's source"
    after = await _rows(database)
    assert {k: [i for i, _ in v] for k, v in after.items()} == {k: [i for i, _ in v] for k, v in before.items()}, (
        "relabelled in place: each record keeps its row and its place in the order of cleaning"
    )

    r = await preprocess.post("/datasets/reviewed/versions", json={})
    assert r.status_code == 201 and r.json()["record_count"] == len(TEXTS), r.text
    assert await _shard_labels(preprocess, 2) == {"labelled:4": "delivery"} | reviewed
    first = await _shard_labels(preprocess, 1)
    assert first["labelled:2"] == "billing" and first["labelled:3"] is None, "a version never changes"
    hashes = [(await preprocess.get(f"/datasets/reviewed/versions/{v}")).json()["records"] for v in (1, 2)]
    assert hashes[0] == hashes[1], "the same records, texts, splits"

    # Nothing changed: a duplicate of itself, as before. Another record with the same text: a duplicate.
    await _clean(
        preprocess, [{"id": 4, "data": {"text": TEXTS[4]}, "annotations": _export()[3]["annotations"]}], "labelled"
    )
    await _clean(preprocess, [{"id": 9, "data": {"text": TEXTS[2]}}], "labelled")
    async with database.sessions() as session:
        dropped = (await session.execute(select(dropped_records.c.record_id, dropped_records.c.duplicate_of))).all()
    assert sorted(tuple(d) for d in dropped) == [("labelled:4", "labelled:4"), ("labelled:9", "labelled:2")]

    # A text edited, then back to the first text with a label: the first text is the newest again.
    await _clean(
        preprocess, [{"id": 3, "data": {"text": "Where do I change my delivery address, please?"}}], "labelled"
    )
    await _clean(preprocess, [_export()[2] | {"annotations": project[2]["annotations"]}], "labelled")
    rows = (await _rows(database))["labelled:3"]
    assert len(rows) == 2 and rows[-1][1] == "address_change" and rows[-1][0] > before["labelled:3"][0][0]
    r = await preprocess.post("/datasets/reviewed/versions", json={})
    v3 = (await preprocess.get(f"/datasets/reviewed/versions/{r.json()['version']}")).json()
    same = {m["record_id"]: m["content_hash"] for m in hashes[0]}["labelled:3"]
    assert {m["record_id"]: m["content_hash"] for m in v3["records"]}["labelled:3"] == same
    assert (await _shard_labels(preprocess, r.json()["version"]))["labelled:3"] == "address_change"


async def test_no_text_of_a_result_reaches_the_cleaned_record(
    preprocess: httpx.AsyncClient, database: Database
) -> None:
    """Personal data in a span, a text area or an HTML result is not in the record's metadata, so it
    is nowhere in the cleaned record or its cleaned-data event (preprocess masks the text only)."""
    phone, other = "13912345678", "wang.fang@example.net"
    text = f"Refund please, reach me on {phone} or {EMAIL}. Order 77120."
    result = [
        {"type": "choices", "value": {"choices": ["refund"]}, "from_name": "intent", "to_name": "text"},
        {"type": "labels", "value": {"start": 27, "end": 38, "text": phone, "labels": ["PHONE"]}, "from_name": "ner"},
        {"type": "labels", "value": {"start": 42, "end": 62, "text": EMAIL, "labels": ["EMAIL"]}, "from_name": "ner"},
        {"type": "textarea", "value": {"text": [f"call {phone}, cc {other}"]}, "from_name": "note", "to_name": "text"},
        {
            "type": "hypertextlabels",
            "value": {"html": f"<i>{other}</i>", "htmlfragment": other, "text": other, "htmllabels": ["EMAIL"]},
            "from_name": "html",
            "meta": {"text": [phone]},
        },
    ]
    await _clean(preprocess, [{"id": "pii-1", "data": {"text": text}, "annotations": [{"result": result}]}], "pii")

    async with database.sessions() as session:
        row = (await session.execute(select(cleaned_records).where(cleaned_records.c.record_id == "pii:pii-1"))).one()
        events = (
            await session.execute(select(outbox.table.c.value).where(outbox.table.c.topic == Topic.CLEANED_DATA.value))
        ).scalars()
        event = next(json.loads(v) for v in events if json.loads(v)["record_id"] == "pii:pii-1")
    assert row.label == "refund" and "[PHONE]" in row.text and "[EMAIL]" in row.text, row.text
    results = json.loads(row.metadata["label_studio"]["results"])
    assert [r["value"] for r in results] == [
        {"start": 27, "end": 38, "labels": ["PHONE"]},
        {"start": 42, "end": 62, "labels": ["EMAIL"]},
        {},
        {"htmllabels": ["EMAIL"]},
    ]
    for where in (json.dumps(row.metadata), json.dumps(event), row.text):
        for value in (phone, EMAIL, other, "wang.fang", "jane.doe"):
            assert value not in where, (value, where)
