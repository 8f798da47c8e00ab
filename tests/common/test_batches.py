"""The consumer runner's batch handler against the real Tansu broker: records handed over
together, each in its own trace; a failing batch falls back to one record at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from lmforge.common.events import RawRecordV1, dead_letter_topic
from lmforge.common.kafka import BatchItem, ConsumerRunner, EventProducer, InboundMessage
from lmforge.common.settings import KafkaSettings
from lmforge.common.telemetry import tracer

from ..helpers import committed_total, read_topic, wait_until
from .factories import raw_record


async def _run_until(runner: ConsumerRunner, done: asyncio.Event) -> None:
    await runner.start()
    task = runner.run_in_background()
    await asyncio.wait_for(done.wait(), 30)
    runner.request_stop()
    await task
    await runner.stop()


async def test_a_partitions_records_reach_the_batch_handler_together_each_in_its_own_trace(
    kafka_settings: KafkaSettings, span_exporter: InMemorySpanExporter, unique: str
) -> None:
    topic, group = f"batches-{unique}", f"g-{unique}"
    batches: list[list[str]] = []
    one_at_a_time: list[str] = []
    done = asyncio.Event()

    async def handler(msg: InboundMessage) -> None:
        one_at_a_time.append(msg.event(RawRecordV1).data.source_id)

    async def batch_handler(items: Sequence[BatchItem]) -> None:
        batches.append([item.message.event(RawRecordV1).data.source_id for item in items])
        if sum(map(len, batches)) >= 20:
            done.set()

    # Each record published under its own upstream trace, all on one partition, before the consumer starts.
    trace_ids = {}
    async with EventProducer(kafka_settings, source="tests") as producer:
        for i in range(20):
            with tracer().start_as_current_span("upstream request") as root:
                await producer.publish(topic, raw_record(f"b{i}"), key="same")
            trace_ids[f"b{i}"] = root.get_span_context().trace_id
    runner = ConsumerRunner(
        kafka_settings, group_id=group, topics=[topic], handler=handler, batch_handler=batch_handler
    )
    await _run_until(runner, done)

    assert [s for b in batches for s in b] == [f"b{i}" for i in range(20)], "in order, each once"
    assert max(map(len, batches)) > 1, "records fetched together were handled together"
    assert one_at_a_time == []
    spans = [s for s in span_exporter.get_finished_spans() if s.name == f"{topic} process"]
    for source_id, trace_id in trace_ids.items():
        (process,) = [s for s in spans if s.context.trace_id == trace_id]
        assert process.kind == SpanKind.CONSUMER, source_id
        assert process.parent is not None, "a child of the record's publish span"
    assert await committed_total(kafka_settings.bootstrap_servers, group, topic) == 20


async def test_a_failing_batch_falls_back_to_one_record_at_a_time_and_loses_nothing(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    """The batch handler fails on a batch holding a poison record: the runner hands the batch's
    records to the one-at-a-time handler, which retries the poison one and dead-letters it."""
    topic, group = f"batchfail-{unique}", f"g-{unique}"
    handled: list[str] = []
    done = asyncio.Event()

    def check(msg: InboundMessage) -> str:
        record = msg.event(RawRecordV1).data
        if record.text == "poison":
            raise RuntimeError("cannot digest this record")
        return record.source_id

    async def handler(msg: InboundMessage) -> None:
        handled.append(check(msg))
        if len(handled) >= 9:
            done.set()

    async def batch_handler(items: Sequence[BatchItem]) -> None:
        ids = [check(item.message) for item in items]  # all or nothing: raises before keeping any
        handled.extend(ids)
        if len(handled) >= 9:
            done.set()

    async with EventProducer(kafka_settings, source="tests") as producer:
        records = [("k", raw_record(f"r{i}", text="poison" if i == 4 else f"ok {i}")) for i in range(10)]
        await producer.publish_many(topic, records)
    runner = ConsumerRunner(
        kafka_settings, group_id=group, topics=[topic], handler=handler, batch_handler=batch_handler
    )
    await _run_until(runner, done)

    assert sorted(handled, key=lambda s: int(s[1:])) == [f"r{i}" for i in range(10) if i != 4]
    assert len(handled) == len(set(handled)), "nothing handled twice"
    dlq = await read_topic(kafka_settings.bootstrap_servers, dead_letter_topic(topic), expected=1)
    assert [dict(r.headers)["dlq.error.type"] for r in dlq] == [b"RuntimeError"]
    await wait_until(lambda: _committed(kafka_settings, group, topic, 10))


async def _committed(settings: KafkaSettings, group: str, topic: str, n: int) -> bool:
    return await committed_total(settings.bootstrap_servers, group, topic) == n
