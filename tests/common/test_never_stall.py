"""The consumer runner never stalls, on the real Tansu broker.

- an oversized poison record is dead-lettered (its value in the artifact store, or cut), and the
  records after it arrive;
- a partition whose handler hangs does not hold the other partitions, and the runner says it is
  stalled;
- a failing poll is retried, not fatal.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import ConsumerRecord

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.events import InvalidEvent, dead_letter_topic
from lmforge.common.kafka import DLQ_ERROR, ConsumerRunner, InboundMessage
from lmforge.common.kafka.admin import ensure_topics
from lmforge.common.kafka.consumer import (
    DLQ_VALUE_BYTES,
    DLQ_VALUE_OMITTED,
    DLQ_VALUE_REF,
    DLQ_VALUE_SHA256,
    DLQ_VALUE_TRUNCATED,
)
from lmforge.common.settings import KafkaSettings

from ..helpers import read_topic, wait_until

BIG = 2 * 1024 * 1024


async def _produce(bootstrap: str, topic: str, items: list[tuple[int, bytes]]) -> None:
    """Send (partition, value) pairs with a raw client that allows 4 MiB messages."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        for partition, value in items:
            await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()


def _json_handler(seen: list[str]):  # type: ignore[no-untyped-def]
    async def handler(msg: InboundMessage) -> None:
        assert msg.value is not None
        if len(msg.value) > 100_000:
            raise InvalidEvent("record over 100000 bytes")
        seen.append(json.loads(msg.value)["id"])

    return handler


async def _dead_letter_of_big_record(
    settings: KafkaSettings, topic: str, big: bytes, artifacts: ArtifactStore | None = None
) -> ConsumerRecord[Any, Any]:
    """Run a runner over [big, next] on one partition; return the one dead letter, once ``next``
    (the record after the poison) was handled."""
    await ensure_topics(settings, [topic, dead_letter_topic(topic)])
    seen: list[str] = []
    runner = ConsumerRunner(
        settings, group_id=f"g-{topic}", topics=[topic], handler=_json_handler(seen), artifacts=artifacts
    )
    await runner.start()
    task = runner.run_in_background()
    try:
        await _produce(settings.bootstrap_servers, topic, [(0, big), (0, b'{"id": "next"}')])
        await wait_until(lambda: _has(seen, 1))
    finally:
        runner.request_stop()
        await task
        await runner.stop()
    assert seen == ["next"], "the record after the poison was handled"
    (letter,) = await read_topic(settings.bootstrap_servers, dead_letter_topic(topic), 1)
    return letter


async def test_oversized_dead_letter_goes_to_the_artifact_store_and_later_records_arrive(
    kafka_settings: KafkaSettings, unique: str, tmp_path: Path
) -> None:
    topic, group = f"big-{unique}", f"g-{unique}"
    await ensure_topics(kafka_settings, [topic, dead_letter_topic(topic)])
    store = ArtifactStore(str(tmp_path / "artifacts"))
    seen: list[str] = []
    runner = ConsumerRunner(
        kafka_settings, group_id=group, topics=[topic], handler=_json_handler(seen), artifacts=store
    )
    await runner.start()
    task = runner.run_in_background()
    big = json.dumps({"id": "big", "text": "x" * BIG}).encode()
    try:
        await _produce(
            kafka_settings.bootstrap_servers,
            topic,
            [(0, big), *((p, json.dumps({"id": f"after-{p}-{i}"}).encode()) for i in range(3) for p in (0, 1))],
        )
        await wait_until(lambda: _has(seen, 6))
    finally:
        runner.request_stop()
        await task
        await runner.stop()

    assert sorted(seen) == sorted(f"after-{p}-{i}" for i in range(3) for p in (0, 1))
    (letter,) = await read_topic(kafka_settings.bootstrap_servers, dead_letter_topic(topic), 1)
    headers = {k: v.decode() for k, v in letter.headers}
    assert letter.value == b"", "the value is in the store, not in the dead letter"
    assert "record over 100000 bytes" in headers[DLQ_ERROR]
    assert int(headers[DLQ_VALUE_BYTES]) == len(big)
    assert headers[DLQ_VALUE_SHA256] == hashlib.sha256(big).hexdigest()
    stored = store.read_bytes(store.key_of(headers[DLQ_VALUE_REF]))
    assert stored == big, "the dead letter's reference holds the original value, byte for byte"


async def test_oversized_dead_letter_without_a_store_is_cut_and_says_so(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    big = json.dumps({"id": "big", "text": "y" * BIG}).encode()
    letter = await _dead_letter_of_big_record(kafka_settings, f"bigcut-{unique}", big)
    headers = {k: v.decode() for k, v in letter.headers}
    assert headers[DLQ_VALUE_TRUNCATED] == "true"
    assert int(headers[DLQ_VALUE_BYTES]) == len(big)
    assert letter.value == big[: kafka_settings.dead_letter_max_value_bytes]


async def test_a_refused_dead_letter_is_not_retried_as_is_but_sent_without_its_value(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    """With the size guard set above the producer's limit, the full letter is refused for good
    (MessageSizeTooLargeError): the runner falls back at once to a letter without the value."""
    settings = kafka_settings.model_copy(update={"dead_letter_max_value_bytes": 64 * 1024 * 1024})
    big = json.dumps({"id": "big", "text": "z" * BIG}).encode()
    letter = await _dead_letter_of_big_record(settings, f"refused-{unique}", big)
    headers = {k: v.decode() for k, v in letter.headers}
    assert letter.value == b""
    assert headers[DLQ_VALUE_OMITTED] == "true" and int(headers[DLQ_VALUE_BYTES]) == len(big)
    assert "record over 100000 bytes" in headers[DLQ_ERROR]


async def test_a_hanging_partition_does_not_hold_the_others_and_is_reported_stalled(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    topic, group = f"hang-{unique}", f"g-{unique}"
    await ensure_topics(kafka_settings, [topic, dead_letter_topic(topic)])
    release = asyncio.Event()
    seen: list[str] = []

    async def handler(msg: InboundMessage) -> None:
        if msg.partition == 0:
            await release.wait()  # a dependency that never answers
        assert msg.value is not None
        seen.append(json.loads(msg.value)["id"])

    runner = ConsumerRunner(kafka_settings, group_id=group, topics=[topic], handler=handler)
    await runner.start()
    task = runner.run_in_background()
    try:
        await _produce(kafka_settings.bootstrap_servers, topic, [(0, b'{"id": "stuck"}')])
        await asyncio.sleep(0.5)
        # Records for the other partition arrive in later polls, while partition 0 hangs.
        for i in range(5):
            await _produce(kafka_settings.bootstrap_servers, topic, [(1, json.dumps({"id": f"p1-{i}"}).encode())])
        await wait_until(lambda: _has(seen, 5))
        assert seen == [f"p1-{i}" for i in range(5)]
        await asyncio.sleep(0.3)
        assert runner.stalled(0.2), "a partition with a record in hand and no progress is stalled"
        assert not runner.stalled(60)
        release.set()
        await wait_until(lambda: _has(seen, 6))
        await asyncio.sleep(0.2)
        assert not runner.stalled(0.2), "caught up: nothing waits"
    finally:
        release.set()
        runner.request_stop()
        await task
        await runner.stop()
    assert seen[-1] == "stuck"


async def test_a_failing_poll_is_retried(kafka_settings: KafkaSettings, unique: str) -> None:
    topic, group = f"poll-{unique}", f"g-{unique}"
    await ensure_topics(kafka_settings, [topic, dead_letter_topic(topic)])
    seen: list[str] = []
    runner = ConsumerRunner(kafka_settings, group_id=group, topics=[topic], handler=_json_handler(seen))
    await runner.start()
    consumer = runner._require()
    real_getmany = consumer.getmany
    failures = 3

    async def flaky_getmany(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal failures
        if failures:
            failures -= 1
            raise KafkaConnectionError("connection to the broker lost")
        return await real_getmany(*args, **kwargs)

    consumer.getmany = flaky_getmany  # type: ignore[method-assign]
    task = runner.run_in_background()
    try:
        await _produce(kafka_settings.bootstrap_servers, topic, [(0, b'{"id": "one"}')])
        await wait_until(lambda: _has(seen, 1))
    finally:
        runner.request_stop()
        await task
        await runner.stop()
    assert failures == 0 and seen == ["one"]


async def _has(items: list[str], n: int) -> bool:
    return len(items) >= n
