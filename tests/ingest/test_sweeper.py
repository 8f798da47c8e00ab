"""Ingest never strands a record: real Tansu (stopped and restarted) and a real SQLite database.

- Records stored while the broker was away (their client got 503 and never retried) are
  published by the sweeper once the broker is back, oldest first, with the event ids fixed at
  the first attempt; the age metric shows them waiting meanwhile.
- A record too large to ever be published is refused with 413 before it is stored; on the
  upstream topic, it is dead-lettered with the reason and the records after it arrive.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY
from sqlalchemy import select

from lmforge.common.db import Database
from lmforge.common.events import RawRecordV1, Topic, dead_letter_topic, decode_event
from lmforge.common.kafka import DLQ_ERROR, ensure_topics
from lmforge.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings
from lmforge.devstack.servers import TansuBroker
from lmforge.ingest.app import build_app
from lmforge.ingest.models import raw_records
from lmforge.ingest.settings import IngestSettings

from ..helpers import INTERNAL_AUTH, INTERNAL_HEADERS, read_topic, wait_until


def _settings(kafka: KafkaSettings, tmp_path: Path, unique: str) -> IngestSettings:
    return IngestSettings(
        kafka=kafka,
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/ingest.db"),
        artifacts=ArtifactSettings(url=str(tmp_path / "artifacts")),
        internal=INTERNAL_AUTH,
        upstream_topics=[f"upstream-{unique}"],
        consumer_group=f"ingest-{unique}",
        max_record_bytes=64 * 1024,
        sweep_interval_s=0.2,
        sweep_grace_s=0.5,
    )


async def _client(settings: IngestSettings) -> AsyncIterator[tuple[httpx.AsyncClient, object]]:
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest", headers=INTERNAL_HEADERS) as client:
            yield client, app


def _rec(i: int) -> dict[str, str]:
    return {"source": "crm", "source_id": f"T-{i}", "text": f"ticket {i}: refund not received"}


def _oldest_age() -> float:
    return REGISTRY.get_sample_value("lmforge_ingest_unpublished_oldest_seconds") or 0.0


async def test_records_stranded_by_a_broker_outage_are_published_by_the_sweeper(
    kafka_settings: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    broker = TansuBroker(tmp_path / "own-broker")
    broker.start()
    # request_timeout_ms must stay above session_timeout_ms / 2 (Tansu holds a JoinGroup that long).
    kafka = kafka_settings.model_copy(
        update={"bootstrap_servers": broker.bootstrap_servers, "request_timeout_ms": 5_000}
    )
    try:
        async for client, app in _client(_settings(kafka, tmp_path, unique)):
            broker.stop()
            for i in (1, 2, 3):  # each client gives up after its 503
                r = await client.post("/records", json=_rec(i))
                assert r.status_code == 503, r.text
            db = app.state.runtime.db  # type: ignore[attr-defined]
            async with db.sessions() as s:
                stored = (await s.execute(select(raw_records).order_by(raw_records.c.id))).all()
            assert [r.source_id for r in stored] == ["T-1", "T-2", "T-3"]
            assert all(r.published_at is None for r in stored)
            await wait_until(lambda: _true(_oldest_age() > 0.5), timeout=15)
            broker.start()  # same port; memory-only, so topics come back empty
            await ensure_topics(kafka, [Topic.RAW_DATA])
            records = await read_topic(broker.bootstrap_servers, Topic.RAW_DATA, expected=3, timeout=30)
            await wait_until(lambda: _true(_oldest_age() == 0.0), timeout=10)
        published = [decode_event(x.headers, x.value, RawRecordV1) for x in records]
        assert [e.data.source_id for e in published] == ["T-1", "T-2", "T-3"], "oldest first, each once"
        assert [e.id for e in published] == [r.event_id for r in stored], "the event ids fixed at the first attempt"
    finally:
        broker.stop()


async def test_a_record_too_large_to_publish_is_refused_before_it_is_stored(
    kafka_settings: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    settings = _settings(kafka_settings, tmp_path, unique)
    async for client, app in _client(settings):
        big = {"source": "crm", "source_id": "T-big", "text": "x" * 10, "metadata": {"blob": "y" * 70_000}}
        r = await client.post("/records", json=big)
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "record_too_large"
        db = app.state.runtime.db  # type: ignore[attr-defined]
        async with db.sessions() as s:
            assert (await s.execute(select(raw_records))).all() == []


async def test_an_oversized_upstream_record_is_dead_lettered_and_later_records_arrive(
    kafka_settings: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    settings = _settings(kafka_settings, tmp_path, unique)
    upstream = settings.upstream_topics[0]
    await ensure_topics(kafka_settings, [upstream, dead_letter_topic(upstream)])
    async for _, app in _client(settings):
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_settings.bootstrap_servers, acks="all", max_request_size=4 * 1024 * 1024
        )
        await producer.start()
        try:
            big = json.dumps({"source": "erp", "source_id": "E-big", "text": "z" * 2 * 1024 * 1024}).encode()
            await producer.send_and_wait(upstream, big, key=b"erp:E-big")
            for i in range(3):
                value = json.dumps({"source": "erp", "source_id": f"E-{i}", "text": f"order {i} delayed"})
                await producer.send_and_wait(upstream, value.encode(), key=f"erp:E-{i}".encode())
        finally:
            await producer.stop()
        db = app.state.runtime.db  # type: ignore[attr-defined]

        async def three_stored(db: Database = db) -> bool:
            async with db.sessions() as s:
                return len((await s.execute(select(raw_records.c.id))).all()) == 3

        await wait_until(three_stored, timeout=30)
    (letter,) = await read_topic(kafka_settings.bootstrap_servers, dead_letter_topic(upstream), 1)
    headers = {k: v.decode() for k, v in letter.headers}
    assert "at most 65536" in headers[DLQ_ERROR]
    assert headers["dlq.value.ref"].endswith(".bin") and letter.value == b""


async def _true(value: bool) -> bool:
    return value
