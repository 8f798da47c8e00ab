"""The consumer runner: consumer groups, manual commits, retries, dead letters, graceful drain.

Guarantees (ARCHITECTURE.md, "Delivery semantics"):

- **At-least-once.** Offsets are committed manually, after the handler has returned, so a
  handler's side effects are durable before the offset moves. A crash before the commit means
  redelivery; handlers make that harmless with the inbox (``lmforge.common.db.Inbox``).
- **Batches, where a handler takes them.** With a ``batch_handler``, a partition's queued
  records go to it together (at most ``max_batch_size``), for one transaction instead of one per
  record; each record keeps its own process span in its own trace. If the batch handler raises,
  the batch's records are handled one at a time by ``handler`` instead, with its retries and dead
  letters: a batch handler needs no failure path of its own, only to be all-or-nothing.
- **Per-partition order, partitions independent.** Records of one partition are handled one
  after another by that partition's worker, fed from the partition's queue; the poll loop never
  waits on a handler, and fetching goes on while workers run. A partition whose worker falls
  ``max_batch_size`` records behind is paused until it catches up, so a slow or stuck partition
  holds a bounded number of records and never the rest. Each worker commits after each chunk.
- **Poison messages never block.** A handler error is retried with exponential backoff up to
  ``max_attempts``; then the record goes to ``<topic>.dlq`` with headers naming the original
  topic, partition, offset, the error and the attempt count, and the partition moves on.
  ``InvalidEvent`` (undecodable, failed validation) is dead-lettered at once: retrying cannot fix it.
- **A dead letter is always publishable.** A value over ``dead_letter_max_value_bytes`` goes to
  the artifact store, with a reference in the ``dlq.value.*`` headers (or, without a store, is cut
  and a header says so). A write the broker refuses for good (``PublishRejected``) is never
  retried as is: the runner falls back to a dead letter without the value.
- **A failing poll never kills the loop.** Broker errors in ``getmany`` are logged, counted and
  retried with backoff. ``stalled()`` tells the supervisor (and ``/readyz``) when a partition
  with records waiting has made no progress for a while.
- **Rebalance-safe.** When partitions are revoked, the in-flight batch stops after the records
  being handled, the finished records are committed, and nothing unprocessed is committed.
- **Graceful drain.** ``request_stop()`` (wired to SIGTERM) does the same, then leaves the group.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from .. import metrics
from ..artifacts import ArtifactStore
from ..events import Event, EventPayload, InvalidEvent, dead_letter_topic, decode_event
from ..redaction import describe_error, format_exception_safely
from ..settings import KafkaSettings
from ..telemetry import extract_context, get_logger, tracer
from .admin import ensure_topics
from .producer import BrokerUnavailable, EventProducer, PublishRejected

log = get_logger(__name__)

# Headers added to a dead-lettered record (the original headers are kept as they were).
DLQ_ORIGINAL_TOPIC = "dlq.original.topic"
DLQ_ORIGINAL_PARTITION = "dlq.original.partition"
DLQ_ORIGINAL_OFFSET = "dlq.original.offset"
DLQ_ERROR = "dlq.error"
DLQ_ERROR_TYPE = "dlq.error.type"
DLQ_ATTEMPTS = "dlq.attempts"
DLQ_CONSUMER_GROUP = "dlq.consumer.group"
DLQ_FAILED_AT = "dlq.failed.at"
# Set when the original value is not in the dead letter (too large, or refused by the broker).
DLQ_VALUE_BYTES = "dlq.value.bytes"
DLQ_VALUE_SHA256 = "dlq.value.sha256"
DLQ_VALUE_REF = "dlq.value.ref"
DLQ_VALUE_TRUNCATED = "dlq.value.truncated"
DLQ_VALUE_OMITTED = "dlq.value.omitted"
# Original headers kept in a value-less fallback dead letter.
_ESSENTIAL_HEADERS = frozenset({"ce_id", "ce_type", "ce_source", "ce_specversion", "ce_time", "traceparent"})


@dataclass(frozen=True)
class InboundMessage:
    """One Kafka record as a handler sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int

    @classmethod
    def from_record(cls, rec: ConsumerRecord[Any, Any]) -> InboundMessage:
        return cls(
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            key=rec.key,
            value=rec.value,
            headers=tuple(rec.headers or ()),
            timestamp_ms=rec.timestamp,
        )

    @property
    def key_str(self) -> str | None:
        return self.key.decode("utf-8", "replace") if self.key is not None else None

    def header(self, name: str) -> str | None:
        for k, v in reversed(self.headers):
            if k == name:
                return v.decode("utf-8", "replace")
        return None

    def event(self, expected: type[EventPayload] | tuple[type[EventPayload], ...] | None = None) -> Event[Any]:
        """Decode the CloudEvent; raises ``InvalidEvent`` (dead-lettered at once) if it is not one."""
        return decode_event(self.headers, self.value, expected)


Handler = Callable[[InboundMessage], Awaitable[None]]


@dataclass(frozen=True)
class BatchItem:
    """One record of a batch, with its own ``<topic> process`` span (a child of the record's trace
    context). Work done for this record alone runs with ``trace.use_span(item.span)``, so what it
    publishes (through the outbox) continues the record's trace."""

    message: InboundMessage
    span: trace.Span


BatchHandler = Callable[[Sequence[BatchItem]], Awaitable[None]]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.runner._drain_for_revoke(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned", group=self.runner.group_id, partitions=_fmt(assigned))


@dataclass(frozen=True)
class _TopicMetrics:
    """The runner's Prometheus children for one (group, topic), bound once."""

    processed: Any
    failed: Any
    dead_lettered: Any
    handler_seconds: Any

    @classmethod
    def bind(cls, group: str, topic: str) -> _TopicMetrics:
        return cls(
            processed=metrics.consumer_processed.labels(group, topic),
            failed=metrics.consumer_failed.labels(group, topic),
            dead_lettered=metrics.consumer_dead_lettered.labels(group, topic),
            handler_seconds=metrics.consumer_handler_seconds.labels(group, topic),
        )


def _traceparent(rec: ConsumerRecord[Any, Any]) -> bytes | None:
    for k, v in rec.headers or ():
        if k == "traceparent":
            return v  # type: ignore[no-any-return]
    return None


def _runs_by_trace(records: list[ConsumerRecord[Any, Any]]) -> list[list[ConsumerRecord[Any, Any]]]:
    """Split a partition's records into runs of consecutive records with the same traceparent.

    A batch published together (one publish span) is processed under one process span. Records
    without trace context each get their own span, so unrelated upstream records never share a trace.
    """
    runs: list[list[ConsumerRecord[Any, Any]]] = []
    last: bytes | None = None
    for rec in records:
        tp = _traceparent(rec)
        if runs and tp is not None and tp == last:
            runs[-1].append(rec)
        else:
            runs.append([rec])
        last = tp
    return runs


def _fmt(tps: set[TopicPartition] | Sequence[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)


class ConsumerRunner:
    """Runs ``handler`` for every record of ``topics`` as a member of consumer group ``group_id``."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        group_id: str,
        topics: Sequence[str],
        handler: Handler,
        batch_handler: BatchHandler | None = None,
        producer: EventProducer | None = None,
        client_id: str | None = None,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        self.settings = settings
        self.group_id = group_id
        self.topics = list(topics)
        self.handler = handler
        self.batch_handler = batch_handler
        self._producer = producer
        self._owns_producer = producer is None
        self._client_id = client_id or group_id
        self._consumer: AIOKafkaConsumer | None = None
        self._artifacts = artifacts
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._bound_metrics: dict[str, _TopicMetrics] = {}
        # One worker per partition with records in hand, fed from that partition's queue; a
        # partition is paused only while its queue is full.
        self._workers: dict[TopicPartition, asyncio.Task[None]] = {}
        self._pending: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        self._revoking: set[TopicPartition] = set()
        self._worker_error: BaseException | None = None
        # Per partition: when a record was last finished, and what was last known to wait.
        self._last_progress: dict[TopicPartition, float] = {}
        self._lag: dict[TopicPartition, int] = {}
        self._next_offset: dict[TopicPartition, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if s.create_topics:
            await ensure_topics(s, [*self.topics, *(dead_letter_topic(t) for t in self.topics)])
        if self._producer is None:
            self._producer = EventProducer(s, source=f"lmforge/{self.group_id}")
        if not self._producer.started:
            await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            group_id=self.group_id,
            client_id=self._client_id,
            enable_auto_commit=False,
            auto_offset_reset=s.auto_offset_reset,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            request_timeout_ms=s.request_timeout_ms,
        )
        self._consumer.subscribe(self.topics, listener=_Rebalance(self))
        await self._consumer.start()
        log.info("consumer started", group=self.group_id, topics=self.topics)

    async def stop(self) -> None:
        """Leave the group (after the loop has drained) and close the clients."""
        self._stopping.set()
        if self._task is not None and not self._task.done():
            await self._task
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._owns_producer and self._producer is not None:
            await self._producer.stop()
        log.info("consumer stopped", group=self.group_id)

    def request_stop(self) -> None:
        """Finish the records being handled, commit them, take no more. Safe from a signal handler."""
        self._stopping.set()

    def assignment(self) -> set[TopicPartition]:
        """The partitions this member owns right now (empty before the first join)."""
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        loop = loop or asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def run(self) -> None:
        """Consume until ``request_stop()``. Call ``start()`` first.

        Raises only for a bug in the runner itself (a supervisor restarts it); broker errors
        while polling are retried with backoff.
        """
        consumer = self._require()
        self._task = asyncio.current_task()
        s = self.settings
        backoff = s.retry_backoff_initial_s
        try:
            while not self._stopping.is_set():
                if self._worker_error is not None:
                    error, self._worker_error = self._worker_error, None
                    raise error
                try:
                    batch = await consumer.getmany(timeout_ms=s.poll_timeout_ms, max_records=s.max_batch_size)
                except KafkaError as exc:
                    metrics.consumer_poll_errors.labels(self.group_id).inc()
                    log.warning("poll failed, retrying", group=self.group_id, error=str(exc), retry_in_s=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, s.retry_backoff_max_s)
                    continue
                backoff = s.retry_backoff_initial_s
                if self._stopping.is_set():
                    break
                for tp, records in batch.items():
                    self._start_worker(tp, records)
                self._refresh_idle_lag()
        finally:
            await self._drain(set(self._workers))
            self._task = None

    def run_in_background(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name=f"consumer:{self.group_id}")
        return self._task

    async def serve(self) -> None:
        """start + run + stop, with SIGTERM/SIGINT wired to a graceful drain."""
        await self.start()
        self.install_signal_handlers()
        try:
            await self.run()
        finally:
            await self.stop()

    def _require(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("ConsumerRunner.start() has not been called")
        return self._consumer

    # -- processing --------------------------------------------------------------------------

    def _metrics(self, topic: str) -> _TopicMetrics:
        m = self._bound_metrics.get(topic)
        if m is None:
            m = self._bound_metrics[topic] = _TopicMetrics.bind(self.group_id, topic)
        return m

    def _should_halt(self, tp: TopicPartition) -> bool:
        return self._stopping.is_set() or tp in self._revoking

    def _start_worker(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
        """Queue fetched records for the partition's worker (starting one if it has none).

        Fetching goes on while the worker handles what it has (no round trip lost per batch); a
        partition whose worker falls ``max_batch_size`` records behind is paused, so a stuck
        partition holds a bounded number of records and no other partition.
        """
        consumer = self._require()
        pending = self._pending.setdefault(tp, [])
        pending.extend(records)
        self._last_progress.setdefault(tp, time.monotonic())
        if len(pending) >= self.settings.max_batch_size:
            consumer.pause(tp)
        if tp not in self._workers:
            self._workers[tp] = asyncio.create_task(
                self._work(tp), name=f"consumer:{self.group_id}:{tp.topic}[{tp.partition}]"
            )

    async def _work(self, tp: TopicPartition) -> None:
        """Handle the partition's queued records in order, committing after each chunk; exit when
        none are left. On a halt (stop, revoke) or a failure, drop what was queued and rewind to
        the first record not handled, so it is fetched again (by this member or the next owner)."""
        consumer = self._require()
        try:
            while True:
                records = self._pending.pop(tp, [])
                if not records:
                    return
                if tp in consumer.paused():
                    consumer.resume(tp)
                next_offset = records[0].offset
                finished = False
                try:
                    handled = await self._process(tp, records)
                    if handled:
                        next_offset = records[handled - 1].offset + 1
                    finished = handled == len(records)
                except Exception as exc:  # a runner bug: surfaced by run(), restarted by the supervisor
                    log.exception(
                        "partition worker failed", group=self.group_id, partition=f"{tp.topic}[{tp.partition}]"
                    )
                    self._worker_error = exc
                if next_offset > records[0].offset:
                    await self._commit({tp: next_offset})
                self._update_lag(tp, next_offset)
                if not finished:
                    self._pending.pop(tp, None)
                    if tp in consumer.assignment():
                        consumer.seek(tp, next_offset)
                        if tp in consumer.paused():
                            consumer.resume(tp)
                    return
        finally:
            self._workers.pop(tp, None)

    async def _drain(self, partitions: set[TopicPartition]) -> None:
        """Let the workers of ``partitions`` stop after the record in hand and commit."""
        workers = [self._workers[tp] for tp in partitions if tp in self._workers]
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        consumer = self._require()
        assigned = consumer.assignment()
        owned = {tp: off for tp, off in offsets.items() if tp in assigned}
        if not owned:
            return
        try:
            # Bounded: aiokafka retries some commit errors for ever (a topic that vanished), and a
            # worker must never hang on its commit.
            async with asyncio.timeout(self.settings.request_timeout_ms / 1000):
                await consumer.commit(owned)
        except (CommitFailedError, KafkaError, TimeoutError) as exc:
            # The group moved on, or the broker is away: these records will be redelivered, and
            # the inbox absorbs them.
            log.warning("commit failed, records will be redelivered", group=self.group_id, error=repr(exc))

    async def _drain_for_revoke(self, revoked: set[TopicPartition]) -> None:
        """Called by aiokafka before partitions move: let their workers stop and commit."""
        self._revoking |= revoked
        try:
            await self._drain(revoked)
        finally:
            self._revoking -= revoked
            for tp in revoked:
                self._last_progress.pop(tp, None)
                self._lag.pop(tp, None)
                self._next_offset.pop(tp, None)
                self._pending.pop(tp, None)
        log.info("partitions revoked", group=self.group_id, partitions=_fmt(revoked))

    def stalled(self, timeout_s: float) -> bool:
        """A partition with records waiting made no progress for ``timeout_s`` (or the loop is gone)."""
        if self._consumer is None or self._stopping.is_set():
            return False
        now = time.monotonic()
        for tp in self._require().assignment():
            waiting = tp in self._workers or self._lag.get(tp, 0) > 0
            if waiting and now - self._last_progress.get(tp, now) > timeout_s:
                return True
        return False

    async def _process(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> int:
        """Handle a partition's records in order: in batches where there is a batch handler, else
        in runs that share a trace. Returns how many were finished (fewer after a halt, or a record
        stopped before its dead letter was acknowledged)."""
        done = 0
        if self.batch_handler is not None and len(records) > 1:
            size = max(1, self.settings.max_batch_size)
            for start in range(0, len(records), size):
                if self._should_halt(tp):
                    break
                chunk = records[start : start + size]
                handled = await self._process_batch(tp, chunk)
                done += handled
                if handled < len(chunk):
                    break
            return done
        return await self._process_runs(tp, records)

    async def _process_runs(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> int:
        """Handle records one at a time, in runs that share a trace; how many were finished."""
        done = 0
        for run in _runs_by_trace(records):
            if self._should_halt(tp):
                break
            handled = await self._process_run(tp, run)
            done += handled
            if handled < len(run):
                break
        return done

    async def _process_batch(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> int:
        """Hand ``records`` to the batch handler together, each with its own process span; if it
        raises, handle them one at a time (retries, dead letters). Returns how many were finished."""
        assert self.batch_handler is not None
        m = self._metrics(tp.topic)
        items = []
        for rec in records:
            msg = InboundMessage.from_record(rec)
            attributes: dict[str, str | int] = {
                "messaging.system": "kafka",
                "messaging.destination.name": rec.topic,
                "messaging.consumer.group.name": self.group_id,
                "messaging.destination.partition.id": rec.partition,
                "messaging.kafka.offset": rec.offset,
                "messaging.batch.message_count": len(records),
            }
            ce_id = msg.header("ce_id")
            if ce_id:
                attributes["messaging.message.id"] = ce_id
            span = tracer().start_span(
                f"{rec.topic} process",
                context=extract_context(rec.headers or ()),
                kind=SpanKind.CONSUMER,
                attributes=attributes,
            )
            items.append(BatchItem(msg, span))
        started = time.perf_counter()
        try:
            await self.batch_handler(items)
        except Exception as exc:  # noqa: BLE001 - the records are handled one at a time below
            error = describe_error(exc)
            for item in items:
                item.span.add_event(
                    "batch failed: handled on its own",
                    {"exception.type": type(exc).__name__, "exception.message": error},
                )
                item.span.end()
            metrics.consumer_batch_fallbacks.labels(self.group_id, tp.topic).inc()
            log.warning(
                "batch handler failed, handling the batch's records one at a time",
                group=self.group_id,
                partition=f"{tp.topic}[{tp.partition}]",
                records=len(records),
                error=error,
            )
            return await self._process_runs(tp, records)
        except BaseException:
            for item in items:
                item.span.end()
            raise
        elapsed = time.perf_counter() - started
        for item in items:
            item.span.end()
            m.handler_seconds.observe(elapsed / len(items))  # each record's share of the batch
        m.processed.inc(len(items))
        self._last_progress[tp] = time.monotonic()
        return len(items)

    async def _process_run(self, tp: TopicPartition, run: list[ConsumerRecord[Any, Any]]) -> int:
        """Handle consecutive records of one partition that share a trace context, in one
        ``<topic> process`` span whose parent is that context. Returns how many were finished."""
        first = run[0]
        m = self._metrics(first.topic)
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.destination.name": first.topic,
            "messaging.consumer.group.name": self.group_id,
            "messaging.destination.partition.id": first.partition,
            "messaging.kafka.offset": first.offset,
        }
        if len(run) > 1:
            attributes["messaging.batch.message_count"] = len(run)
        with tracer().start_as_current_span(
            f"{first.topic} process",
            context=extract_context(first.headers or ()),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            for i, rec in enumerate(run):
                if i and self._should_halt(tp):
                    return i
                msg = InboundMessage.from_record(rec)
                if len(run) == 1:
                    ce_id = msg.header("ce_id")
                    if ce_id:
                        span.set_attribute("messaging.message.id", ce_id)
                started = time.perf_counter()
                try:
                    await self.handler(msg)  # the common case, without the retry machinery
                except Exception as exc:  # noqa: BLE001 - retried or dead-lettered below
                    ok = await self._retry_or_dead_letter(msg, span, m, exc)
                else:
                    m.processed.inc()
                    ok = True
                m.handler_seconds.observe(time.perf_counter() - started)
                if not ok:
                    return i
                self._last_progress[tp] = time.monotonic()
        return len(run)

    async def _retry_or_dead_letter(
        self, msg: InboundMessage, span: trace.Span, m: _TopicMetrics, error: Exception
    ) -> bool:
        """The failure path after the first attempt raised ``error``: retry with backoff, then
        dead-letter. ``InvalidEvent`` is dead-lettered at once. False: stopped before it was done."""
        s = self.settings
        attempt = 1
        while True:
            m.failed.inc()
            # The SDK's default message and stack trace are str(error): they may quote the record.
            span.record_exception(
                error,
                attributes={
                    "exception.message": describe_error(error),
                    "exception.stacktrace": format_exception_safely(error),
                },
            )
            if isinstance(error, InvalidEvent) or attempt >= s.max_attempts:
                return await self._dead_letter(msg, error, attempt, span)
            delay = min(s.retry_backoff_initial_s * 2 ** (attempt - 1), s.retry_backoff_max_s)
            log.warning(
                "handler failed, retrying",
                group=self.group_id,
                topic=msg.topic,
                partition=msg.partition,
                offset=msg.offset,
                attempt=attempt,
                delay_s=delay,
                error=describe_error(error),
            )
            await asyncio.sleep(delay)
            attempt += 1
            try:
                await self.handler(msg)
            except Exception as exc:  # noqa: BLE001 - any handler error is retried, then dead-lettered
                error = exc
            else:
                m.processed.inc()
                return True

    async def _dead_letter(self, msg: InboundMessage, exc: BaseException, attempts: int, span: trace.Span) -> bool:
        """Publish ``msg`` to ``<topic>.dlq``. True once the broker acknowledged it; False if the
        runner was stopped (or the partition revoked) first, so the record is redelivered."""
        assert self._producer is not None
        dlq = dead_letter_topic(msg.topic)
        # Never the record's text: a validation error names fields, SQL errors hide their parameters.
        error = describe_error(exc)
        dlq_headers = [
            (DLQ_ORIGINAL_TOPIC, msg.topic.encode()),
            (DLQ_ORIGINAL_PARTITION, str(msg.partition).encode()),
            (DLQ_ORIGINAL_OFFSET, str(msg.offset).encode()),
            (DLQ_ERROR, error.encode()),
            (DLQ_ERROR_TYPE, type(exc).__name__.encode()),
            (DLQ_ATTEMPTS, str(attempts).encode()),
            (DLQ_CONSUMER_GROUP, self.group_id.encode()),
            (DLQ_FAILED_AT, datetime.now(UTC).isoformat().encode()),
        ]
        span.set_status(StatusCode.ERROR, error[:200])
        span.set_attribute("lmforge.dead_lettered", True)
        log.error(
            "dead-lettering record",
            group=self.group_id,
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            attempts=attempts,
            error=error,
            stack=format_exception_safely(exc, limit=2_000),
        )
        value, value_headers = await self._dead_letter_value(msg)
        full = (value, [*msg.headers, *dlq_headers, *value_headers])
        # The fallback when the broker refuses the full letter for good: no value, essential headers.
        omitted = [(DLQ_VALUE_OMITTED, b"true")]
        if msg.value is not None and not any(k == DLQ_VALUE_BYTES for k, _ in value_headers):
            omitted.append((DLQ_VALUE_BYTES, str(len(msg.value)).encode()))
        bare = (
            b"",  # empty, not None: a record needs a key or a value
            [*((k, v) for k, v in msg.headers if k in _ESSENTIAL_HEADERS), *dlq_headers, *value_headers, *omitted],
        )
        candidates = [full, bare]
        backoff = self.settings.retry_backoff_initial_s
        # The record is only done once a dead letter is acknowledged: nothing is dropped.
        while True:
            letter_value, letter_headers = candidates[0]
            try:
                await self._producer.send_raw(dlq, letter_value, key=msg.key, headers=letter_headers)
            except PublishRejected as rejected:
                log.error(
                    "dead letter refused by the broker", topic=dlq, error=str(rejected), fallback=len(candidates) > 1
                )
                metrics.consumer_dead_letter_rejected.labels(self.group_id, msg.topic).inc()
                if len(candidates) > 1:
                    candidates.pop(0)  # never retry a permanent refusal as it was
                    continue
            except BrokerUnavailable as send_exc:
                log.error("dead-letter publish failed, retrying", topic=dlq, error=str(send_exc))
            else:
                self._metrics(msg.topic).dead_lettered.inc()
                return True
            if self._should_halt(TopicPartition(msg.topic, msg.partition)):
                return False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.retry_backoff_max_s)

    async def _dead_letter_value(self, msg: InboundMessage) -> tuple[bytes | None, list[tuple[str, bytes]]]:
        """The value a dead letter carries, and headers that say what became of an oversized one."""
        value = msg.value
        limit = self.settings.dead_letter_max_value_bytes
        if value is None or len(value) <= limit:
            return value, []
        headers = [
            (DLQ_VALUE_BYTES, str(len(value)).encode()),
            (DLQ_VALUE_SHA256, hashlib.sha256(value).hexdigest().encode()),
        ]
        if self._artifacts is not None:
            key = f"dead-letters/{msg.topic}/{msg.partition}/{msg.offset}-{self.group_id}.bin"
            try:
                uri = await asyncio.to_thread(self._artifacts.write_bytes, key, value)
            except Exception as exc:  # noqa: BLE001 - the store is away: cut the value instead
                log.error("could not store an oversized dead letter; cutting it", key=key, error=str(exc))
            else:
                return b"", [*headers, (DLQ_VALUE_REF, uri.encode())]
        return value[:limit], [*headers, (DLQ_VALUE_TRUNCATED, b"true")]

    def _update_lag(self, tp: TopicPartition, next_offset: int) -> None:
        self._next_offset[tp] = next_offset
        try:
            highwater = self._require().highwater(tp)
        except Exception:  # noqa: BLE001 - partition moved away meanwhile
            return
        if highwater is not None:
            self._set_lag(tp, max(0, highwater - next_offset))

    def _refresh_idle_lag(self) -> None:
        """Lag of partitions with no worker: what the fetcher knows is waiting beyond its position."""
        consumer = self._require()
        for tp in consumer.assignment():
            if tp in self._workers:
                continue
            position = self._next_offset.get(tp)
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - the partition moved away
                continue
            if highwater is not None and position is not None:
                self._set_lag(tp, max(0, highwater - position))

    def _set_lag(self, tp: TopicPartition, lag: int) -> None:
        if lag == 0 or tp not in self._last_progress:
            self._last_progress[tp] = time.monotonic()
        self._lag[tp] = lag
        metrics.consumer_lag.labels(self.group_id, tp.topic, str(tp.partition)).set(lag)
