"""Labels from a Label Studio export to a dataset version and back out as Label Studio tasks,
through preprocess's own API on SQLite and the real PostgreSQL.

The export is converted by ingest's conversion (the one ``POST /records/label-studio`` runs), each
record goes through preprocess's record handler (cleaning, PII masking), a version is cut, and
``GET /datasets/{name}/versions/{version}/label-studio`` gives every record back as a task with
the same label per source id and the masked text, never the raw personal data.
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
from lmforge.common.events import Event, RawRecordV1, UpstreamRecord, content_hash, record_key
from lmforge.common.http import create_app
from lmforge.common.kafka import EventProducer, InboundMessage
from lmforge.common.settings import KafkaSettings
from lmforge.ingest.label_studio import tasks_to_records
from lmforge.preprocess import api as preprocess_api
from lmforge.preprocess.handlers import RawRecordHandler
from lmforge.preprocess.label_studio import version_tasks_json
from lmforge.preprocess.models import cleaned_records, metadata, outbox
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
    r = await preprocess.get("/datasets/reviewed/versions/1/label-studio", params={"label_as": "guesses"})
    assert r.status_code == 422


async def test_the_export_reads_shards_in_batches(preprocess: httpx.AsyncClient) -> None:
    r = await preprocess.post("/datasets/reviewed/versions", json={})
    store: DatasetStore = preprocess._transport.app.state.datasets  # type: ignore[attr-defined]
    manifest = store.manifest(r.json()["manifest_uri"])
    pieces = list(version_tasks_json(store.artifacts, manifest, batch_size=1))
    assert len(pieces) == len(TEXTS) + 2, "one piece per task, between the brackets"
    tasks = json.loads(b"".join(pieces))
    assert sorted(t["data"]["record_id"] for t in tasks) == sorted(f"labelled:{i}" for i in TEXTS)
