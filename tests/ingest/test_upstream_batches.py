"""Upstream records are taken a partition's batch at a time (one transaction, one publish), on the
real Tansu broker: every record stored and published once, each ``raw-data`` event in its own
record's trace, and a bad message in a batch dead-lettered without losing the others."""

from __future__ import annotations

import json
from pathlib import Path

from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from lmforge.common.db import Database
from lmforge.common.events import Topic, dead_letter_topic, decode_event
from lmforge.common.kafka import DLQ_ERROR, ensure_topics
from lmforge.common.settings import KafkaSettings
from lmforge.ingest.models import raw_records

from ..helpers import read_topic, wait_until
from .test_sweeper import _client, _settings


async def test_a_batch_of_upstream_records_is_stored_and_published_each_in_its_own_trace(
    kafka_settings: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    settings = _settings(kafka_settings, tmp_path, unique)
    upstream = settings.upstream_topics[0]
    kafka = kafka_settings.model_copy(update={"topic_partitions": 1})
    await ensure_topics(kafka, [upstream, dead_letter_topic(upstream), Topic.RAW_DATA])
    before = REGISTRY.get_sample_value(
        "lmforge_consumer_batch_fallbacks_total", {"group": settings.consumer_group, "topic": upstream}
    )
    # Produced before ingest starts, on one partition: fetched, and handled, together.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap_servers, acks="all")
    await producer.start()
    traces = {}
    try:
        for i in range(120):
            value = json.dumps({"source": "erp", "source_id": f"B-{i}", "text": f"order {i} arrived damaged"})
            trace_id = f"{i + 1:032x}"
            traces[f"erp:B-{i}"] = trace_id
            headers = [("traceparent", f"00-{trace_id}-{i + 1:016x}-01".encode())]
            await producer.send(upstream, value.encode(), key=b"k", headers=headers)
        await producer.send_and_wait(upstream, b"{not json", key=b"k")
        for i in range(120, 130):
            value = json.dumps({"source": "erp", "source_id": f"B-{i}", "text": f"order {i} arrived damaged"})
            await producer.send_and_wait(upstream, value.encode(), key=b"k")
    finally:
        await producer.stop()

    async for _, app in _client(settings):
        db = app.state.runtime.db  # type: ignore[attr-defined]

        async def all_stored(db: Database = db) -> bool:
            async with db.sessions() as s:
                return (await s.execute(select(func.count()).select_from(raw_records))).scalar_one() == 130

        await wait_until(all_stored, timeout=60)
    # raw-data is the session broker's, shared with other tests: read all of it.
    events = await read_topic(kafka_settings.bootstrap_servers, Topic.RAW_DATA, expected=10**9, timeout=8)
    by_record = {}
    for rec in events:
        event = decode_event(rec.headers, rec.value)
        if event.data.source == "erp" and event.data.source_id.startswith("B-"):
            by_record.setdefault(event.data.record_id, []).append(dict(rec.headers)["traceparent"].decode())
    assert sorted(by_record) == sorted(f"erp:B-{i}" for i in range(130)), "each record published"
    assert all(len(v) == 1 for v in by_record.values()), "each once"
    for record_id, trace_id in traces.items():
        assert by_record[record_id][0].split("-")[1] == trace_id, f"{record_id} continues its upstream trace"
    (letter,) = await read_topic(kafka_settings.bootstrap_servers, dead_letter_topic(upstream), 1)
    assert "not JSON" in dict(letter.headers)[DLQ_ERROR].decode()
    after = REGISTRY.get_sample_value(
        "lmforge_consumer_batch_fallbacks_total", {"group": settings.consumer_group, "topic": upstream}
    )
    assert (after or 0) - (before or 0) >= 1, "the batch with the bad message was handled one record at a time"
