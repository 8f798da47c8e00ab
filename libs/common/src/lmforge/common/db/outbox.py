"""The transactional outbox: an event row written in the caller's transaction, and a relay.

``Outbox.add`` encodes the CloudEvent (with the current trace context) into a row of the same
transaction as the state change it announces. ``OutboxRelay`` publishes committed rows in id
order, waits for ``acks=all``, then marks them published. A rolled-back transaction leaves no
row, so nothing unannounced is ever published. A crash between publish and mark means the row is
published again: consumers are idempotent by event id (the inbox).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from opentelemetry.trace import SpanKind
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .. import metrics
from ..events import Event, EventPayload
from ..kafka.producer import EventProducer
from ..redaction import describe_error
from ..supervisor import Progress
from ..telemetry import extract_context, get_logger, inject_context, tracer

log = get_logger(__name__)
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})


class Outbox:
    def __init__(self, metadata: MetaData, table_name: str = "outbox", source: str = "lmforge") -> None:
        self.source = source
        self.table = Table(
            table_name,
            metadata,
            Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
            Column("event_id", String(64), nullable=False, unique=True),
            Column("event_type", String(200), nullable=False),
            Column("topic", String(200), nullable=False),
            Column("key", String(500), nullable=False),
            Column("headers", Text, nullable=False),
            Column("value", LargeBinary, nullable=False),
            Column("created_at", DateTime(timezone=True), nullable=False),
            Column("published_at", DateTime(timezone=True), nullable=True, index=True),
        )

    async def add(
        self,
        session: AsyncSession,
        topic: str,
        payload: EventPayload,
        *,
        key: str,
        subject: str | None = None,
    ) -> Event[EventPayload]:
        """Stage an event in the caller's transaction; it is published only if that commits."""
        event: Event[EventPayload] = Event(data=payload, source=self.source, subject=subject)
        value, headers = event.to_kafka()
        inject_context(headers)
        await session.execute(
            self.table.insert().values(
                event_id=event.id,
                event_type=event.type,
                topic=topic,
                key=key,
                headers=json.dumps([[k, v.decode()] for k, v in headers]),
                value=value,
                created_at=datetime.now(UTC),
            )
        )
        return event


class OutboxRelay:
    """Publishes committed outbox rows. Run one per service; ``wake()`` after a commit for low latency."""

    def __init__(
        self,
        outbox: Outbox,
        sessions: async_sessionmaker[AsyncSession],
        producer: EventProducer,
        *,
        poll_interval_s: float = 1.0,
        batch_size: int = 100,
    ) -> None:
        self.outbox = outbox
        self.sessions = sessions
        self.producer = producer
        self.poll_interval_s = poll_interval_s
        self.batch_size = batch_size
        self._wake = asyncio.Event()
        self._stopping = False
        self.progress = Progress()

    def wake(self) -> None:
        self._wake.set()

    async def publish_pending(self) -> int:
        """One pass: publish up to ``batch_size`` committed rows, oldest first. Returns the count."""
        t = self.outbox.table
        async with self.sessions.begin() as session:
            rows = (
                await session.execute(
                    select(t.c.id, t.c.topic, t.c.key, t.c.headers, t.c.value)
                    .where(t.c.published_at.is_(None))
                    .order_by(t.c.id)
                    .limit(self.batch_size)
                    # Several relay replicas on PostgreSQL each take different rows.
                    .with_for_update(skip_locked=True)
                )
            ).all()
            metrics.outbox_pending.set(len(rows))
            self.progress.backlog(len(rows))
            published: list[int] = []
            try:
                for row in rows:
                    await self._publish_row(row.topic, row.key, row.value, json.loads(row.headers))
                    published.append(row.id)
                    metrics.outbox_published.labels(row.topic).inc()
            finally:
                # Mark what the broker acknowledged, even if a later row failed.
                if published:
                    await session.execute(update(t).where(t.c.id.in_(published)).values(published_at=datetime.now(UTC)))
        if published:
            self.progress.advanced()
            self.progress.backlog(len(rows) - len(published))
        return len(published)

    async def _publish_row(self, topic: str, key: str, value: bytes, stored: list[list[str]]) -> None:
        """Publish under a span whose parent is the context of the transaction that wrote the row."""
        headers = [(k, v.encode()) for k, v in stored]
        trace_free = [(k, v) for k, v in headers if k not in _TRACE_HEADERS]
        with tracer().start_as_current_span(
            f"{topic} publish",
            context=extract_context(headers),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": topic,
                "messaging.message.id": dict(stored).get("ce_id", ""),
                "lmforge.outbox": True,
            },
        ):
            await self.producer.send_raw(topic, value, key=key.encode(), headers=inject_context(trace_free))

    async def run(self) -> None:
        """Publish committed rows until stopped. A failed pass (broker away, database error) is
        logged, counted and retried after a backoff: the relay never dies of it. Rows wait in the
        table meanwhile, and ``progress`` tells the supervisor that they do."""
        backoff = self.poll_interval_s
        while not self._stopping:
            try:
                count = await self.publish_pending()
            except Exception as exc:  # noqa: BLE001 - any failed pass is retried; the rows are still there
                metrics.outbox_relay_errors.inc()
                log.warning("outbox relay pass failed, will retry", error=describe_error(exc), retry_in_s=backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = self.poll_interval_s
            if count >= self.batch_size:
                continue
            await self._sleep(self.poll_interval_s)

    async def _sleep(self, seconds: float) -> None:
        """Wait for ``wake()`` or ``seconds``, whichever comes first."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
