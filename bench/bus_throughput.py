"""Consumer-runner throughput against raw aiokafka, on the same real broker, in the same run.

Each side produces N messages to a fresh topic and consumes them in a consumer group with manual
commits. The raw side is the floor any plumbing adds to: AIOKafkaProducer.send + gather, then
AIOKafkaConsumer.getmany + commit per batch. The runner side is lmforge's EventProducer
(CloudEvents headers, trace context, acks=all) and ConsumerRunner (process spans, retry/DLQ
wrapper, metrics, per-batch commit) with a no-op handler. Both sides send byte-identical messages.

    .venv/bin/python bench/bus_throughput.py [--messages 20000] [--rounds 3]

Last line: ``bus: <runner msgs/s> vs raw <raw msgs/s>, ratio <r>`` (medians over the rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from lmforge.common.events import Headers, RawRecordV1
from lmforge.common.kafka import ConsumerRunner, EventProducer, InboundMessage, ensure_topics
from lmforge.common.settings import KafkaSettings
from lmforge.common.telemetry import setup_tracing
from lmforge.devstack.servers import TansuBroker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.common.factories import raw_record


async def raw_round(settings: KafkaSettings, n: int, messages: list[tuple[bytes, Headers]]) -> float:
    topic, group = f"bench-raw-{uuid.uuid4().hex[:8]}", f"bench-raw-{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings, [topic])
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
    )
    await consumer.start()
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=50)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=settings.linger_ms)
    await producer.start()

    async def consume() -> None:
        seen = 0
        while seen < n:
            batch = await consumer.getmany(timeout_ms=100, max_records=settings.max_batch_size)
            for recs in batch.values():
                seen += len(recs)
            if batch:
                await consumer.commit()

    started = time.perf_counter()
    consuming = asyncio.create_task(consume())
    futures = [
        await producer.send(topic, value=v, key=f"k{i % 16}".encode(), headers=h) for i, (v, h) in enumerate(messages)
    ]
    await asyncio.gather(*futures)
    await consuming
    elapsed = time.perf_counter() - started
    await producer.stop()
    await consumer.stop()
    return n / elapsed


async def runner_round(settings: KafkaSettings, n: int, payloads: list[RawRecordV1]) -> float:
    topic, group = f"bench-run-{uuid.uuid4().hex[:8]}", f"bench-run-{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings, [topic])
    seen = 0
    done = asyncio.Event()

    async def handler(msg: InboundMessage) -> None:  # the no-op handler: count, nothing else
        nonlocal seen
        seen += 1
        if seen >= n:
            done.set()

    runner = ConsumerRunner(settings, group_id=group, topics=[topic], handler=handler)
    await runner.start()
    task = runner.run_in_background()
    while not runner.assignment():
        await asyncio.sleep(0.05)
    async with EventProducer(settings, source="bench") as producer:
        started = time.perf_counter()
        await producer.publish_many(topic, [(f"k{i % 16}", p) for i, p in enumerate(payloads)])
        await done.wait()
        runner.request_stop()
        await task  # the last batch's commit is inside the timed window, as on the raw side
        elapsed = time.perf_counter() - started
    await runner.stop()
    return n / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bootstrap", help="use a running broker instead of starting Tansu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    setup_tracing("bench")  # spans are created (and dropped): the runner pays its real tracing cost

    payloads = [raw_record(f"r{i}") for i in range(args.messages)]
    from lmforge.common.events import Event

    # The raw side sends byte-identical messages: same value, same CloudEvents and trace headers.
    messages = [Event(data=p, source="bench").to_kafka() for p in payloads]
    for _, headers in messages:
        headers.append(("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))
    with tempfile.TemporaryDirectory() as tmp:
        broker = None
        if args.bootstrap is None:
            broker = TansuBroker(Path(tmp))
            broker.start()
        bootstrap = args.bootstrap or broker.bootstrap_servers  # type: ignore[union-attr]
        settings = KafkaSettings(
            bootstrap_servers=bootstrap,
            poll_timeout_ms=100,
            topic_partitions=4,
            session_timeout_ms=6_000,
            heartbeat_interval_ms=500,
        )
        try:
            raw, run = [], []
            for r in range(args.rounds):
                raw.append(await raw_round(settings, args.messages, messages))
                run.append(await runner_round(settings, args.messages, payloads))
                print(f"round {r + 1}: runner {run[-1]:,.0f} msgs/s, raw {raw[-1]:,.0f} msgs/s", flush=True)
        finally:
            if broker is not None:
                broker.stop()
    # Rounds alternate raw/runner on the same broker; the ratio is the median of per-round ratios,
    # which cancels most of the noise of a shared machine.
    ratio = statistics.median(r / b for r, b in zip(run, raw, strict=True))
    print(f"bus: {statistics.median(run):.0f} msgs/s vs raw {statistics.median(raw):.0f} msgs/s, ratio {ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
