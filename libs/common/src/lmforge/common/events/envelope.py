"""CloudEvents 1.0 in Kafka binary content mode.

The metadata travels in ``ce_*`` headers (plus ``content-type``), the value is the JSON payload.
See https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/bindings/kafka-protocol-binding.md
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

from pydantic import ValidationError

# Re-exported: the field/reason form (never the input) for 4xx messages and dead-letter reasons.
from ..redaction import describe_validation_error as describe_validation_error
from .payloads import PAYLOADS_BY_TYPE, EventPayload

P = TypeVar("P", bound=EventPayload)

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
Headers = list[tuple[str, bytes]]
_SPECVERSION_HEADER = ("ce_specversion", SPECVERSION.encode())
_CONTENT_TYPE_HEADER = ("content-type", CONTENT_TYPE.encode())


class InvalidEvent(ValueError):
    """A message that can never be processed as it is: it is dead-lettered, never retried."""


@dataclass(frozen=True)
class Event(Generic[P]):
    """A CloudEvent with a typed payload."""

    data: P
    source: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    subject: str | None = None

    @property
    def type(self) -> str:
        return self.data.event_type

    def to_kafka(self) -> tuple[bytes, Headers]:
        """Value and headers in binary mode (trace headers are added by the producer)."""
        headers: Headers = [
            _SPECVERSION_HEADER,
            ("ce_id", self.id.encode()),
            ("ce_source", self.source.encode()),
            ("ce_type", self.type.encode()),
            ("ce_time", self.time.isoformat().encode()),
            _CONTENT_TYPE_HEADER,
        ]
        if self.subject is not None:
            headers.append(("ce_subject", self.subject.encode()))
        return self.data.model_dump_json().encode(), headers


def headers_to_dict(headers: Iterable[tuple[str, bytes | None]]) -> dict[str, str]:
    """Last value wins, decoded as UTF-8; undecodable values are replaced, never raised."""
    return {k: (v or b"").decode("utf-8", errors="replace") for k, v in headers}


def decode_event(
    headers: Iterable[tuple[str, bytes | None]],
    value: bytes | None,
    expected: type[P] | tuple[type[P], ...] | None = None,
    known: Mapping[str, type[EventPayload]] = PAYLOADS_BY_TYPE,
) -> Event[P]:
    """Decode a binary-mode CloudEvent; raise ``InvalidEvent`` with the reason if it is not one."""
    h = headers_to_dict(headers)
    missing = [k for k in ("ce_specversion", "ce_id", "ce_source", "ce_type") if not h.get(k)]
    if missing:
        raise InvalidEvent(f"not a CloudEvent: missing headers {', '.join(missing)}")
    if h["ce_specversion"] != SPECVERSION:
        raise InvalidEvent(f"unsupported CloudEvents specversion {h['ce_specversion']!r}")
    payload_type = known.get(h["ce_type"])
    if payload_type is None:
        raise InvalidEvent(f"unknown event type {h['ce_type']!r}")
    if expected is not None:
        allowed = expected if isinstance(expected, tuple) else (expected,)
        if payload_type not in allowed:
            names = ", ".join(t.event_type for t in allowed)
            raise InvalidEvent(f"event type {h['ce_type']!r} where {names} was expected")
    if value is None:
        raise InvalidEvent("event has no value")
    try:
        data = payload_type.model_validate_json(value)
    except ValidationError as exc:
        raise InvalidEvent(f"invalid {h['ce_type']} payload: {describe_validation_error(exc)}") from exc
    try:
        time = datetime.fromisoformat(h["ce_time"]) if h.get("ce_time") else datetime.now(UTC)
    except ValueError as exc:
        raise InvalidEvent(f"invalid ce_time {h['ce_time']!r}") from exc
    return Event(
        data=data,  # type: ignore[arg-type]
        source=h["ce_source"],
        id=h["ce_id"],
        time=time,
        subject=h.get("ce_subject"),
    )
