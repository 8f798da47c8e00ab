"""Batches decide as one record at a time would: the same stream, handled one record at a time
and in batches of several sizes, leaves the same rows in every table, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry import trace
from sqlalchemy import select

from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import Event, EventPayload, InvalidEvent, RawRecordV1, RecordErasedV1, content_hash
from lmforge.common.kafka import BatchItem, EventProducer, InboundMessage
from lmforge.common.settings import KafkaSettings
from lmforge.devstack.servers import PostgresCluster
from lmforge.devstack.support_corpus import make_corpus
from lmforge.preprocess.handlers import RawRecordHandler
from lmforge.preprocess.models import (
    cleaned_records,
    dropped_records,
    erasures,
    inbox,
    metadata,
    near_dup_bands,
    outbox,
)
from lmforge.preprocess.near_dup import NearDuplicateIndex

from .test_near_dup import EN, EN_COPY, OTHER, ZH, ZH_COPY

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _raw(source_id: str, text: str, label: str | None = None, at: datetime = T0, **metadata: Any) -> RawRecordV1:
    return RawRecordV1(
        record_id=f"crm:{source_id}",
        source="crm",
        source_id=source_id,
        text=text,
        content_hash=content_hash(text),
        label=label,
        metadata=metadata,
        ingested_at=at,
    )


def _stream() -> list[InboundMessage]:
    """Every path a record can take: kept, exact and near duplicates (of stored records and of
    records earlier in the same batch), filtered, empty, an edit, an edit back to the older text
    (the older row gives way), a new label, an event delivered twice, an erasure and a late copy."""
    payloads: list[EventPayload] = [_raw(r["source_id"], r["text"]) for r in make_corpus(60)]
    payloads += [_raw("E-1", EN), _raw("Z-1", ZH), _raw("O-1", OTHER), _raw("E-2", EN_COPY), _raw("Z-2", ZH_COPY)]
    payloads += [_raw("J-1", ""), _raw("J-2", "ok"), _raw("J-3", "$$$ ### !!! %%% ^^^ &&& *** $$$ ### !!!")]
    # An edit, then back to the older text (the older row gives way), then a new label for it.
    payloads += [_raw("E-1", OTHER + " Also the PDF."), _raw("E-1", EN), _raw("E-1", EN, label="billing", tier=2)]
    payloads += [_raw("E-1", EN, label="billing", tier=2)]  # nothing changed: a duplicate of itself
    payloads += [_raw("N-1", EN_COPY + " Regards.")]  # near E-2 and E-1
    erased_at = T0 + timedelta(hours=1)
    payloads += [
        RecordErasedV1(
            erasure_id="erasure-1",
            record_id="crm:Z-1",
            source="crm",
            source_id="Z-1",
            requested_at=erased_at,
            requested_by="dpo",
        ),
        _raw("Z-1", ZH + " 谢谢。"),  # ingested before the erasure, delivered after it: ignored
        _raw("Z-1", ZH, at=erased_at + timedelta(hours=1)),  # sent again later: kept
        _raw("Z-3", ZH_COPY + " 请回复。"),
    ]
    payloads += [_raw(r["source_id"] + "-b", r["text"]) for r in make_corpus(30)]  # exact copies
    events = [Event(data=p, source="tests") for p in payloads]
    events.insert(20, events[5])  # delivered twice
    events.append(events[-1])
    messages = []
    for offset, event in enumerate(events):
        value, headers = event.to_kafka()
        key = getattr(event.data, "record_id", "").encode()
        messages.append(InboundMessage("raw-data", 0, offset, key, value, tuple(headers), 0))
    return messages


def _handler(database: Database) -> RawRecordHandler:
    relay = OutboxRelay(outbox, database.sessions, EventProducer(KafkaSettings(), source="tests"))  # only woken
    return RawRecordHandler(database, "lmforge-preprocess", relay, near_dups=NearDuplicateIndex())


async def _snapshot(database: Database) -> dict[str, Any]:
    async with database.sessions() as s:
        cleaned = (await s.execute(select(cleaned_records).order_by(cleaned_records.c.id))).mappings().all()
        event_of = {r["id"]: r["raw_event_id"] for r in cleaned}
        bands = (await s.execute(select(near_dup_bands))).all()
        dropped = (await s.execute(select(dropped_records))).mappings().all()
        events = (await s.execute(select(outbox.table).order_by(outbox.table.c.id))).mappings().all()
        claimed = (await s.execute(select(inbox.table.c.event_id))).scalars().all()
        audit = (await s.execute(select(erasures))).mappings().all()
    return {
        "cleaned": [{k: v for k, v in r.items() if k not in ("id", "created_at")} for r in cleaned],
        "bands": sorted((b, h, event_of[cid]) for b, h, cid in bands),
        "dropped": sorted(tuple(v for k, v in r.items() if k != "created_at") for r in dropped),
        "events": [(r["event_type"], r["key"], json.loads(r["value"])) for r in events],
        "claimed": sorted(claimed),
        "erasures": [{k: v for k, v in r.items() if k not in ("applied_at", "completed_at")} for r in audit],
    }


async def _handled(database: Database, messages: list[InboundMessage], size: int) -> dict[str, Any]:
    await database.create_all(metadata)
    handle = _handler(database)
    if size == 1:
        for msg in messages:
            await handle(msg)
    else:
        for i in range(0, len(messages), size):
            await handle.handle_batch([BatchItem(m, trace.INVALID_SPAN) for m in messages[i : i + size]])
    return await _snapshot(database)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_batches_of_any_size_decide_as_one_record_at_a_time(
    backend: str, request: pytest.FixtureRequest, tmp_path: Any, unique: str
) -> None:
    messages = _stream()
    snapshots = []
    for size in (1, 7, 64, len(messages)):
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path}/batch-{size}.db"
        else:
            cluster: PostgresCluster = request.getfixturevalue("postgres")
            url = cluster.create_database(f"batch_{size}_{unique}")
        database = Database(url)
        try:
            snapshots.append(await _handled(database, messages, size))
        finally:
            await database.dispose()
    one_at_a_time = snapshots[0]
    for size, snapshot in zip((7, 64, len(messages)), snapshots[1:], strict=True):
        for table in one_at_a_time:
            assert snapshot[table] == one_at_a_time[table], (size, table)

    # The stream took every path.
    reasons = {row[2] for row in one_at_a_time["dropped"]}
    assert {"duplicate", "near_duplicate", "empty"} <= reasons and len(reasons) >= 4, reasons
    kept = [r["record_id"] for r in one_at_a_time["cleaned"]]
    assert kept.count("crm:E-1") == 2, "the edit and the older text it went back to, which took the older row's place"
    e1 = [r for r in one_at_a_time["cleaned"] if r["record_id"] == "crm:E-1"]
    assert e1[-1]["text"] == EN and e1[-1]["label"] == "billing", "relabelled in place"
    (z1,) = [r for r in one_at_a_time["cleaned"] if r["record_id"] == "crm:Z-1"]
    assert z1["text"] == ZH, "the copy ingested before the erasure was ignored, the one sent after it kept"
    assert len(one_at_a_time["claimed"]) == len(messages) - 2, "an event delivered twice is handled once"
    types = [e[0] for e in one_at_a_time["events"]]
    assert types.count("lmforge.record.erased.v1") == 1


async def test_an_invalid_event_fails_the_batch_before_anything_is_written(database: Database) -> None:
    """The runner then handles the batch's records one at a time and dead-letters the invalid one."""
    await database.create_all(metadata)
    messages = _stream()[:5]
    broken = InboundMessage("raw-data", 0, 99, b"k", b"{not json", (), 0)
    with pytest.raises(InvalidEvent):
        await _handler(database).handle_batch([BatchItem(m, trace.INVALID_SPAN) for m in [*messages, broken]])
    snapshot = await _snapshot(database)
    assert snapshot["claimed"] == [] and snapshot["cleaned"] == [] and snapshot["events"] == []
