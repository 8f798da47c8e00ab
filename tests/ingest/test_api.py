"""Ingest's HTTP API against a real broker and a real (SQLite) database, the broker outage included."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from lmforge.common.events import RawRecordV1, Topic, decode_event
from lmforge.common.kafka import ensure_topics
from lmforge.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings
from lmforge.devstack.servers import TansuBroker
from lmforge.ingest.app import build_app
from lmforge.ingest.settings import IngestSettings

from ..helpers import read_topic


async def _client(settings: IngestSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield client


def _settings(kafka: KafkaSettings, tmp_path: Path, unique: str) -> IngestSettings:
    return IngestSettings(
        kafka=kafka,
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/ingest.db"),
        artifacts=ArtifactSettings(url=str(tmp_path / "artifacts")),
        upstream_topics=[f"upstream-{unique}"],
        consumer_group=f"ingest-{unique}",
        max_records_per_request=5,
        max_request_bytes=4096,
    )


@pytest.fixture
async def client(kafka_settings: KafkaSettings, tmp_path: Path, unique: str) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(_settings(kafka_settings, tmp_path, unique)):
        yield c


def rec(i: int, text: str = "hello") -> dict[str, str]:
    return {"source": "crm", "source_id": f"T-{i}", "text": f"{text} {i}"}


async def test_single_batch_jsonl_and_multipart_are_accepted_once(client: httpx.AsyncClient) -> None:
    r = await client.post("/records", json=rec(1))
    assert r.status_code == 202 and r.json()["accepted"] == 1
    r = await client.post("/records", json=[rec(2), rec(3)])
    assert r.json()["accepted"] == 2
    jsonl = "\n".join(json.dumps(rec(i)) for i in (4, 5)) + "\n"
    r = await client.post("/records", content=jsonl, headers={"content-type": "application/x-ndjson"})
    assert r.json()["accepted"] == 2
    r = await client.post("/records", files={"file": ("tickets.jsonl", json.dumps(rec(6)).encode())})
    assert r.status_code == 202 and r.json()["accepted"] == 1
    # The same record again is stored once and not published again.
    r = await client.post("/records", json=[rec(1), rec(2)])
    assert r.json() | {"records": None} == {"accepted": 0, "duplicates": 2, "records": None}


async def test_bad_input_gets_a_clear_4xx(client: httpx.AsyncClient) -> None:
    r = await client.post("/records", json=[rec(1), {"source": "crm", "text": "x"}])
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "records[1].source_id: Field required"
    r = await client.post("/records", json={**rec(1), "surprise": 1})
    assert r.status_code == 422 and "surprise" in r.json()["error"]["message"]
    r = await client.post("/records", content="{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not JSON" in r.json()["error"]["message"]
    r = await client.post("/records", content='{"a": 1}\n{bad', headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("line 2")
    r = await client.post("/records", json=[rec(i) for i in range(6)])
    assert r.status_code == 413
    r = await client.post("/records", json=rec(1, text="x" * 5000))
    assert r.status_code == 413
    assert r.headers["connection"] == "close"  # the unread body must not reach the next request
    r = await client.post("/records", content="a,b", headers={"content-type": "text/csv"})
    assert r.status_code == 415
    r = await client.post("/records", json=[])
    assert r.status_code == 422


async def test_broker_outage_answers_503_and_loses_nothing(
    kafka_settings: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    """While the broker is down: 503 + Retry-After, the record is kept; after it is back, the
    client's retry publishes it (with the event id fixed at the first attempt)."""
    broker = TansuBroker(tmp_path / "own-broker")
    broker.start()
    kafka = kafka_settings.model_copy(
        update={
            "bootstrap_servers": broker.bootstrap_servers,
            "request_timeout_ms": 10_000,
        }
    )
    try:
        async for client in _client(_settings(kafka, tmp_path, unique)):
            assert (await client.post("/records", json=rec(1))).status_code == 202
            broker.stop()
            r = await client.post("/records", json=rec(2))
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] and r.json()["error"]["code"] == "broker_unavailable"
            broker.start()  # same port; this Tansu build is memory-only, so topics come back empty
            await ensure_topics(kafka, [Topic.RAW_DATA])
            for _ in range(20):
                r = await client.post("/records", json=rec(2))
                if r.status_code == 202:
                    break
            assert r.status_code == 202 and r.json()["accepted"] == 1
            event_id = r.json()["records"][0]["event_id"]
        records = await read_topic(broker.bootstrap_servers, Topic.RAW_DATA, expected=1)
        published = [decode_event(x.headers, x.value, RawRecordV1) for x in records]
        assert [(e.id, e.data.source_id) for e in published] == [(event_id, "T-2")]
    finally:
        broker.stop()


async def test_a_full_batch_of_1000_records(kafka_settings: KafkaSettings, tmp_path: Path, unique: str) -> None:
    settings = _settings(kafka_settings, tmp_path, unique).model_copy(
        update={"max_records_per_request": 1000, "max_request_bytes": 10 * 1024 * 1024}
    )
    async for client in _client(settings):
        r = await client.post("/records", json=[rec(i) for i in range(1000)])
        assert r.status_code == 202 and r.json()["accepted"] == 1000
        r = await client.post("/records", json=[rec(i) for i in range(1000)])
        assert r.json()["duplicates"] == 1000
