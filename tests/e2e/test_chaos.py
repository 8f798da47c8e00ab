"""Chaos on the data path: ingest, preprocess and the gateway as processes on real Tansu and SQLite.

- bad upstream input (a 2 MB record, bytes that are not UTF-8) is dead-lettered with a reason and
  the records after it arrive; a producer in another language (librdkafka, through
  ``confluent-kafka``) is read like any other;
- ``kill -9`` of preprocess, then of ingest, while records flow: every record ends in
  ``cleaned-data`` and in each store exactly once;
- the broker goes away mid-ingest: the gateway answers 503 with ``Retry-After`` (never 202
  without an ack), and when the broker is back the pipeline resumes with no service restarted.
  The broker is frozen (SIGSTOP: unreachable, connections hang) and thawed, so it comes back with
  its topics and offsets, as a real Kafka broker does; this Tansu build keeps everything in
  memory, so a restarted Tansu is a new, empty cluster rather than the same broker returning.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Producer as LibrdkafkaProducer

from lmforge.common.events import Topic, dead_letter_topic
from lmforge.common.kafka import DLQ_ERROR, DLQ_ORIGINAL_TOPIC
from lmforge.devstack.stack import Stack

from ..helpers import read_topic, wait_until

pytestmark = pytest.mark.slow

RETRYABLE = {502, 503, 504}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("chaos"), only=("ingest", "preprocess", "gateway")) as running:
        yield running


def _count(stack: Stack, service: str, sql: str) -> int:
    with sqlite3.connect(stack.workdir / "db" / f"{service}.db") as conn:
        return int(conn.execute(sql).fetchone()[0])


def _cleaned_ids(stack: Stack, source: str) -> list[str]:
    with sqlite3.connect(stack.workdir / "db" / "preprocess.db") as conn:
        rows = conn.execute("SELECT record_id FROM cleaned_records WHERE source = ?", (source,)).fetchall()
    return [r[0] for r in rows]


def _record(source: str, i: int, run: str) -> dict[str, str]:
    return {"source": source, "source_id": f"{i}", "text": f"ticket {i} ({run}): parcel {i * 7919} arrived damaged"}


async def _wait_cleaned(stack: Stack, source: str, n: int, timeout: float = 120) -> None:
    async def done() -> bool:
        return len(_cleaned_ids(stack, source)) >= n

    await wait_until(done, timeout=timeout, interval=0.5)


class Sender:
    """A client that posts batches through the gateway and retries what was not acknowledged."""

    def __init__(self, stack: Stack) -> None:
        self.client = httpx.AsyncClient(
            base_url=stack.gateway_url, headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=30
        )
        self.statuses: dict[int, int] = defaultdict(int)
        self.acknowledged = 0

    async def post(self, batch: list[dict[str, str]], deadline_s: float = 120) -> httpx.Response:
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                r = await self.client.post("/v1/records", json=batch)
            except httpx.TransportError:
                self.statuses[0] += 1
            else:
                self.statuses[r.status_code] += 1
                if r.status_code == 202:
                    self.acknowledged += len(batch)
                    return r
                assert r.status_code in RETRYABLE, f"{r.status_code}: {r.text}"
                if r.status_code == 503:
                    assert r.headers.get("Retry-After"), "a 503 says when to retry"
            assert time.monotonic() < deadline, f"not acknowledged in {deadline_s}s: {dict(self.statuses)}"
            await asyncio.sleep(0.3)


async def test_bad_upstream_input_is_dead_lettered_and_a_c_client_is_read(stack: Stack) -> None:
    assert stack.broker is not None
    bootstrap, topic = stack.broker.bootstrap_servers, stack.upstream_topic
    raw = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=4 * 1024 * 1024)
    await raw.start()
    try:
        big = json.dumps({"source": "erp", "source_id": "big", "text": "x" * 2 * 1024 * 1024}).encode()
        await raw.send_and_wait(topic, big, key=b"erp:big")
        await raw.send_and_wait(topic, b'{"source": "erp", "source_id": "bad", "text": "caf\xe9 \xff"}', key=b"erp:bad")
        for i in range(5):
            await raw.send_and_wait(topic, json.dumps(_record("erp", i, "after-bad")).encode(), key=f"erp:{i}".encode())
    finally:
        await raw.stop()

    # A producer in another language: librdkafka (C), through confluent-kafka.
    c_producer = LibrdkafkaProducer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(5):
        c_producer.produce(topic, json.dumps(_record("plm", i, "librdkafka")).encode(), key=f"plm:{i}".encode())
    assert c_producer.flush(30) == 0, "librdkafka delivered every message"

    await _wait_cleaned(stack, "erp", 5)
    await _wait_cleaned(stack, "plm", 5)
    assert sorted(_cleaned_ids(stack, "plm")) == [f"plm:{i}" for i in range(5)]
    letters = await read_topic(bootstrap, dead_letter_topic(topic), expected=2)
    reasons = {}
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        assert headers[DLQ_ORIGINAL_TOPIC] == topic
        reasons[letter.key] = headers[DLQ_ERROR]
    assert set(reasons) == {b"erp:big", b"erp:bad"}, "each bad record dead-lettered once"
    assert "bytes" in reasons[b"erp:big"] and "at most" in reasons[b"erp:big"]
    assert "not JSON" in reasons[b"erp:bad"] or "UTF-8" in reasons[b"erp:bad"]


async def test_kill_9_of_preprocess_then_ingest_loses_and_doubles_nothing(stack: Stack) -> None:
    run = uuid.uuid4().hex[:6]
    source = f"crm{run}"
    batches = [[_record(source, b * 10 + i, run) for i in range(10)] for b in range(40)]
    n = sum(len(b) for b in batches)
    sender = Sender(stack)
    sent = 0

    async def send_all() -> None:
        nonlocal sent
        for batch in batches:
            await sender.post(batch)
            sent += 1
            await asyncio.sleep(0.05)

    async def chaos() -> None:
        await wait_until(lambda: _true(sent >= 10), timeout=60)
        stack.kill_service("preprocess")
        stack.start_service("preprocess")
        await wait_until(lambda: _true(sent >= 22), timeout=120)
        stack.kill_service("ingest")
        await asyncio.sleep(1.0)  # clients meanwhile get 503 from the gateway and retry
        stack.start_service("ingest")

    try:
        await asyncio.gather(send_all(), chaos())
    finally:
        await sender.client.aclose()
    assert sender.acknowledged == n
    assert sender.statuses[503] > 0, "ingest was down while clients sent: they were told to retry"
    await asyncio.to_thread(stack.wait_ready, 120)
    await _wait_cleaned(stack, source, n)
    await asyncio.sleep(2)  # anything a crash would duplicate has had time to show up

    like = f"'{source}:%'"
    assert _count(stack, "ingest", f"SELECT count(*) FROM raw_records WHERE record_id LIKE {like}") == n
    assert (
        _count(stack, "ingest", f"SELECT count(DISTINCT record_id) FROM raw_records WHERE record_id LIKE {like}") == n
    )
    ids = _cleaned_ids(stack, source)
    assert len(ids) == n and len(set(ids)) == n, "every record in the store exactly once"

    assert stack.broker is not None
    total = _count(stack, "preprocess", "SELECT count(*) FROM cleaned_records")
    cleaned = await read_topic(stack.broker.bootstrap_servers, Topic.CLEANED_DATA, expected=total, timeout=60)
    events: dict[str, set[str]] = defaultdict(set)
    for rec in cleaned:
        headers = {k: v.decode() for k, v in rec.headers}
        record_id = json.loads(rec.value)["record_id"]
        if record_id.startswith(f"{source}:"):
            events[record_id].add(headers["ce_id"])
    assert len(events) == n, "every record reached cleaned-data"
    assert all(len(ids) == 1 for ids in events.values()), "a redelivery carries the same event id: one event each"


async def test_broker_outage_answers_503_and_the_pipeline_resumes_without_restarts(stack: Stack) -> None:
    assert stack.broker is not None
    run = uuid.uuid4().hex[:6]
    source = f"ops{run}"
    pids = {name: svc.proc.pid for name, svc in stack.services.items() if svc.proc is not None}
    sender = Sender(stack)
    try:
        await sender.post([_record(source, 0, run)])
        broker_pid = stack.broker.proc.pid  # type: ignore[union-attr]
        os.kill(broker_pid, signal.SIGSTOP)
        try:
            r = await sender.client.post("/v1/records", json=[_record(source, 1, run)])
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] and r.json()["error"]["code"] in (
                "broker_unavailable",
                "upstream_unavailable",
            )
        finally:
            os.kill(broker_pid, signal.SIGCONT)
        for i in range(1, 6):
            await sender.post([_record(source, i, run)], deadline_s=180)
    finally:
        await sender.client.aclose()
    await _wait_cleaned(stack, source, 6, timeout=180)
    assert sorted(_cleaned_ids(stack, source)) == sorted(f"{source}:{i}" for i in range(6))
    assert {name: svc.proc.pid for name, svc in stack.services.items() if svc.proc is not None} == pids, (
        "no service was restarted"
    )


async def _true(value: bool) -> bool:
    return value
