"""Upstream topics: documented JSON records from any producer, in any language."""

from __future__ import annotations

import json
from collections.abc import Sequence

from opentelemetry import trace
from pydantic import ValidationError

from lmforge.common.events import InvalidEvent, UpstreamRecord
from lmforge.common.events.envelope import describe_validation_error
from lmforge.common.kafka import BatchItem, InboundMessage

from .store import RawRecordStore, RecordTooLarge, check_record_size


def parse_upstream(value: bytes | None, max_record_bytes: int) -> UpstreamRecord:
    """Decode one upstream message; ``InvalidEvent`` (dead-lettered with the reason) if it is bad."""
    if not value:
        raise InvalidEvent("empty message: expected a JSON record")
    if len(value) > 4 * max_record_bytes:  # not worth parsing: no such record can be accepted
        raise InvalidEvent(f"message of {len(value)} bytes: a record is at most {max_record_bytes} bytes as JSON")
    try:
        data = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent(f"not JSON: {exc}") from exc
    try:
        record = UpstreamRecord.model_validate(data)
    except ValidationError as exc:
        raise InvalidEvent(f"invalid upstream record: {describe_validation_error(exc)}") from exc
    try:
        check_record_size([record], max_record_bytes)
    except RecordTooLarge as exc:
        raise InvalidEvent(f"record of {exc.size} bytes as JSON: at most {exc.limit}") from exc
    return record


class UpstreamHandler:
    """Upstream records in, stored and published on ``raw-data``: a partition's queued records
    together (``handle_batch``: one transaction, one publish), or one at a time (the runner's
    fallback when a batch fails, with its retries and dead letters)."""

    def __init__(self, store: RawRecordStore) -> None:
        self.store = store

    async def __call__(self, msg: InboundMessage) -> None:
        await self.store.accept([parse_upstream(msg.value, self.store.max_record_bytes)])

    async def handle_batch(self, items: Sequence[BatchItem]) -> None:
        """Every message is parsed first: one bad message fails the batch before anything is
        stored, and the runner dead-letters it handling the records one at a time. Each record's
        ``raw-data`` event continues its own trace."""
        records = [parse_upstream(item.message.value, self.store.max_record_bytes) for item in items]
        await self.store.accept(records, [trace.set_span_in_context(item.span) for item in items])
