"""Erasure at preprocess, on SQLite and the real PostgreSQL, with a real artifact folder.

A record erased at ingest (``lmforge.record.erased.v1`` on ``raw-data``) must leave no copy of its
text here: not in the cleaned rows, the near-duplicate index, the outbox (whose published rows
keep their values), nor in the Parquet shards and manifests of the dataset versions cut before
the erasure. Later versions do not hold it; a late delivery of its raw event cannot bring it back;
the erasure is passed on to ``cleaned-data`` once, and its audit entry names the versions changed.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import DatasetVersionCreatedV1, Event, RawRecordV1, RecordErasedV1, content_hash
from lmforge.common.kafka import EventProducer, InboundMessage
from lmforge.common.settings import KafkaSettings
from lmforge.preprocess.handlers import RawRecordHandler
from lmforge.preprocess.models import cleaned_records, dropped_records, metadata, near_dup_bands, outbox
from lmforge.preprocess.near_dup import NearDuplicateIndex
from lmforge.preprocess.store import DatasetStore

from .test_datasets import _texts

SECRET_EMAIL = "li.na.secret@example.com"
T1 = f"T-1: my parcel arrived damaged, the box was open; write to {SECRET_EMAIL} or call about the refund"
T1_EDITED = T1 + " please, it has been two weeks"
T1_NEAR = T1.replace("two", "2") + " today"  # dropped as a near-duplicate of T-1
OTHERS = {
    "T-2": "T-2: the invoice total does not match the order I placed last Monday",
    "T-3": "T-3: I cannot log in after resetting my password on the mobile app",
}


class Preprocess:
    def __init__(self, database: Database, tmp_path: Path) -> None:
        relay = OutboxRelay(outbox, database.sessions, EventProducer(KafkaSettings(), source="tests"))  # only woken
        self.database = database
        self.artifact_dir = tmp_path / "artifacts"
        near_dups = NearDuplicateIndex(0.7)
        self.store = DatasetStore(database, ArtifactStore(str(self.artifact_dir)), relay, near_dups)
        self.handle = RawRecordHandler(database, "lmforge-preprocess", relay, near_dups=near_dups, datasets=self.store)
        self.offset = 0

    async def send(self, data: RawRecordV1 | RecordErasedV1, event_id: str | None = None) -> str:
        event = Event(data=data, source="tests", id=event_id or str(uuid.uuid4()))
        value, headers = event.to_kafka()
        self.offset += 1
        await self.handle(InboundMessage("raw-data", 0, self.offset, data.record_id.encode(), value, tuple(headers), 0))
        return event.id

    async def record(self, source_id: str, text: str, ingested_at: datetime | None = None) -> None:
        await self.send(
            RawRecordV1(
                record_id=f"crm:{source_id}",
                source="crm",
                source_id=source_id,
                text=text,
                content_hash=content_hash(text),
                ingested_at=ingested_at or datetime.now(UTC),
            )
        )

    def artifact_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in sorted(self.artifact_dir.rglob("*")) if p.is_file())


def erasure(source_id: str, requested_at: datetime | None = None) -> RecordErasedV1:
    return RecordErasedV1(
        erasure_id=str(uuid.uuid4()),
        record_id=f"crm:{source_id}",
        source="crm",
        source_id=source_id,
        requested_at=requested_at or datetime.now(UTC),
        requested_by="dpo (k_test)",
    )


async def test_an_erased_record_leaves_no_text_in_any_store_here(database: Database, tmp_path: Path) -> None:
    await database.create_all(metadata)
    p = Preprocess(database, tmp_path)
    await p.record("T-1", T1)
    for source_id, text in OTHERS.items():
        await p.record(source_id, text)
    await p.record("T-9", T1_NEAR)
    v1 = await p.store.create_version("tickets")
    await p.record("T-1", T1_EDITED)  # edited upstream: v2 holds the new text, the old is superseded
    v2 = await p.store.create_version("tickets")
    assert SECRET_EMAIL not in p.artifact_bytes().decode(errors="replace"), "masked when cleaned"
    assert p.store.manifest(v1["manifest_uri"])["masked"] == {"email": 1}
    assert "crm:T-1" in _texts(p.store, p.store.manifest(v2["manifest_uri"]))
    async with database.sessions() as s:
        kept_ids = (await s.execute(select(cleaned_records.c.id).where(cleaned_records.c.record_id == "crm:T-1"))).all()
        assert len(kept_ids) == 2 and (await s.execute(select(near_dup_bands))).first() is not None

    async with database.sessions() as s:
        near = (await s.execute(select(dropped_records).where(dropped_records.c.record_id == "crm:T-9"))).one()
    assert (near.reason, near.duplicate_of) == ("near_duplicate", "crm:T-1")

    request = erasure("T-1")
    event_id = await p.send(request)

    async with database.sessions() as s:
        assert (await s.execute(select(cleaned_records).where(cleaned_records.c.record_id == "crm:T-1"))).all() == []
        bands = (await s.execute(select(near_dup_bands.c.cleaned_id))).scalars().all()
        assert not {i for (i,) in kept_ids} & set(bands), "its near-duplicate band rows are gone"
        assert (await s.execute(select(dropped_records).where(dropped_records.c.record_id == "crm:T-1"))).all() == []
        events = (
            await s.execute(
                select(outbox.table.c.event_type, outbox.table.c.value).where(outbox.table.c.key == "crm:T-1")
            )
        ).all()
    assert [e.event_type for e in events] == [RecordErasedV1.event_type], "its cleaned-data events are forgotten"
    assert b"parcel" not in b"".join(e.value for e in events)

    # The versions cut before: rows out of the shards, entries out of the manifest, counts updated.
    for cut, superseded in ((v1, 0), (v2, 1)):
        manifest = p.store.manifest(cut["manifest_uri"])
        assert "crm:T-1" not in _texts(p.store, manifest)
        assert set(_texts(p.store, manifest)) == {"crm:T-2", "crm:T-3"}
        assert all(r["record_id"] != "crm:T-1" for r in manifest["records"] + manifest["superseded"])
        assert manifest["record_count"] == 2 == sum(manifest["split_counts"].values())
        assert manifest["masked"] == {} and manifest["sensitivity"]["low"] == 0, "its masked email is not counted"
        assert manifest["erased"] == [{"erasure_id": request.erasure_id, "records": 1, "superseded": superseded}]
        listed = {v["version"]: v for v in await p.store.list_versions("tickets")}
        assert listed[cut["version"]]["record_count"] == 2
    stored = p.artifact_bytes()
    for fragment in ("parcel arrived damaged", "two weeks", "crm:T-1", content_hash(T1)[:16]):
        assert fragment.encode() not in stored, f"{fragment!r} is still in the artifact store"

    async with database.sessions() as s:
        near = (await s.execute(select(dropped_records).where(dropped_records.c.record_id == "crm:T-9"))).one()
    assert (near.reason, near.duplicate_of) == ("near_duplicate", None), "its duplicate stays dropped, unnamed"
    # A redelivery after a crash between the rewrite and the audit entry still names both versions.
    again = await p.store.remove_from_versions({"crm:T-1"}, request.erasure_id)
    assert again == [{"dataset": "tickets", "version": 1}, {"dataset": "tickets", "version": 2}]

    entry = await p.store.erasure(request.erasure_id)
    assert entry is not None
    assert entry["cleaned_records_erased"] == 2 and entry["requested_by"] == "dpo (k_test)"
    assert entry["dataset_versions"] == [{"dataset": "tickets", "version": 1}, {"dataset": "tickets", "version": 2}]

    # Later versions do not hold it; the other records are untouched.
    v3 = p.store.manifest((await p.store.create_version("tickets"))["manifest_uri"])
    assert set(_texts(p.store, v3)) == {"crm:T-2", "crm:T-3"}
    assert _texts(p.store, v3)["crm:T-2"] == OTHERS["T-2"]

    # The same erasure delivered again changes nothing and is passed on once.
    await p.send(request, event_id=event_id)
    async with database.sessions() as s:
        passed_on = (
            await s.execute(select(outbox.table.c.id).where(outbox.table.c.event_type == RecordErasedV1.event_type))
        ).all()
    assert len(passed_on) == 1


async def test_a_late_raw_event_does_not_bring_an_erased_record_back(database: Database, tmp_path: Path) -> None:
    await database.create_all(metadata)
    p = Preprocess(database, tmp_path)
    ingested = datetime.now(UTC) - timedelta(seconds=5)
    await p.send(erasure("T-1"))  # ingest erased it while its raw event was still in flight
    await p.record("T-1", T1, ingested_at=ingested)
    async with database.sessions() as s:
        assert (await s.execute(select(cleaned_records.c.id))).all() == []
        assert (await s.execute(select(dropped_records.c.raw_event_id))).all() == []
    # Sent again after the erasure, it is new data and is kept.
    await p.record("T-1", T1, ingested_at=datetime.now(UTC) + timedelta(seconds=1))
    async with database.sessions() as s:
        assert len((await s.execute(select(cleaned_records.c.id))).all()) == 1


async def test_a_cut_that_read_its_snapshot_before_an_erasure_drops_the_record(
    database: Database, tmp_path: Path
) -> None:
    """The race: an erasure applied while a cut was reading sees no ready version to rewrite; the
    cut, once ready, takes the record out itself."""
    await database.create_all(metadata)
    p = Preprocess(database, tmp_path)
    await p.record("T-1", T1)
    for source_id, text in OTHERS.items():
        await p.record(source_id, text)
    write_shards = p.store._write_shards

    async def write_then_erase(*args: object) -> object:
        cut = await write_shards(*args)  # type: ignore[arg-type]
        await p.send(erasure("T-1"))  # applied after the snapshot, before the version is ready
        return cut

    p.store._write_shards = write_then_erase  # type: ignore[method-assign]
    cut = await p.store.create_version("tickets")
    assert cut["record_count"] == 2
    manifest = p.store.manifest(cut["manifest_uri"])
    assert set(_texts(p.store, manifest)) == {"crm:T-2", "crm:T-3"}
    assert b"parcel arrived" not in p.artifact_bytes()
    # It was taken out before the version was announced: the announcement counts what is in it.
    async with database.sessions() as s:
        (announced,) = (
            await s.execute(
                select(outbox.table.c.value).where(outbox.table.c.event_type == DatasetVersionCreatedV1.event_type)
            )
        ).scalars()
    assert json.loads(announced)["record_count"] == 2
    (listed,) = await p.store.list_versions("tickets")
    assert listed["record_count"] == 2 and listed["split_counts"] == manifest["split_counts"]


async def test_an_erasure_is_reported_applied_only_once_the_versions_are_rewritten(
    database: Database, tmp_path: Path
) -> None:
    """Between deleting the rows and rewriting the versions, the audit entry is not yet shown: the
    trail (``GET /v1/erasures/{id}``) says ``requested`` until the record is out of every version."""
    await database.create_all(metadata)
    p = Preprocess(database, tmp_path)
    await p.record("T-1", T1)
    await p.store.create_version("tickets")
    request = erasure("T-1")
    remove = p.store.remove_from_versions
    seen_meanwhile: list[object] = []

    async def look_then_remove(*args: object) -> object:
        seen_meanwhile.append(await p.store.erasure(request.erasure_id))
        return await remove(*args)  # type: ignore[arg-type]

    p.store.remove_from_versions = look_then_remove  # type: ignore[method-assign]
    await p.send(request)
    assert seen_meanwhile == [None], "rows deleted, versions not yet rewritten: not applied"
    entry = await p.store.erasure(request.erasure_id)
    assert entry is not None and entry["dataset_versions"] == [{"dataset": "tickets", "version": 1}]
    assert entry["applied_at"] >= entry["requested_at"]


async def test_an_erasure_published_late_leaves_a_copy_sent_after_it(database: Database, tmp_path: Path) -> None:
    """An erasure that got a 503 at ingest is published later by the sweeper, and can arrive after
    a copy of the record sent again meanwhile (stored at ingest after the erasure): that copy is
    new data and stays, here and in the versions; the copies from before go."""
    await database.create_all(metadata)
    p = Preprocess(database, tmp_path)
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    await p.record("T-1", T1, ingested_at=t0)
    await p.record("T-2", OTHERS["T-2"], ingested_at=t0)
    v1 = await p.store.create_version("tickets")
    requested = t0 + timedelta(minutes=1)  # erased at ingest now; its event is late
    edited = "T-1: the parcel was replaced, thank you"
    await p.record("T-1", edited, ingested_at=requested + timedelta(minutes=1))  # sent again after it
    await p.record("T-2", OTHERS["T-2"], ingested_at=requested + timedelta(minutes=1))  # same text again
    v2 = await p.store.create_version("tickets")
    for source_id in ("T-1", "T-2"):
        await p.send(erasure(source_id, requested_at=requested))

    async with database.sessions() as s:
        left = {(r.record_id, r.text) for r in await s.execute(select(cleaned_records))}
        events = [json.loads(v) for v in (await s.execute(select(outbox.table.c.value))).scalars()]
    assert left == {("crm:T-1", edited), ("crm:T-2", OTHERS["T-2"])}, "the copies sent after the erasure"
    assert T1 not in json.dumps(events) and any(e.get("text") == edited for e in events)
    # v1 held the old copies: T-1's goes; T-2's text is the record's data again (sent again after
    # the erasure, the same bytes), so it stays.
    assert _texts(p.store, p.store.manifest(v1["manifest_uri"])) == {"crm:T-2": OTHERS["T-2"]}
    in_v2 = _texts(p.store, p.store.manifest(v2["manifest_uri"]))
    assert in_v2 == {"crm:T-1": edited, "crm:T-2": OTHERS["T-2"]}
    assert "parcel arrived damaged" not in json.dumps(p.store.manifest(v2["manifest_uri"]))
    assert b"parcel arrived damaged" not in p.artifact_bytes()
