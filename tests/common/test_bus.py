"""The Kafka plumbing against the real Tansu broker: round trip, tracing, dead letters."""

from __future__ import annotations

import asyncio
import json

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from lmforge.common.events import InvalidEvent, RawRecordV1, dead_letter_topic
from lmforge.common.kafka import (
    DLQ_ATTEMPTS,
    DLQ_ERROR,
    DLQ_ORIGINAL_OFFSET,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_TOPIC,
    ConsumerRunner,
    EventProducer,
    InboundMessage,
)
from lmforge.common.settings import KafkaSettings
from lmforge.common.telemetry import tracer

from ..helpers import committed_total, read_topic, wait_until
from .factories import raw_record


async def test_round_trip_continues_the_producers_trace(
    kafka_settings: KafkaSettings, span_exporter: InMemorySpanExporter, unique: str
) -> None:
    topic, group = f"roundtrip-{unique}", f"g-{unique}"
    received: list[RawRecordV1] = []

    async def handler(msg: InboundMessage) -> None:
        received.append(msg.event(RawRecordV1).data)

    runner = ConsumerRunner(kafka_settings, group_id=group, topics=[topic], handler=handler)
    await runner.start()
    task = runner.run_in_background()
    async with EventProducer(kafka_settings, source="tests") as producer:
        with tracer().start_as_current_span("upstream request") as root:
            sent = await producer.publish(topic, raw_record("a1"), key="crm:a1")
        trace_id = root.get_span_context().trace_id
        await wait_until(lambda: _ready(received, 1))
    runner.request_stop()
    await task
    await runner.stop()

    assert [r.record_id for r in received] == ["crm:a1"]
    spans = [s for s in span_exporter.get_finished_spans() if s.context.trace_id == trace_id]
    publish = next(s for s in spans if s.name == f"{topic} publish")
    process = next(s for s in spans if s.name == f"{topic} process")
    assert publish.kind == SpanKind.PRODUCER and process.kind == SpanKind.CONSUMER
    assert process.parent is not None and process.parent.span_id == publish.context.span_id
    assert process.attributes["messaging.message.id"] == sent.id
    assert await committed_total(kafka_settings.bootstrap_servers, group, topic) == 1


async def _ready(items: list[object], n: int) -> bool:
    return len(items) >= n


async def test_poison_message_goes_to_dlq_and_partition_moves_on(kafka_settings: KafkaSettings, unique: str) -> None:
    topic, group = f"poison-{unique}", f"g-{unique}"
    attempts: dict[str, int] = {}
    handled: list[str] = []

    async def handler(msg: InboundMessage) -> None:
        rec = msg.event(RawRecordV1).data
        attempts[rec.source_id] = attempts.get(rec.source_id, 0) + 1
        if rec.text == "poison":
            raise RuntimeError("cannot digest this record")
        handled.append(rec.source_id)

    runner = ConsumerRunner(kafka_settings, group_id=group, topics=[topic], handler=handler)
    await runner.start()
    task = runner.run_in_background()
    async with EventProducer(kafka_settings, source="tests") as producer:
        # One key: every message lands on the same partition, the poison one in the middle.
        items = [("k", raw_record(f"r{i}", text="poison" if i == 2 else f"ok {i}")) for i in range(6)]
        await producer.publish_many(topic, items)
        # And a message that is not a CloudEvent at all: dead-lettered at once, never retried.
        await producer.send_raw(topic, b"{not json", key=b"k", headers=[])
        await producer.publish(topic, raw_record("r9"), key="k")
        await wait_until(lambda: _ready(handled, 6))
    runner.request_stop()
    await task
    await runner.stop()

    assert handled == ["r0", "r1", "r3", "r4", "r5", "r9"]
    assert attempts["r2"] == kafka_settings.max_attempts
    dlq = await read_topic(kafka_settings.bootstrap_servers, dead_letter_topic(topic), expected=2)
    assert len(dlq) == 2
    by_type = {dict(r.headers)["dlq.error.type"].decode(): r for r in dlq}
    poison = by_type["RuntimeError"]
    h = {k: v.decode() for k, v in poison.headers}
    assert h[DLQ_ORIGINAL_TOPIC] == topic
    assert h[DLQ_ATTEMPTS] == str(kafka_settings.max_attempts)
    assert "cannot digest this record" in h[DLQ_ERROR]
    assert h["ce_type"] == RawRecordV1.event_type  # original headers kept
    assert json.loads(poison.value)["text"] == "poison"  # original value kept
    garbage = {k: v.decode() for k, v in by_type["InvalidEvent"].headers}
    assert garbage[DLQ_ATTEMPTS] == "1"
    assert "not a CloudEvent" in garbage[DLQ_ERROR]
    assert by_type["InvalidEvent"].value == b"{not json"
    # The DLQ headers point at the exact original record.
    assert int(h[DLQ_ORIGINAL_PARTITION]) >= 0 and int(h[DLQ_ORIGINAL_OFFSET]) == 2
    # Everything, poison included, is committed: the partition is not blocked.
    assert await committed_total(kafka_settings.bootstrap_servers, group, topic) == 8


async def test_invalid_event_error_is_permanent() -> None:
    msg = InboundMessage("t", 0, 0, None, b"{}", (("ce_specversion", b"1.0"),), 0)
    with pytest.raises(InvalidEvent, match="missing headers"):
        msg.event(RawRecordV1)


async def test_producer_reports_unreachable_broker() -> None:
    from lmforge.common.kafka import BrokerUnavailable
    from lmforge.devstack.servers import free_port

    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout_ms=2000)
    producer = EventProducer(settings, source="tests")
    with pytest.raises(BrokerUnavailable, match="cannot reach Kafka"):
        await asyncio.wait_for(producer.start(), 30)


async def test_rebalance_hands_partitions_over_without_loss_or_double_handling(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    """A second member joins while the first is mid-batch: the first finishes the records it is
    handling, commits them and gives partitions away; every record is handled exactly once."""
    topic, group = f"rebalance-{unique}", f"g-{unique}"
    settings = kafka_settings.model_copy(update={"topic_partitions": 4, "max_batch_size": 50})
    handled: dict[str, list[str]] = {}

    def make_handler(member: str):  # type: ignore[no-untyped-def]
        async def handler(msg: InboundMessage) -> None:
            await asyncio.sleep(0.2)  # slow: the join lands while batches are in flight
            handled.setdefault(msg.event(RawRecordV1).data.source_id, []).append(member)

        return handler

    first = ConsumerRunner(settings, group_id=group, topics=[topic], handler=make_handler("a"))
    await first.start()
    first_task = first.run_in_background()
    async with EventProducer(settings, source="tests") as producer:
        # Phase 1: a backlog the first member is still working through when the second joins.
        await producer.publish_many(topic, [(f"k{i}", raw_record(f"r{i}")) for i in range(60)])
        await wait_until(lambda: _ready(list(handled), 4))
        second = ConsumerRunner(settings, group_id=group, topics=[topic], handler=make_handler("b"))
        await second.start()
        second_task = second.run_in_background()

        async def split() -> bool:
            return bool(first.assignment()) and bool(second.assignment())

        await wait_until(split, timeout=30)
        assert not first.assignment() & second.assignment()
        # Phase 2: records produced after the split reach both members.
        await producer.publish_many(topic, [(f"k{i}", raw_record(f"r{i}")) for i in range(60, 100)])
        await wait_until(lambda: _ready(list(handled), 100), timeout=60)
    for runner, task in ((first, first_task), (second, second_task)):
        runner.request_stop()
        await task
        await runner.stop()

    assert sorted(handled) == sorted(f"r{i}" for i in range(100))
    duplicates = {k: v for k, v in handled.items() if len(v) > 1}
    assert duplicates == {}
    assert {m for v in handled.values() for m in v} == {"a", "b"}
    assert await committed_total(settings.bootstrap_servers, group, topic) == 100
