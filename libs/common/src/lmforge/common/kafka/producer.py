"""The event producer: ``acks=all``, awaits the broker's acknowledgement, injects trace context."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import RecordMetadata
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, StatusCode

from .. import metrics
from ..events import Event, EventPayload, Headers
from ..settings import KafkaSettings
from ..telemetry import inject_context, tracer


class BrokerUnavailable(RuntimeError):
    """The broker did not acknowledge a write; HTTP layers answer 503 with Retry-After."""

    retry_after_s = 5


class PublishRejected(RuntimeError):
    """The broker (or the client, before sending) refused a write for good: retrying cannot help.

    A message over ``max_request_size`` or the broker's limit, an invalid or forbidden topic.
    """


# Errors that a retry of the same message cannot fix.
_PERMANENT = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
)


def _send_failed(topic: str, exc: BaseException) -> Exception:
    """The exception a caller sees for a failed send: permanent or worth retrying."""
    if isinstance(exc, _PERMANENT):
        return PublishRejected(f"the broker refused a write to {topic}: {type(exc).__name__}: {exc}")
    return BrokerUnavailable(f"send to {topic} failed: {exc}")


@dataclass(frozen=True)
class RawMessage:
    """Pre-built bytes and headers for ``send_raw_many`` (outbox rows, replays)."""

    topic: str
    value: bytes | None
    key: bytes | None
    headers: Headers


class EventProducer:
    """Publishes CloudEvents. One instance per process; start it once, share it."""

    def __init__(self, settings: KafkaSettings, source: str) -> None:
        self.settings = settings
        self.source = source
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        s = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            acks="all",
            enable_idempotence=s.enable_idempotence,
            max_request_size=s.max_request_size,
            request_timeout_ms=s.request_timeout_ms,
            linger_ms=s.linger_ms,
            client_id=f"lmforge-{self.source}",
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise BrokerUnavailable(f"cannot reach Kafka at {s.bootstrap_servers}: {exc}") from exc
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def started(self) -> bool:
        return self._producer is not None

    def _require(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise BrokerUnavailable("producer is not started")
        return self._producer

    def event(self, payload: EventPayload, subject: str | None = None) -> Event[EventPayload]:
        return Event(data=payload, source=self.source, subject=subject)

    async def publish(
        self, topic: str, payload: EventPayload | Event[EventPayload], *, key: str
    ) -> Event[EventPayload]:
        """Publish one event and wait for ``acks=all``.

        Raises ``BrokerUnavailable`` (retry later) or ``PublishRejected`` (retrying cannot help).
        """
        (event,) = await self.publish_many(topic, [(key, payload)])
        return event

    async def publish_many(
        self,
        topic: str,
        items: Sequence[tuple[str, EventPayload | Event[EventPayload]]],
        *,
        contexts: Sequence[Context] | None = None,
    ) -> list[Event[EventPayload]]:
        """Publish a batch and wait until the broker acknowledged every message.

        Every send is queued before any ack is awaited, so the messages share broker batches.
        The batch is one ``<topic> publish`` span; its context goes into every message's headers.
        With ``contexts`` (one per item: messages that belong to different traces, such as the
        records of a consumed batch), each message carries its own, and the publish span links
        to them.
        """
        producer = self._require()
        events = [item if isinstance(item, Event) else self.event(item) for _, item in items]
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.batch.message_count": len(events),
        }
        if len(events) == 1:
            attributes["messaging.message.id"] = events[0].id
            attributes["cloudevents.event_type"] = events[0].type
        links = []
        if contexts is not None:
            links = [
                trace.Link(c) for ctx in contexts if (c := trace.get_current_span(ctx).get_span_context()).is_valid
            ]
        with tracer().start_as_current_span(
            f"{topic} publish", kind=SpanKind.PRODUCER, attributes=attributes, links=links
        ) as span:
            shared = inject_context([])
            own = [inject_context([], ctx) for ctx in contexts] if contexts is not None else None
            try:
                async with asyncio.timeout(self.settings.publish_timeout_s):
                    futures = []
                    for i, ((key, _), event) in enumerate(zip(items, events, strict=True)):
                        value, headers = event.to_kafka()
                        headers.extend(own[i] if own is not None else shared)
                        futures.append(await producer.send(topic, value=value, key=key.encode(), headers=headers))
                    results = await asyncio.gather(*futures, return_exceptions=True)
            except TimeoutError as exc:
                metrics.producer_errors.labels(topic).inc(len(events))
                span.set_status(StatusCode.ERROR, "no ack in time")
                raise BrokerUnavailable(
                    f"the broker did not acknowledge {len(events)} writes to {topic} within "
                    f"{self.settings.publish_timeout_s:.0f}s"
                ) from exc
            except KafkaError as exc:
                metrics.producer_errors.labels(topic).inc()
                span.set_status(StatusCode.ERROR, str(exc))
                raise _send_failed(topic, exc) from exc
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                metrics.producer_errors.labels(topic).inc(len(errors))
                span.set_status(StatusCode.ERROR, str(errors[0]))
                failure = _send_failed(topic, errors[0])
                raise type(failure)(
                    f"broker did not acknowledge {len(errors)} of {len(events)} writes to {topic}: {errors[0]}"
                ) from errors[0]
        metrics.producer_sent.labels(topic).inc(len(events))
        return events

    async def send_raw(self, topic: str, value: bytes | None, *, key: bytes | None, headers: Headers) -> RecordMetadata:
        """Send pre-built bytes and headers (DLQ, outbox relay) and wait for the ack."""
        producer = self._require()
        try:
            result = await producer.send_and_wait(topic, value=value, key=key, headers=headers)
        except KafkaError as exc:
            metrics.producer_errors.labels(topic).inc()
            raise _send_failed(topic, exc) from exc
        metrics.producer_sent.labels(topic).inc()
        return result

    async def send_raw_many(self, messages: Sequence[RawMessage]) -> list[RecordMetadata | Exception]:
        """Queue every message before awaiting any ack, so they share broker batches, then wait.

        Returns one outcome per message, in order: its ``RecordMetadata``, or the
        ``BrokerUnavailable``/``PublishRejected`` it failed with (one failure never hides the
        others' acks). Messages of one partition keep their order on the wire.
        """
        producer = self._require()
        outcomes: list[RecordMetadata | Exception | None] = [None] * len(messages)
        pending: list[tuple[int, asyncio.Future[RecordMetadata]]] = []
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                for i, m in enumerate(messages):
                    try:
                        pending.append((i, await producer.send(m.topic, value=m.value, key=m.key, headers=m.headers)))
                    except KafkaError as exc:
                        outcomes[i] = _send_failed(m.topic, exc)
                results = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
                for (i, _), result in zip(pending, results, strict=True):
                    if isinstance(result, KafkaError):
                        outcomes[i] = _send_failed(messages[i].topic, result)
                    elif isinstance(result, BaseException):
                        outcomes[i] = BrokerUnavailable(f"send to {messages[i].topic} failed: {result!r}")
                    else:
                        outcomes[i] = result
        except TimeoutError:
            pass  # whatever has no outcome yet was not acknowledged in time
        final: list[RecordMetadata | Exception] = []
        for m, outcome in zip(messages, outcomes, strict=True):
            if outcome is None:
                outcome = BrokerUnavailable(
                    f"the broker did not acknowledge a write to {m.topic} within {self.settings.publish_timeout_s:.0f}s"
                )
            if isinstance(outcome, Exception):
                metrics.producer_errors.labels(m.topic).inc()
            else:
                metrics.producer_sent.labels(m.topic).inc()
            final.append(outcome)
        return final
