"""The event contract: CloudEvents binary mode, typed payloads, exported JSON Schemas."""

from __future__ import annotations

from pathlib import Path

import jsonschema_rs
import pytest
from pydantic import ValidationError

from lmforge.common.events import (
    EVENT_PAYLOADS,
    Event,
    InvalidEvent,
    RawRecordV1,
    Topic,
    TrainingRequestedV1,
    UpstreamRecord,
    dead_letter_topic,
    decode_event,
)
from lmforge.common.events.schema import render_schemas

from .factories import raw_record

DOCS_EVENTS = Path(__file__).resolve().parents[2] / "docs" / "events"


def test_binary_mode_round_trip() -> None:
    event = Event(data=raw_record("1"), source="lmforge/ingest", subject="crm:1")
    value, headers = event.to_kafka()
    names = [k for k, _ in headers]
    for required in ("ce_id", "ce_type", "ce_source", "ce_specversion", "ce_time", "content-type"):
        assert required in names
    assert dict(headers)["ce_type"] == b"lmforge.record.raw.v1"
    decoded = decode_event(headers, value, RawRecordV1)
    assert decoded.id == event.id and decoded.data == event.data and decoded.subject == "crm:1"


@pytest.mark.parametrize(
    ("headers", "value", "reason"),
    [
        ([], b"{}", "missing headers"),
        (
            [("ce_specversion", b"0.3"), ("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"x")],
            b"{}",
            "specversion",
        ),
        (
            [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"nope.v1")],
            b"{}",
            "unknown event type",
        ),
        (
            [
                ("ce_specversion", b"1.0"),
                ("ce_id", b"1"),
                ("ce_source", b"s"),
                ("ce_type", b"lmforge.record.raw.v1"),
            ],
            b'{"record_id": 1}',
            "invalid lmforge.record.raw.v1 payload",
        ),
        (
            [
                ("ce_specversion", b"1.0"),
                ("ce_id", b"1"),
                ("ce_source", b"s"),
                ("ce_type", b"lmforge.record.raw.v1"),
            ],
            b"\xff\xfe",
            "invalid",
        ),
    ],
)
def test_invalid_events_name_the_reason(headers: list[tuple[str, bytes]], value: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        decode_event(headers, value)


def test_unexpected_type_is_rejected() -> None:
    value, headers = Event(data=raw_record("1"), source="s").to_kafka()
    with pytest.raises(InvalidEvent, match="was expected"):
        decode_event(headers, value, TrainingRequestedV1)


def test_upstream_record_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="source_id"):
        UpstreamRecord.model_validate({"source": "crm", "text": "hi"})
    with pytest.raises(ValueError, match="unexpected"):
        UpstreamRecord.model_validate({"source": "crm", "source_id": "1", "text": "hi", "unexpected": 1})


def test_topics_and_dead_letters() -> None:
    assert Topic.RAW_DATA == "raw-data"
    assert dead_letter_topic(Topic.RAW_DATA) == "raw-data.dlq"
    assert len({p.event_type for p in EVENT_PAYLOADS}) == len(EVENT_PAYLOADS)


def test_exported_schemas_are_up_to_date() -> None:
    rendered = render_schemas()
    on_disk = {p.name: p.read_text() for p in DOCS_EVENTS.glob("*.json")}
    stale = sorted(n for n in rendered if on_disk.get(n) != rendered[n])
    extra = sorted(set(on_disk) - set(rendered))
    assert not stale and not extra, f"docs/events is out of date (stale {stale}, extra {extra}): run `make schemas`"


@pytest.mark.parametrize("stamp", [0, -6.4e-193, 1732500000, 1.5])
def test_an_upstream_timestamp_is_a_date_time_string_never_a_number(stamp: float) -> None:
    """The published schema says string (date-time); pydantic alone would read a number as Unix seconds."""
    with pytest.raises(ValidationError, match="RFC 3339 date-time string"):
        UpstreamRecord.model_validate({"source": "crm", "source_id": "1", "text": "hi", "timestamp": stamp})
    ok = UpstreamRecord.model_validate(
        {"source": "crm", "source_id": "1", "text": "hi", "timestamp": "2026-11-25T07:00:00Z"}
    )
    assert ok.timestamp is not None and ok.timestamp.year == 2026


def test_blank_is_the_same_for_pydantic_and_json_schema_validators() -> None:
    """A text or source id must hold a character that is not whitespace as ``str.isspace`` sees it,
    and pydantic and a JSON Schema validator (ECMA-262 regular expressions) agree on every
    character: ``\\s`` did not (U+0085, U+FEFF)."""
    schema = UpstreamRecord.model_json_schema()
    validator = jsonschema_rs.validator_for(schema)
    for code in [*range(0x3100), 0xFEFF, 0x1D7CE, 0x10FFFF]:
        if 0xD800 <= code <= 0xDFFF:
            continue
        text = chr(code) + " "
        record = {"source": "crm", "source_id": "1", "text": text}
        try:
            UpstreamRecord.model_validate(record)
            accepted = True
        except ValidationError:
            accepted = False
        expected = not text.isspace() and code != 0
        assert accepted == validator.is_valid(record) == expected, hex(code)
