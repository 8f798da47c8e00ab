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

from ..helpers import INTERNAL_AUTH, INTERNAL_HEADERS, read_topic


async def _client(settings: IngestSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest", headers=INTERNAL_HEADERS) as client:
            yield client


def _settings(kafka: KafkaSettings, tmp_path: Path, unique: str) -> IngestSettings:
    return IngestSettings(
        kafka=kafka,
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/ingest.db"),
        artifacts=ArtifactSettings(url=str(tmp_path / "artifacts")),
        internal=INTERNAL_AUTH,
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


async def test_a_body_that_cannot_be_read_is_a_clear_4xx(client: httpx.AsyncClient) -> None:
    """Not UTF-8, not standard JSON, nested without end, a nonsense length: a 4xx naming why."""
    for ctype in ("application/json", "application/x-ndjson"):
        r = await client.post("/records", content=b'{"source": "crm", "text": "\xff"}', headers={"content-type": ctype})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["message"] == "body is not valid UTF-8 (byte 27: invalid start byte)"
    r = await client.post("/records", files={"file": ("t.jsonl", b"\xfe\xff")})
    assert r.status_code == 422 and "not valid UTF-8" in r.json()["error"]["message"]
    nan = b'{"source": "crm", "source_id": "1", "text": "x", "metadata": {"a": NaN}}'
    r = await client.post("/records", content=nan, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["message"] == "body is not JSON (NaN is not JSON)"
    r = await client.post("/records", content=b"[" * 2000 + b"]" * 2000, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["message"] == "body is nested too deeply"
    garbage_length = {"content-type": "application/json", "content-length": "x"}
    r = await client.post("/records", content=b"[]", headers=garbage_length)
    assert r.status_code == 400 and r.json()["error"]["message"] == "Content-Length is not a number"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"source": "CRM"}, "source: String should match pattern"),
        ({"source": "crm/../x"}, "source: String should match pattern"),
        ({"source_id": "   "}, "source_id: String should match pattern"),
        ({"text": "\t\n "}, "text: String should match pattern"),
        ({"text": "a\x00b"}, "text: String should match pattern"),
        ({"label": "a\x00"}, "label: String should match pattern"),
        ({"metadata": {"k": "v\x00"}}, "metadata: Value error, metadata.k: NUL character"),
        ({"metadata": {"k": {"a": {"b": 1}}}}, "metadata: Value error, metadata.k.a: nested deeper than one list"),
        ({"metadata": {"k": 1e400}}, "metadata: Value error, metadata.k: not a finite number"),
    ],
)
async def test_records_every_store_can_take(client: httpx.AsyncClient, record: dict[str, object], message: str) -> None:
    """The one name pattern for sources; no blank ids or texts; no NUL (PostgreSQL refuses it)."""
    body = json.dumps(rec(1) | record).replace("Infinity", "1e400")
    r = await client.post("/records", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith(message), r.json()


async def test_whitespace_is_kept_as_sent(client: httpx.AsyncClient) -> None:
    r = await client.post("/records", json={"source": "crm", "source_id": " T-1 ", "text": " hello "})
    assert r.status_code == 202 and r.json()["records"][0]["record_id"] == "crm: T-1 "


async def test_openapi_declares_the_record_schema_for_every_format(client: httpx.AsyncClient) -> None:
    op = (await client.get("/openapi.json")).json()["paths"]["/records"]["post"]
    content = op["requestBody"]["content"]
    record = content["application/json"]["schema"]["anyOf"][0]
    assert record["required"] == ["source", "source_id", "text"] and record["additionalProperties"] is False
    assert content["application/json"]["schema"]["anyOf"][1] == {
        "type": "array",
        "items": record,
        "minItems": 1,
        "maxItems": 1000,
    }
    assert content["application/x-ndjson"]["schema"]["items"] == record
    assert content["multipart/form-data"]["encoding"] == {"file": {"contentType": "application/jsonl"}}
    assert {"202", "400", "413", "415", "422", "503"} <= set(op["responses"])
    assert op["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }


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
            # Stored at the first attempt: "accepted" now, or "duplicate" if the sweeper got it
            # out first. Either way under the event id fixed at the first attempt.
            assert r.status_code == 202 and r.json()["accepted"] + r.json()["duplicates"] == 1
            event_id = r.json()["records"][0]["event_id"]
        records = await read_topic(broker.bootstrap_servers, Topic.RAW_DATA, expected=1)
        published = [decode_event(x.headers, x.value, RawRecordV1) for x in records]
        # The client's retry and the sweeper may both publish it: at least once, always one event id.
        assert published and {(e.id, e.data.source_id) for e in published} == {(event_id, "T-2")}
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
