"""Label Studio through the public API: ``POST /v1/records/label-studio`` in front of ingest's own
app (real broker, real database), and ``GET /v1/datasets/{name}/versions/{version}/label-studio``
in front of preprocess's own API on SQLite and PostgreSQL, the export's records cleaned by its
record handler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import UpstreamRecord
from lmforge.common.http import create_app
from lmforge.common.kafka import EventProducer
from lmforge.common.settings import KafkaSettings
from lmforge.ingest.app import build_app as build_ingest
from lmforge.ingest.label_studio import tasks_to_records
from lmforge.preprocess import api as preprocess_api
from lmforge.preprocess.handlers import RawRecordHandler
from lmforge.preprocess.models import metadata, outbox
from lmforge.preprocess.store import DatasetStore

from ..helpers import INTERNAL_AUTH
from ..ingest.test_api import _settings as ingest_settings
from ..preprocess.test_label_studio import EMAIL, LABELS, _export, _message
from .apps import bearer, gateway_settings, new_key, running


@dataclass
class Setup:
    gateway: httpx.AsyncClient
    calls: list[httpx.Request]


async def _preprocess_app(database: Database, tmp_path: Path) -> FastAPI:
    await database.create_all(metadata)
    relay = OutboxRelay(outbox, database.sessions, EventProducer(KafkaSettings(), source="tests"))  # only woken
    handle = RawRecordHandler(database, "lmforge-preprocess", relay)
    for offset, r in enumerate(tasks_to_records(_export(), "labelled")):
        await handle(_message(offset, UpstreamRecord.model_validate(r)))
    store = DatasetStore(database, ArtifactStore(str(tmp_path / "artifacts")), relay)
    await store.create_version("reviewed")
    app = create_app("preprocess", internal=INTERNAL_AUTH)
    app.state.datasets = store
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
            yield Setup(client, calls)
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
    assert dict(call.url.params) == {"source": "labelled", "text_field": "text"}
    assert call.headers["X-Lmforge-Principal"]

    bad = [*export, {"id": 99, "data": {"body": "no text field"}}]
    r = await api.post("/v1/records/label-studio", params={"source": "other"}, json=bad, headers=writer)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == f"tasks[{len(export)}].data.text: missing: the text field of the task"

    calls = len(setup.calls)
    for params in ({}, {"source": "Not A Source"}, {"source": "ok", "text_field": ""}):
        r = await api.post("/v1/records/label-studio", params=params, json=export, headers=writer)
        assert r.status_code == 422, (params, r.text)
    assert len(setup.calls) == calls, "refused at the edge"
    reader = bearer((await new_key(api, ["datasets:read"]))["key"])
    r = await api.post("/v1/records/label-studio", params={"source": "x"}, json=export, headers=reader)
    assert r.status_code == 403


async def test_export_through_the_gateway(setup: Setup) -> None:
    api = setup.gateway
    reader = bearer((await new_key(api, ["datasets:read"]))["key"])
    r = await api.get("/v1/datasets/reviewed/versions/1/label-studio", headers=reader)
    assert r.status_code == 200, r.text
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
    r = await api.get("/v1/datasets/reviewed/versions/1/label-studio", params={"label_as": "x"}, headers=reader)
    assert r.status_code == 422
    writer = bearer((await new_key(api, ["records:write"]))["key"])
    r = await api.get("/v1/datasets/reviewed/versions/1/label-studio", headers=writer)
    assert r.status_code == 403
