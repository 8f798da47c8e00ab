"""Upstream topics: documented JSON records from any producer, in any language."""

from __future__ import annotations

import json

from pydantic import ValidationError

from lmforge.common.events import InvalidEvent, UpstreamRecord
from lmforge.common.events.envelope import describe_validation_error
from lmforge.common.kafka import InboundMessage

from .store import RawRecordStore


def parse_upstream(value: bytes | None) -> UpstreamRecord:
    """Decode one upstream message; ``InvalidEvent`` (dead-lettered with the reason) if it is bad."""
    if not value:
        raise InvalidEvent("empty message: expected a JSON record")
    try:
        data = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent(f"not JSON: {exc}") from exc
    try:
        return UpstreamRecord.model_validate(data)
    except ValidationError as exc:
        raise InvalidEvent(f"invalid upstream record: {describe_validation_error(exc)}") from exc


class UpstreamHandler:
    def __init__(self, store: RawRecordStore) -> None:
        self.store = store

    async def __call__(self, msg: InboundMessage) -> None:
        await self.store.accept([parse_upstream(msg.value)])
