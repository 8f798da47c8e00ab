"""Records from the upstream topic to ``cleaned-data``, against a raw aiokafka round trip.

The pipeline side starts ingest and preprocess as processes (the embedded stack runner, SQLite,
a fresh Tansu broker), produces N distinct JSON records to the upstream topic and times until N
cleaned records are on ``cleaned-data``: ingest validates and stores each record and publishes it
to ``raw-data``; preprocess cleans it (HTML, normalisation, PII masking), checks exact and near
duplicates, stores it and publishes it through its outbox. The baseline, on the same broker in the
same run, produces N messages of the same size to a fresh topic and consumes them with raw
aiokafka (one hop, no processing): the floor of any pipeline on this bus.

    .venv/bin/python bench/pipeline_throughput.py [--records 2000]

Last line: ``pipeline: <records/s> upstream to cleaned-data vs raw bus <msgs/s>, ratio <r>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from lmforge.common.events import Topic
from lmforge.devstack.stack import Stack

TOPICS = [
    "my parcel arrived damaged and the box was open",
    "the invoice total does not match the order",
    "I cannot log in after resetting my password",
    "the refund has not reached my card yet",
    "the app crashes when I upload a photo",
]


def records(n: int, run: str) -> list[bytes]:
    out = []
    for i in range(n):
        text = (
            f"Customer: ticket {i} ({run}): {TOPICS[i % len(TOPICS)]}, reference {i * 7919 % 100003}, "
            f"mail me at user{i}@example.com. Agent: we are looking into case {i}."
        )
        out.append(json.dumps({"source": "bench", "source_id": f"{run}-{i}", "text": text}).encode())
    return out


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, v, key=str(i).encode()) for i, v in enumerate(values)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def count_until(bootstrap: str, topic: str, n: int, timeout_s: float) -> None:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        seen = 0
        deadline = time.monotonic() + timeout_s
        while seen < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {seen} of {n} records on {topic} after {timeout_s:.0f}s")
            batch = await consumer.getmany(timeout_ms=200)
            seen += sum(len(recs) for recs in batch.values())
    finally:
        await consumer.stop()


async def pipeline_round(stack: Stack, n: int) -> float:
    assert stack.broker is not None
    bootstrap = stack.broker.bootstrap_servers
    values = records(n, uuid.uuid4().hex[:6])
    started = time.perf_counter()
    await asyncio.gather(
        produce(bootstrap, stack.upstream_topic, values),
        count_until(bootstrap, Topic.CLEANED_DATA, n, timeout_s=600),
    )
    return n / (time.perf_counter() - started)


async def raw_round(stack: Stack, n: int, size: int) -> float:
    assert stack.broker is not None
    bootstrap = stack.broker.bootstrap_servers
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    values = [b"x" * size] * n
    await produce(bootstrap, topic, values[:1])  # create the topic outside the timer
    started = time.perf_counter()
    await asyncio.gather(produce(bootstrap, topic, values), count_until(bootstrap, topic, n + 1, timeout_s=120))
    return n / (time.perf_counter() - started)


async def main(n: int) -> None:
    with Stack(Path(tempfile.mkdtemp(prefix="lmforge-bench-")), only=("ingest", "preprocess")) as stack:
        size = sum(len(v) for v in records(100, "size")) // 100
        raw = await raw_round(stack, n, size)
        print(f"raw bus: {raw:,.0f} msgs/s ({n} messages of {size} bytes)")
        pipe = await pipeline_round(stack, n)
        print(f"pipeline: {pipe:,.0f} records/s ({n} records, ingest + preprocess)")
        ratio = pipe / raw
        print(f"pipeline: {pipe:.0f} records/s upstream to cleaned-data vs raw bus {raw:.0f} msgs/s, ratio {ratio:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    asyncio.run(main(parser.parse_args().records))
