"""Builders for test payloads."""

from __future__ import annotations

from datetime import UTC, datetime

from lmforge.common.events import RawRecordV1, content_hash, record_key


def raw_record(source_id: str, text: str | None = None, source: str = "crm") -> RawRecordV1:
    body = text if text is not None else f"ticket {source_id}: my invoice is wrong"
    return RawRecordV1(
        record_id=record_key(source, source_id),
        source=source,
        source_id=source_id,
        text=body,
        content_hash=content_hash(body),
        ingested_at=datetime.now(UTC),
    )
