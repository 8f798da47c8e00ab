"""Inbox, outbox and migrations on both databases: SQLite (embedded) and the real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import MetaData, func, select

from lmforge.common.db import Database, Inbox, Outbox, OutboxRelay, upgrade_database
from lmforge.common.events import RawRecordV1, decode_event
from lmforge.common.kafka import EventProducer
from lmforge.common.settings import KafkaSettings

from ..helpers import read_topic
from .factories import raw_record

EXAMPLE_MIGRATIONS = Path(__file__).parent / "alembic_example"


@pytest.fixture
async def schema(database: Database) -> tuple[Inbox, Outbox]:
    metadata = MetaData()
    inbox, outbox = Inbox(metadata), Outbox(metadata, source="lmforge/tests")
    await database.create_all(metadata)
    return inbox, outbox


async def test_inbox_claims_each_event_once_per_group(database: Database, schema: tuple[Inbox, Outbox]) -> None:
    inbox, _ = schema
    async with database.sessions.begin() as s:
        assert await inbox.claim(s, "preprocess", "e1") is True
    async with database.sessions.begin() as s:
        assert await inbox.claim(s, "preprocess", "e1") is False
        assert await inbox.claim(s, "registry", "e1") is True  # another group handles it independently


async def test_inbox_claim_rolls_back_with_the_handlers_transaction(
    database: Database, schema: tuple[Inbox, Outbox]
) -> None:
    inbox, _ = schema

    class HandlerFailed(Exception):
        pass

    with pytest.raises(HandlerFailed):
        async with database.sessions.begin() as s:
            assert await inbox.claim(s, "g", "e2")
            raise HandlerFailed
    # The failed attempt left no claim behind, so the retry does the work.
    async with database.sessions.begin() as s:
        assert await inbox.claim(s, "g", "e2") is True


async def test_outbox_relay_publishes_exactly_the_committed_rows(
    database: Database, schema: tuple[Inbox, Outbox], kafka_settings: KafkaSettings, unique: str
) -> None:
    _, outbox = schema
    topic = f"outbox-{unique}"
    from lmforge.common.kafka import ensure_topics

    await ensure_topics(kafka_settings, [topic])
    async with database.sessions.begin() as s:
        committed_a = await outbox.add(s, topic, raw_record("a"), key="crm:a")
        committed_b = await outbox.add(s, topic, raw_record("b"), key="crm:b")
    with pytest.raises(RuntimeError):
        async with database.sessions.begin() as s:
            await outbox.add(s, topic, raw_record("rolled-back"), key="crm:x")
            raise RuntimeError("state change failed")

    async with EventProducer(kafka_settings, source="lmforge/tests") as producer:
        relay = OutboxRelay(outbox, database.sessions, producer)
        assert await relay.publish_pending() == 2
        assert await relay.publish_pending() == 0  # marked published: never sent twice

    records = await read_topic(kafka_settings.bootstrap_servers, topic, expected=2)
    events = [decode_event(r.headers, r.value, RawRecordV1) for r in records]
    assert sorted(e.id for e in events) == sorted([committed_a.id, committed_b.id])
    assert {e.data.source_id for e in events} == {"a", "b"}
    async with database.sessions() as s:
        t = outbox.table
        pending = (await s.execute(select(func.count()).where(t.c.published_at.is_(None)))).scalar_one()
    assert pending == 0


async def test_outbox_relay_sends_a_batch_and_one_refused_row_hides_no_other_ack(
    database: Database, schema: tuple[Inbox, Outbox], kafka_settings: KafkaSettings, unique: str
) -> None:
    """The relay queues a pass's rows together; a row the broker refuses (here: over the
    producer's max_request_size) stays unpublished, while the rows around it are marked."""
    _, outbox = schema
    topic = f"outbox-batch-{unique}"
    from lmforge.common.kafka import ensure_topics

    await ensure_topics(kafka_settings, [topic])
    async with database.sessions.begin() as s:
        for i in range(5):
            await outbox.add(s, topic, raw_record(f"r{i}"), key=f"crm:r{i}")
        await outbox.add(s, topic, raw_record("huge", text="x" * 2 * 1024 * 1024), key="crm:huge")
        for i in range(5, 10):
            await outbox.add(s, topic, raw_record(f"r{i}"), key=f"crm:r{i}")

    async with EventProducer(kafka_settings, source="lmforge/tests") as producer:
        relay = OutboxRelay(outbox, database.sessions, producer)
        assert await relay.publish_pending() == 10
        assert relay.progress.waiting == 1, "the refused row still waits"

    records = await read_topic(kafka_settings.bootstrap_servers, topic, expected=10)
    events = [decode_event(r.headers, r.value, RawRecordV1) for r in records]
    assert sorted(e.data.source_id for e in events) == sorted(f"r{i}" for i in range(10))
    async with database.sessions() as s:
        t = outbox.table
        left = (await s.execute(select(t.c.key).where(t.c.published_at.is_(None)))).scalars().all()
    assert left == ["crm:huge"]


async def test_outbox_row_carries_trace_context(
    database: Database, schema: tuple[Inbox, Outbox], span_exporter: object
) -> None:
    from lmforge.common.telemetry import tracer

    _, outbox = schema
    with tracer().start_as_current_span("registry promote") as span:
        async with database.sessions.begin() as s:
            await outbox.add(s, "model-events", raw_record("t"), key="m")
    async with database.sessions() as s:
        headers = dict(json.loads((await s.execute(select(outbox.table.c.headers))).scalar_one()))
    assert format(span.get_span_context().trace_id, "032x") in headers["traceparent"]


async def test_relay_publish_continues_the_writers_trace(
    database: Database,
    schema: tuple[Inbox, Outbox],
    kafka_settings: KafkaSettings,
    span_exporter: InMemorySpanExporter,
    unique: str,
) -> None:
    from lmforge.common.kafka import ensure_topics
    from lmforge.common.telemetry import tracer

    _, outbox = schema
    topic = f"relay-trace-{unique}"
    await ensure_topics(kafka_settings, [topic])
    with tracer().start_as_current_span("registry promote") as writer:
        async with database.sessions.begin() as s:
            await outbox.add(s, topic, raw_record("t"), key="m")
    async with EventProducer(kafka_settings, source="lmforge/tests") as producer:
        assert await OutboxRelay(outbox, database.sessions, producer).publish_pending() == 1
    trace_id = writer.get_span_context().trace_id
    publish = next(
        s for s in span_exporter.get_finished_spans() if s.name == f"{topic} publish" and s.context.trace_id == trace_id
    )
    assert publish.parent is not None and publish.parent.span_id == writer.get_span_context().span_id
    (record,) = await read_topic(kafka_settings.bootstrap_servers, topic, expected=1)
    traceparent = dict(record.headers)["traceparent"].decode()
    assert traceparent.split("-")[2] == format(publish.context.span_id, "016x")


async def test_alembic_pattern_migrates_to_the_models(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from .alembic_example.models import inbox, metadata

    await upgrade_database(database_url, EXAMPLE_MIGRATIONS)
    await upgrade_database(database_url, EXAMPLE_MIGRATIONS)  # idempotent at head
    db = Database(database_url)
    try:
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
        assert diff == []
        async with db.sessions.begin() as s:
            assert await inbox.claim(s, "g", "e") is True
    finally:
        await db.dispose()
