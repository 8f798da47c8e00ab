"""Upstream topics: documented JSON records from any producer, in any language."""

from __future__ import annotations

import json

from pydantic import ValidationError

from lmforge.common.events import InvalidEvent, UpstreamRecord
from lmforge.common.events.envelope import describe_validation_error
from lmforge.common.kafka import InboundMessage

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
    def __init__(self, store: RawRecordStore) -> None:
        self.store = store

    async def __call__(self, msg: InboundMessage) -> None:
        await self.store.accept([parse_upstream(msg.value, self.store.max_record_bytes)])
