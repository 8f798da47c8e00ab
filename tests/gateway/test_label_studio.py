"""Label Studio through the public API: ``POST /v1/records/label-studio`` in front of ingest's own
app (real broker, real database), and ``GET /v1/datasets/{name}/versions/{version}/label-studio``
in front of preprocess's own API on SQLite and PostgreSQL, the export's records cleaned by its
record handler. The round trip (import, version, export, review, import again, next version) goes
through both services: what ingest stores and publishes is what preprocess's handler cleans."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import Event, UpstreamRecord
from lmforge.common.http import create_app
from lmforge.common.kafka import EventProducer, InboundMessage
from lmforge.common.label_studio import ExportTask
from lmforge.common.settings import KafkaSettings
from lmforge.ingest.app import build_app as build_ingest
from lmforge.ingest.models import raw_records
from lmforge.ingest.store import raw_record_payload
from lmforge.preprocess import api as preprocess_api
from lmforge.preprocess.handlers import RawRecordHandler
from lmforge.preprocess.models import metadata, outbox
from lmforge.preprocess.store import DatasetStore

from ..helpers import INTERNAL_AUTH
from ..ingest.test_api import _settings as ingest_settings
from ..preprocess.test_label_studio import EMAIL, LABELS, TEXTS, _export, _message, tasks_to_records
from .apps import bearer, gateway_settings, new_key, running


@dataclass
class Setup:
    gateway: httpx.AsyncClient
    calls: list[httpx.Request]
    ingest: FastAPI
    preprocess: FastAPI


async def _preprocess_app(database: Database, tmp_path: Path) -> FastAPI:
    await database.create_all(metadata)
    relay = OutboxRelay(outbox, database.sessions, EventProducer(KafkaSettings(), source="tests"))  # only woken
    handle = RawRecordHandler(database, "lmforge-preprocess", relay)
    for offset, r in enumerate(tasks_to_records(_export(), "labelled")):
        await handle(_message(offset, UpstreamRecord.model_validate(r)))
    store = DatasetStore(database, ArtifactStore(str(tmp_path / "artifacts")), relay)
    await store.create_version("reviewed")
    app = create_app("preprocess", internal=INTERNAL_AUTH)
    app.state.datasets, app.state.handle = store, handle
    app.include_router(preprocess_api.router)
    return app


def _behind(app: FastAPI, old: httpx.AsyncClient, base_url: str, calls: list[httpx.Request]) -> httpx.AsyncClient:
    """A client with ``old``'s headers (the internal credential) and timeouts, into ``app``."""
    asgi = httpx.ASGITransport(app=app)

    async def recording(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return await asgi.handle_async_request(request)

    return httpx.AsyncClient(
        base_url=base_url, transport=httpx.MockTransport(recording), headers=old.headers, timeout=old.timeout
    )


@pytest.fixture
async def setup(kafka_settings: KafkaSettings, database: Database, tmp_path: Path, unique: str) -> AsyncIterator[Setup]:
    preprocess = await _preprocess_app(database, tmp_path)
    ingest = build_ingest(
        ingest_settings(kafka_settings, tmp_path, unique).model_copy(update={"max_request_bytes": 64 * 1024})
    )
    settings = gateway_settings(kafka_settings, f"sqlite+aiosqlite:///{tmp_path}/gateway.db")
    async with ingest.router.lifespan_context(ingest), running(settings) as (app, client):
        calls: list[httpx.Request] = []
        down = app.state.downstream
        old = dict(down.clients)
        down.clients["preprocess"] = _behind(preprocess, old["preprocess"], "http://preprocess", calls)
        down.clients["ingest"] = _behind(ingest, old["ingest"], "http://ingest", calls)
        try:
            yield Setup(client, calls, ingest, preprocess)
        finally:
            for name in ("preprocess", "ingest"):
                await down.clients[name].aclose()
                await old[name].aclose()


async def test_import_through_the_gateway(setup: Setup) -> None:
    api = setup.gateway
    writer = bearer((await new_key(api, ["records:write"]))["key"])
    export = _export()
    r = await api.post("/v1/records/label-studio", params={"source": "labelled"}, json=export, headers=writer)
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == len(export)
    call = setup.calls[-1]
    assert call.url.path == "/records/label-studio"
    assert dict(call.url.params) == {"source": "labelled"}
    assert call.headers["X-Lmforge-Principal"]

    bad = [*export, {"id": 99, "data": {"body": "no text field"}}]
    r = await api.post("/v1/records/label-studio", params={"source": "other"}, json=bad, headers=writer)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == f"tasks[{len(export)}].data.text: Field required"
    assert (error["index"], error["field"]) == (len(export), "data.text")

    calls = len(setup.calls)
    for params in ({}, {"source": "Not A Source"}, {"source": "ok", "text_field": "text"}):
        r = await api.post("/v1/records/label-studio", params=params, json=export, headers=writer)
        assert r.status_code == 422, (params, r.text)
    assert r.json()["error"]["param"] == "query.text_field", "an unknown query parameter is refused, not ignored"
    r = await api.post("/v1/records/label-studio?source=a&source=b", json=export, headers=writer)
    assert r.status_code == 422 and r.json()["error"]["message"] == "query.source: given twice", r.text
    assert len(setup.calls) == calls, "refused at the edge"
    reader = bearer((await new_key(api, ["datasets:read"]))["key"])
    r = await api.post("/v1/records/label-studio", params={"source": "x"}, json=export, headers=reader)
    assert r.status_code == 403


async def test_export_through_the_gateway(setup: Setup) -> None:
    api = setup.gateway
    reader = bearer((await new_key(api, ["datasets:read"]))["key"])
    r = await api.get("/v1/datasets/reviewed/versions/1/label-studio", headers=reader)
    assert r.status_code == 200, r.text
    for task in r.json():
        ExportTask.model_validate(task)  # the declared answer
    tasks = {t["data"]["record_id"]: t for t in r.json()}
    assert set(tasks) == {f"labelled:{i}" for i in LABELS}
    for task_id, label in LABELS.items():
        task = tasks[f"labelled:{task_id}"]
        got = task["predictions"][0]["result"][0]["value"]["choices"] if "predictions" in task else [None]
        assert got == [label]
    assert EMAIL not in r.text
    r = await api.get(
        "/v1/datasets/reviewed/versions/1/label-studio",
        params={"label_as": "annotations", "from_name": "intent"},
        headers=reader,
    )
    assert dict(setup.calls[-1].url.params) == {"label_as": "annotations", "from_name": "intent", "to_name": "text"}
    assert all("predictions" not in t for t in r.json())
    assert any(t.get("annotations", [{}])[0].get("result", [{}])[0].get("from_name") == "intent" for t in r.json())

    for path in ("/v1/datasets/reviewed/versions/7/label-studio", "/v1/datasets/nothing/versions/1/label-studio"):
        r = await api.get(path, headers=reader)
        assert r.status_code == 404, r.text
        error = r.json()["error"]
        assert error["code"] == "dataset_version_not_found" and error["type"] == "invalid_request_error", error
    for params in ({"label_as": "x"}, {"from_name": ""}, {"as": "annotations"}):
        r = await api.get("/v1/datasets/reviewed/versions/1/label-studio", params=params, headers=reader)
        assert r.status_code == 422, (params, r.text)
    writer = bearer((await new_key(api, ["records:write"]))["key"])
    r = await api.get("/v1/datasets/reviewed/versions/1/label-studio", headers=writer)
    assert r.status_code == 403


async def _clean_what_ingest_stored(setup: Setup, source: str, done: set[int]) -> None:
    """The raw records ingest stored and published for ``source`` and not yet cleaned, in order,
    through preprocess's record handler: the events ingest published, as preprocess consumes them."""
    handle: RawRecordHandler = setup.preprocess.state.handle
    db = setup.ingest.state.store.db
    async with db.sessions() as session:
        query = select(raw_records).where(raw_records.c.source == source, raw_records.c.published_at.is_not(None))
        rows = (await session.execute(query.order_by(raw_records.c.id))).all()
    for row in rows:
        if row.id in done:
            continue
        done.add(row.id)
        value, headers = Event(data=raw_record_payload(row), source="tests", id=row.event_id).to_kafka()
        await handle(InboundMessage("raw-data", 0, 1000 + row.id, row.record_id.encode(), value, tuple(headers), 0))


async def test_review_round_trip_through_ingest_and_preprocess(setup: Setup) -> None:
    """Import an export, cut a version, export it for review, change a label in Label Studio and
    import the project's export back: the next version has the new label, the others unchanged."""
    api = setup.gateway
    writer = bearer((await new_key(api, ["records:write"]))["key"])
    reader = bearer((await new_key(api, ["datasets:read"]))["key"])
    admin = bearer((await new_key(api, ["datasets:write"]))["key"])
    done: set[int] = set()
    texts = {i: f"Ticket {i}: {text}" for i, text in TEXTS.items()}  # not the texts the setup cleaned
    export = [t | {"data": {"text": texts[t["id"]]}} for t in _export()]
    r = await api.post("/v1/records/label-studio", params={"source": "crm-review"}, json=export, headers=writer)
    assert r.status_code == 202 and r.json()["accepted"] == len(TEXTS), r.text
    await _clean_what_ingest_stored(setup, "crm-review", done)
    r = await api.post("/v1/datasets/round-trip/versions", json={"sources": ["crm-review"]}, headers=admin)
    assert r.status_code == 201, r.text
    exported = (await api.get("/v1/datasets/round-trip/versions/1/label-studio", headers=reader)).json()
    assert {t["data"]["record_id"] for t in exported} == {f"crm-review:{i}" for i in TEXTS}

    # Label Studio's export of the review project: its own ids, the data as imported, the
    # prediction; the reviewer relabelled record 2 (text without personal data) and record 1
    # (its email masked in the export), and left the others alone.
    reviewed = {"crm-review:1": "refund_request", "crm-review:2": "duplicate_charge"}
    project = []
    for ls_id, task in enumerate(exported, start=900):
        entry = {"id": ls_id, "data": task["data"], "predictions": task.get("predictions", []), "annotations": []}
        if task["data"]["record_id"] in reviewed:
            choice = {"type": "choices", "value": {"choices": [reviewed[task["data"]["record_id"]]]}}
            entry["annotations"] = [{"id": ls_id, "result": [choice | {"from_name": "label", "to_name": "text"}]}]
        project.append(entry)
    r = await api.post("/v1/records/label-studio", params={"source": "review"}, json=project, headers=writer)
    assert r.status_code == 202, r.text
    statuses = {x["record_id"]: x["status"] for x in r.json()["records"]}
    assert statuses == {f"crm-review:{i}": "duplicate" for i in TEXTS} | dict.fromkeys(reviewed, "accepted"), (
        "an edit of the records it names; a task nobody reviewed changes nothing"
    )
    async with setup.ingest.state.store.db.sessions() as session:
        query = select(raw_records.c.text, raw_records.c.label).where(raw_records.c.record_id == "crm-review:1")
        revisions = (await session.execute(query.order_by(raw_records.c.id))).all()
    assert [tuple(x) for x in revisions] == [(texts[1], "refund"), (texts[1], "refund_request")], (
        "the record's own raw text, not the export's masked one"
    )
    await _clean_what_ingest_stored(setup, "crm-review", done)

    r = await api.post("/v1/datasets/round-trip/versions", json={"sources": ["crm-review"]}, headers=admin)
    assert r.status_code == 201 and r.json()["record_count"] == len(TEXTS), r.text
    for version, expected in ((2, reviewed), (1, {})):
        tasks = (await api.get(f"/v1/datasets/round-trip/versions/{version}/label-studio", headers=reader)).json()
        labels = {
            t["data"]["record_id"]: t["predictions"][0]["result"][0]["value"]["choices"][0]
            if "predictions" in t
            else None
            for t in tasks
        }
        assert labels == {f"crm-review:{i}": label for i, label in LABELS.items()} | expected, version
        assert EMAIL not in json.dumps(tasks)
