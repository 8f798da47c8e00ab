"""Small test utilities: read a topic with the raw client, wait for a condition, the internal credential."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from lmforge.common.settings import InternalAuthSettings

# The internal credential of services built in-process by the tests, and what their callers send.
INTERNAL_TOKEN = "test-internal-token-0123456789abcdef"
INTERNAL_AUTH = InternalAuthSettings(token=INTERNAL_TOKEN)
INTERNAL_HEADERS = {"Authorization": f"Bearer {INTERNAL_TOKEN}"}


async def read_topic(
    bootstrap: str, topic: str, expected: int, timeout: float = 20.0
) -> list[ConsumerRecord[Any, Any]]:
    """Read ``expected`` records from the start of ``topic`` (no group, raw aiokafka)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    records: list[ConsumerRecord[Any, Any]] = []
    try:
        partitions = None
        deadline = time.monotonic() + timeout
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                partitions = None
                await consumer._client.force_metadata_update()  # topic may be brand new
                await asyncio.sleep(0.1)
        assert partitions, f"topic {topic} does not exist"
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
        # Anything beyond ``expected`` would be a duplicate publish: read a little longer to see it.
        batch = await consumer.getmany(timeout_ms=300)
        for recs in batch.values():
            records.extend(recs)
    finally:
        await consumer.stop()
    return records


async def committed_total(bootstrap: str, group: str, topic: str) -> int:
    """Sum of the group's committed offsets over the topic's partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
        total = 0
        for p in partitions:
            offset = await consumer.committed(TopicPartition(topic, p))
            total += offset or 0
        return total
    finally:
        await consumer.stop()


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 20.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")
