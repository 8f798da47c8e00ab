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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
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
    delete,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .. import metrics
from ..events import Event, EventPayload
from ..kafka.producer import EventProducer, RawMessage
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
        event, row = self.row(topic, payload, key=key, subject=subject)
        await session.execute(self.table.insert().values(row))
        return event

    def row(
        self, topic: str, payload: EventPayload, *, key: str, subject: str | None = None
    ) -> tuple[Event[EventPayload], dict[str, Any]]:
        """The event and its outbox row, carrying the current trace context, for ``add_rows``: so
        each event of a batch carries its own record's trace."""
        event: Event[EventPayload] = Event(data=payload, source=self.source, subject=subject)
        value, headers = event.to_kafka()
        inject_context(headers)
        return event, {
            "event_id": event.id,
            "event_type": event.type,
            "topic": topic,
            "key": key,
            "headers": json.dumps([[k, v.decode()] for k, v in headers]),
            "value": value,
            "created_at": datetime.now(UTC),
        }

    async def add_rows(self, session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
        """Stage rows made by ``row`` in the caller's transaction, in their order (multi-row inserts)."""
        if rows:
            await session.execute(self.table.insert(), list(rows))

    async def forget(
        self, session: AsyncSession, *, topic: str, key: str, keep: Callable[[bytes], bool] | None = None
    ) -> int:
        """Delete, in the caller's transaction, the rows of every event on ``topic`` with ``key``
        (but those whose value ``keep`` says to keep), published or not: their values hold the
        data an erasure removes. An unpublished one is never published. Returns how many rows
        went. (Rare: it scans the table, which has no index on ``key``.)"""
        t = self.table
        where = (t.c.topic == topic, t.c.key == key)
        if keep is None:
            result = await session.execute(delete(t).where(*where))
            return result.rowcount or 0  # type: ignore[attr-defined, no-any-return]
        rows = (await session.execute(select(t.c.id, t.c.value).where(*where))).all()
        gone = [row.id for row in rows if not keep(row.value)]
        if gone:
            await session.execute(delete(t).where(t.c.id.in_(gone)))
        return len(gone)


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
            published = await self._publish_rows(rows)
            # Mark what the broker acknowledged, even if another row failed.
            if published:
                await session.execute(update(t).where(t.c.id.in_(published)).values(published_at=datetime.now(UTC)))
        if published:
            self.progress.advanced()
            self.progress.backlog(len(rows) - len(published))
        return len(published)

    async def _publish_rows(self, rows: Sequence[Any]) -> list[int]:
        """Publish rows as one batch (every send queued before any ack is awaited), each under a
        span whose parent is the context of the transaction that wrote it. Returns the ids the
        broker acknowledged; the first failure is raised after those are known, so they are marked.

        A row whose send failed is published again on a later pass, possibly after a newer row of
        the same key that succeeded in this one: consumers are idempotent by event id, not by order
        across a failure."""
        spans = []
        messages = []
        for row in rows:
            stored = json.loads(row.headers)
            headers = [(k, v.encode()) for k, v in stored]
            span = tracer().start_span(
                f"{row.topic} publish",
                context=extract_context(headers),
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.destination.name": row.topic,
                    "messaging.message.id": dict(stored).get("ce_id", ""),
                    "lmforge.outbox": True,
                },
            )
            with trace.use_span(span, end_on_exit=False):
                trace_free = [(k, v) for k, v in headers if k not in _TRACE_HEADERS]
                messages.append(RawMessage(row.topic, row.value, row.key.encode(), inject_context(trace_free)))
            spans.append(span)
        outcomes = await self.producer.send_raw_many(messages)
        published: list[int] = []
        failure: Exception | None = None
        for row, span, outcome in zip(rows, spans, outcomes, strict=True):
            if isinstance(outcome, Exception):
                span.set_status(StatusCode.ERROR, describe_error(outcome))
                failure = failure or outcome
            else:
                published.append(row.id)
                metrics.outbox_published.labels(row.topic).inc()
            span.end()
        if failure is not None and not published:
            raise failure
        if failure is not None:
            log.warning("outbox relay: some rows not acknowledged, will retry", error=describe_error(failure))
        return published

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
