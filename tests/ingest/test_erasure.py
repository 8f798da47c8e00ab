"""Erasure at ingest: real Tansu brokers and a real SQLite database.

``POST /erasures`` deletes every raw row of the record (each text ever received for it) in the
transaction that writes the audit entry, then publishes ``lmforge.record.erased.v1`` on
``raw-data``, keyed like the record so it follows the record's own events in their partition.
While the broker is away the caller gets 503, yet the rows are gone already, and a raw row that
was waiting to be published never is; the sweeper publishes the erasure once the broker is back.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from lmforge.common.db import Database, lock_names
from lmforge.common.events import RawRecordV1, RecordErasedV1, Topic, content_hash, decode_event
from lmforge.common.http import PRINCIPAL_HEADER
from lmforge.common.kafka import EventProducer, ensure_topics
from lmforge.common.settings import KafkaSettings
from lmforge.devstack.servers import PostgresCluster, TansuBroker
from lmforge.ingest.models import erasures, raw_records
from lmforge.ingest.models import metadata as ingest_metadata
from lmforge.ingest.store import RawRecordStore

from ..helpers import read_topic, wait_until
from .test_sweeper import _client, _settings

DPO = {PRINCIPAL_HEADER: json.dumps({"key_id": "k-dpo", "name": "dpo"})}


def _rec(source_id: str, text: str) -> dict[str, str]:
    return {"source": "crm", "source_id": source_id, "text": text}


async def _raw_rows(app: object) -> list[tuple[str, str]]:
    db = app.state.runtime.db  # type: ignore[attr-defined]
    async with db.sessions() as s:
        return [(r.source_id, r.text) for r in await s.execute(select(raw_records).order_by(raw_records.c.id))]


async def test_an_erasure_deletes_every_raw_text_and_follows_the_record_downstream(
    kafka_settings: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    broker = TansuBroker(tmp_path / "own-broker")  # its own, so raw-data holds this test's events only
    broker.start()
    try:
        kafka = kafka_settings.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
        async for client, app in _client(_settings(kafka, tmp_path, unique)):
            for body in (
                _rec("T-1", "call me on 13812345678"),
                _rec("T-1", "edited: call 13812345678"),
                _rec("T-2", "hi"),
            ):
                assert (await client.post("/records", json=body)).status_code == 202
            r = await client.post("/erasures", json={"source": "crm", "source_id": "T-1"}, headers=DPO)
            assert r.status_code == 202, r.text
            entry = r.json()
            assert entry["record_id"] == "crm:T-1" and entry["raw_records_erased"] == 2
            assert entry["requested_by"] == "dpo (k-dpo)" and entry["published_at"] is not None
            assert await _raw_rows(app) == [("T-2", "hi")], "both texts of T-1 are gone, T-2 is kept"

            got = await client.get(f"/erasures/{entry['erasure_id']}")
            assert got.status_code == 200 and got.json() == entry
            assert (await client.get("/erasures/no-such-erasure")).status_code == 404
            for bad in ({"source": "crm"}, {"source": "CRM!", "source_id": "T-1"}, {"source": "crm", "source_id": " "}):
                refused = await client.post("/erasures", json=bad)
                assert refused.status_code == 422, bad
            # Erasing again (a retry, or a record never seen) is a new entry that deletes nothing.
            again = await client.post("/erasures", json={"source": "crm", "source_id": "T-1"})
            assert again.status_code == 202 and again.json()["raw_records_erased"] == 0
            assert again.json()["requested_by"] is None, "an internal caller: no key"

            events = await read_topic(broker.bootstrap_servers, Topic.RAW_DATA, expected=5)
        t1 = [x for x in events if x.key == b"crm:T-1"]
        decoded = [decode_event(x.headers, x.value, (RawRecordV1, RecordErasedV1)) for x in t1]
        assert [type(e.data) for e in decoded] == [RawRecordV1, RawRecordV1, RecordErasedV1, RecordErasedV1]
        assert len({x.partition for x in t1}) == 1, "in the record's partition, after its own events"
        assert decoded[2].data.erasure_id == entry["erasure_id"]
        assert b"13812345678" not in b"".join(x.value for x in t1 if x.value and b"erasure_id" in x.value)
    finally:
        broker.stop()


async def test_an_erasure_during_a_broker_outage_is_published_later_and_strands_nothing(
    kafka_settings: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    broker = TansuBroker(tmp_path / "own-broker")
    broker.start()
    kafka = kafka_settings.model_copy(
        update={"bootstrap_servers": broker.bootstrap_servers, "request_timeout_ms": 5_000}
    )
    try:
        async for client, app in _client(_settings(kafka, tmp_path, unique)):
            broker.stop()
            assert (await client.post("/records", json=_rec("T-1", "my email is a@b.example"))).status_code == 503
            r = await client.post("/erasures", json={"source": "crm", "source_id": "T-1"}, headers=DPO)
            assert r.status_code == 503, r.text
            assert await _raw_rows(app) == [], "the stranded raw row is deleted, never to be published"
            db = app.state.runtime.db  # type: ignore[attr-defined]
            async with db.sessions() as s:
                (waiting,) = (await s.execute(select(erasures))).all()
            assert waiting.published_at is None and waiting.raw_records_erased == 1
            broker.start()  # same port; memory-only, so topics come back empty
            await ensure_topics(kafka, [Topic.RAW_DATA])
            (event,) = await read_topic(broker.bootstrap_servers, Topic.RAW_DATA, expected=1, timeout=30)

            async def published(db: Any = db) -> bool:
                async with db.sessions() as s:
                    return (await s.execute(select(erasures.c.published_at))).scalar_one() is not None

            await wait_until(published, timeout=10)
        erased = decode_event(event.headers, event.value, RecordErasedV1)
        assert erased.id == waiting.event_id and erased.data.record_id == "crm:T-1"
    finally:
        broker.stop()


async def test_a_record_stored_while_it_is_erased_does_not_survive_on_postgresql(
    kafka_settings: KafkaSettings, postgres: PostgresCluster, unique: str
) -> None:
    """On PostgreSQL an erasure's delete cannot see a row another transaction has inserted but not
    committed: without a lock, a copy stored at the moment of the erasure would survive it. Storing
    and erasing lock the record's name, so the erasure waits for the store, then deletes its row."""
    database = Database(postgres.create_database(f"erase_race_{unique}"))
    try:
        await database.create_all(ingest_metadata)
        async with EventProducer(kafka_settings, source="tests") as producer:
            store = RawRecordStore(database, producer)
            async with database.sessions.begin() as session:  # a store in flight: locked, inserted, not committed
                await lock_names(session, ["crm:T-7"])
                await session.execute(
                    raw_records.insert().values(
                        record_id="crm:T-7",
                        source="crm",
                        source_id="T-7",
                        text="call me on 13812345678",
                        content_hash=content_hash("call me on 13812345678"),
                        revision_hash=content_hash("call me on 13812345678"),
                        metadata={},
                        ingested_at=datetime.now(UTC),
                        event_id="e-race",
                    )
                )
                erasing = asyncio.create_task(store.erase("crm", "T-7", "dpo"))
                await asyncio.sleep(1.0)
                assert not erasing.done(), "the erasure waits for the record's lock"
            entry = await asyncio.wait_for(erasing, 30)
        assert entry.raw_records_erased == 1, "it deleted the row committed meanwhile"
        async with database.sessions() as s:
            assert (await s.execute(select(raw_records))).all() == []
        assert entry.requested_at > datetime.now(UTC) - timedelta(seconds=30)
    finally:
        await database.dispose()
