# ruff: noqa: RUF001  (Chinese text is written with full-width punctuation)
"""Near-duplicates across the stream, on SQLite and the real PostgreSQL.

- English and Chinese near-duplicates are dropped, naming the first-kept record and the measured
  similarity; different texts are kept; an upstream edit is not a duplicate of its older text.
- The index is in the database: a new handler and index (a restart, another replica) find
  records kept before; the same records in the same order give the same survivors.
- Two replicas handling near-duplicates at the same time keep one (PostgreSQL, where the race is).
- Dropped records are queryable; dataset manifests count drops per reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import Event, content_hash
from lmforge.common.kafka import EventProducer, InboundMessage
from lmforge.common.settings import KafkaSettings
from lmforge.devstack.servers import PostgresCluster
from lmforge.devstack.support_corpus import make_corpus
from lmforge.preprocess import api
from lmforge.preprocess.handlers import RawRecordHandler
from lmforge.preprocess.models import cleaned_records, dropped_records, metadata, near_dup_bands, outbox
from lmforge.preprocess.near_dup import (
    Fingerprint,
    IndexView,
    NearDuplicate,
    NearDuplicateIndex,
    band_shape,
    candidate_probability,
    jaccard,
    mark_index_stale,
    shingles,
)
from lmforge.preprocess.settings import NearDupSettings
from lmforge.preprocess.store import DatasetStore

from ..common.factories import raw_record
from .near_dup_pairs import evaluate, make_pairs

EN = (
    "Hello, my order 58213 has not arrived and the tracking page has not changed for nine days. "
    "I was also charged twice for the invoice, once on the 3rd and again today. Please help."
)
EN_COPY = EN.replace("Please help.", "Please help, thanks.")
ZH = (
    "您好，我的订单58213已经九天没有更新物流信息了，请帮忙查一下。"
    "发票被重复扣款两次，第一次是3号，第二次是今天。麻烦尽快处理。"
)
ZH_COPY = ZH.replace("麻烦尽快处理。", "麻烦尽快处理，谢谢！")
OTHER = "The export to CSV stops at row 4411 and the file is cut off; the report for last week is empty."


def _relay(database: Database) -> OutboxRelay:
    return OutboxRelay(outbox, database.sessions, EventProducer(KafkaSettings(), source="tests"))  # only woken


def _handler(database: Database, index: NearDuplicateIndex | None = None) -> RawRecordHandler:
    return RawRecordHandler(database, "lmforge-preprocess", _relay(database), near_dups=index or NearDuplicateIndex())


def _message(offset: int, source_id: str, text: str, source: str = "crm") -> InboundMessage:
    value, headers = Event(data=raw_record(source_id, text, source), source="tests").to_kafka()
    return InboundMessage("raw-data", 0, offset, source_id.encode(), value, tuple(headers), 0)


async def _kept(database: Database) -> list[str]:
    async with database.sessions() as s:
        return list((await s.execute(select(cleaned_records.c.record_id).order_by(cleaned_records.c.id))).scalars())


async def _dropped(database: Database) -> dict[str, Any]:
    async with database.sessions() as s:
        rows = (await s.execute(select(dropped_records))).mappings().all()
    return {r["record_id"]: dict(r) for r in rows}


def test_shingles_and_banding() -> None:
    assert shingles("Hello  World") == {"hello", "ello ", "llo w", "lo wo", "o wor", " worl", "world"}
    assert shingles("订单已发货") == {"订单已发货"} and len(shingles("订单已经发货了")) == 3
    assert band_shape(0.9) == (10, 12) and band_shape(0.8) == (18, 7)
    for threshold in (0.7, 0.8, 0.9):
        bands, rows = band_shape(threshold)
        assert bands * rows <= 128
        assert candidate_probability(threshold, bands, rows) >= 0.95
        more_rows = rows + 1  # the fewest false candidates: one more row per band would miss too often
        assert candidate_probability(threshold, 128 // more_rows, more_rows) < 0.95
    assert candidate_probability(0.6, 10, 12) < 0.03, "at 0.9, few false candidates at 0.6"


def test_precision_and_recall_on_generated_pairs() -> None:
    """200 near-duplicate and 200 distinct pairs (docs/benchmarks.md, "Near-duplicates")."""
    pairs = make_pairs(200)
    default = evaluate(pairs, NearDupSettings().threshold)
    assert default.false_positives == 0, "no distinct pair is taken for a near-duplicate"
    assert default.lsh_recall >= 0.97, "pairs over the threshold share a band"
    assert default.recall >= 0.6  # 0.635: edits that add a sign-off to a short ticket fall under 0.9
    lower = evaluate(pairs, 0.8)
    assert lower.false_positives == 0 and lower.lsh_recall == 1.0 and lower.recall >= 0.93


async def test_near_duplicates_are_dropped_naming_the_first_kept(database: Database) -> None:
    await database.create_all(metadata)
    handle = _handler(database)
    for offset, (sid, text) in enumerate(
        [("E-1", EN), ("Z-1", ZH), ("O-1", OTHER), ("E-2", EN_COPY), ("Z-2", ZH_COPY), ("E-3", EN)]
    ):
        await handle(_message(offset, sid, text))
    assert await _kept(database) == ["crm:E-1", "crm:Z-1", "crm:O-1"]
    dropped = await _dropped(database)
    assert set(dropped) == {"crm:E-2", "crm:Z-2", "crm:E-3"}
    assert dropped["crm:E-2"]["reason"] == "near_duplicate" and dropped["crm:E-2"]["duplicate_of"] == "crm:E-1"
    assert dropped["crm:Z-2"]["reason"] == "near_duplicate" and dropped["crm:Z-2"]["duplicate_of"] == "crm:Z-1"
    assert dropped["crm:E-3"]["reason"] == "duplicate" and dropped["crm:E-3"]["duplicate_of"] == "crm:E-1"
    for rid in ("crm:E-2", "crm:Z-2"):
        row = dropped[rid]
        assert row["operator"] == "minhash_lsh" and row["threshold"] == 0.9
        assert 0.9 <= row["measured"] < 1.0
    assert dropped["crm:E-3"]["operator"] == "exact_dedup" and dropped["crm:E-3"]["measured"] == 1.0
    async with database.sessions() as s:
        owners = set((await s.execute(select(near_dup_bands.c.cleaned_id))).scalars())
        band_rows = (await s.execute(select(func.count()).select_from(near_dup_bands))).scalar_one()
        signatures = (await s.execute(select(cleaned_records.c.minhash))).scalars().all()
    assert len(owners) == 3 and band_rows == 30, "the kept records own their band rows, dropped ones none"
    assert all(sig is not None and len(sig) == 128 * 4 for sig in signatures)


async def test_an_edit_is_not_a_near_duplicate_of_its_older_text(database: Database) -> None:
    await database.create_all(metadata)
    handle = _handler(database)
    await handle(_message(0, "E-1", EN))
    await handle(_message(1, "E-1", EN_COPY))  # the same ticket, edited upstream: it supersedes
    assert await _kept(database) == ["crm:E-1", "crm:E-1"]
    assert await _dropped(database) == {}


async def test_a_new_index_over_the_same_database_finds_earlier_records(database: Database) -> None:
    await database.create_all(metadata)
    await _handler(database)(_message(0, "E-1", EN))
    restarted = _handler(database, NearDuplicateIndex())  # a restarted or another replica
    await restarted(_message(1, "E-2", EN_COPY))
    assert (await _dropped(database))["crm:E-2"]["duplicate_of"] == "crm:E-1"


async def test_same_records_same_order_same_survivors(database: Database, tmp_path: Path) -> None:
    pairs = make_pairs(20, seed=5)
    stream = [p.a for p in pairs] + [p.b for p in pairs]
    other = Database(f"sqlite+aiosqlite:///{tmp_path}/again.db")
    try:
        outcomes = []
        for db in (database, other):
            await db.create_all(metadata)
            handle = _handler(db)
            for offset, text in enumerate(stream):
                await handle(_message(offset, f"P-{offset}", text))
            dropped = await _dropped(db)
            outcomes.append((await _kept(db), {k: (v["duplicate_of"], v["measured"]) for k, v in dropped.items()}))
    finally:
        await other.dispose()
    assert outcomes[0] == outcomes[1]
    _, dropped = outcomes[0]
    assert len(dropped) >= 10, "the edited copies of the first 20 tickets are dropped"
    assert all(int(dup.split("-")[1]) < int(rid.split("-")[1]) for rid, (dup, _) in dropped.items())


class _RacingIndex(NearDuplicateIndex):
    """Holds each replica's first view of the index until both have read theirs: neither can see
    the other's record."""

    def __init__(self, barrier: asyncio.Barrier, views: list[int]) -> None:
        super().__init__()
        self.barrier, self.views = barrier, views

    async def view(self, session: AsyncSession, fingerprints: Iterable[Fingerprint]) -> IndexView:
        found = await super().view(session, fingerprints)
        self.views.append(len(found.owners))
        if len(self.views) <= 2:  # the first view of each replica, not the second look after a conflict
            await self.barrier.wait()
        return found


async def test_two_replicas_racing_keep_one_of_two_near_duplicates(postgres: PostgresCluster, unique: str) -> None:
    database = Database(postgres.create_database(f"race_{unique}"))
    try:
        await database.create_all(metadata)
        barrier, views = asyncio.Barrier(2), []  # type: ignore[var-annotated]
        replicas = [_handler(database, _RacingIndex(barrier, views)) for _ in range(2)]
        await asyncio.gather(replicas[0](_message(0, "E-1", EN)), replicas[1](_message(1, "E-2", EN_COPY)))
        kept = await _kept(database)
        assert len(kept) == 1, "both lookups saw nothing; the band rows' key made the second one wait and see"
        dropped = await _dropped(database)
        assert len(dropped) == 1 and next(iter(dropped.values()))["duplicate_of"] == kept[0]
        assert views == [0, 0, views[2]] and views[2] > 0, "the second replica decided again, and saw the first's"
        async with database.sessions() as s:
            owners = set((await s.execute(select(near_dup_bands.c.cleaned_id))).scalars())
            ids = set((await s.execute(select(cleaned_records.c.id))).scalars())
        assert owners == ids, "the dropped record's band rows went with it"

        # Without the barrier: six replicas, six copies at once. Near-duplication is not transitive,
        # so more than one may be kept, but no two kept ones are near-duplicates of each other.
        base = (
            "Dear support, the dashboard of our team account shows last month's numbers and the weekly "
            "report has been empty since the update on Monday. We export it to CSV every Friday for finance."
        )
        texts = [
            base,
            base.replace("Monday", "Tuesday"),
            base.replace("Dear support,", "Hi,"),
            base + " Thanks.",
            base.replace("Friday", "Friday morning"),
            base.replace("CSV", "Excel"),
        ]
        many = [_handler(database) for _ in texts]
        await asyncio.gather(
            *(h(_message(10 + i, f"V-{i}", t)) for i, (h, t) in enumerate(zip(many, texts, strict=True)))
        )
        async with database.sessions() as s:
            kept_texts = list((await s.execute(select(cleaned_records.c.text))).scalars())
        for i, a in enumerate(kept_texts):
            assert all(jaccard(shingles(a), shingles(b)) < 0.9 for b in kept_texts[i + 1 :])
        dropped = await _dropped(database)
        assert len(dropped) == 1 + len(texts) + 1 - len(kept_texts)
        kept = await _kept(database)
        assert len(kept) < 1 + len(texts), "copies were dropped"
        assert all(d["duplicate_of"] in kept and d["measured"] >= 0.9 for d in dropped.values())
    finally:
        await database.dispose()


async def test_the_demo_corpus_loses_no_distinct_ticket(database: Database) -> None:
    """Its tickets share templates and differ in an order number or contact (closest pair 0.895)."""
    await database.create_all(metadata)
    handle = _handler(database, NearDuplicateIndex(NearDupSettings().threshold))
    for offset, record in enumerate(make_corpus(200)):
        await handle(_message(offset, record["source_id"], record["text"]))
    reasons = [r["reason"] for r in (await _dropped(database)).values()]
    assert "near_duplicate" not in reasons and reasons.count("duplicate") > 0


async def test_dropped_records_are_queryable_and_counted_in_versions(database: Database, tmp_path: Path) -> None:
    await database.create_all(metadata)
    handle = _handler(database)
    stream = [("E-1", EN, "crm"), ("E-2", EN_COPY, "crm"), ("E-3", EN, "crm"), ("X-1", "<p> </p>", "crm")]
    stream += [("Z-1", ZH, "erp"), ("Z-2", ZH_COPY, "erp")]
    for offset, (sid, text, source) in enumerate(stream):
        await handle(_message(offset, sid, text, source))
    store = DatasetStore(database, ArtifactStore(str(tmp_path / "artifacts")), _relay(database), handle.near_dups)

    every = store.manifest((await store.create_version("tickets"))["manifest_uri"])
    assert every["dropped"] == {"duplicate": 1, "near_duplicate": 2, "empty": 1}
    assert every["near_dup"]["threshold"] == 0.9 and every["near_dup"]["bands"] == 10
    assert {"records", "split_counts", "superseded", "source_offsets"} <= set(every), "existing fields kept"
    erp = store.manifest((await store.create_version("erp-only", ["erp"]))["manifest_uri"])
    assert erp["dropped"] == {"duplicate": 0, "near_duplicate": 1, "empty": 0}

    app = FastAPI()
    app.include_router(api.router)
    app.state.datasets = store
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://preprocess") as client:
        near = (await client.get("/dropped", params={"reason": "near_duplicate"})).json()
        assert {(r["record_id"], r["duplicate_of"]) for r in near} == {("crm:E-2", "crm:E-1"), ("erp:Z-2", "erp:Z-1")}
        assert all(r["operator"] == "minhash_lsh" and r["measured"] >= r["threshold"] == 0.9 for r in near)
        assert len((await client.get("/dropped", params={"limit": 2})).json()) == 2
        assert len((await client.get("/dropped", params={"limit": 2, "offset": 2})).json()) == 2
        one = (await client.get("/dropped", params={"record_id": "crm:X-1"})).json()
        assert [(r["reason"], r["operator"], r["measured"]) for r in one] == [("empty", "clean_text", 0.0)]
        assert (await client.get("/dropped", params={"reason": "spam"})).json() == []  # nothing dropped for it
        for bad in ({"reason": "Spam!"}, {"limit": 0}, {"limit": 1001}, {"offset": -1}):
            assert (await client.get("/dropped", params=bad)).status_code == 422


async def test_a_changed_threshold_rebuilds_the_index_from_the_stored_signatures(database: Database) -> None:
    """Band rows depend on the banding, which the threshold sets: after a change, records kept under
    the old one are found again only once the index is rebuilt, which a starting service does
    before it consumes (and only once: a second start finds it done)."""
    await database.create_all(metadata)
    at_09 = NearDuplicateIndex(0.9)
    assert await at_09.ensure_index(database) == 0, "an empty index is recorded under its banding"
    handle = _handler(database, at_09)
    await handle(_message(0, "E-1", EN))
    await handle(_message(1, "O-1", OTHER))
    near = EN.replace("once on the 3rd", "first on the 3rd").replace("nine days", "9 days") + " Order 58213."
    similarity = jaccard(shingles(EN), shingles(near))
    assert 0.8 <= similarity < 0.9, similarity

    at_08 = NearDuplicateIndex(0.8)
    assert (at_08.bands, at_08.rows) != (at_09.bands, at_09.rows)
    stale = await _find(database, at_08, near)
    assert stale is None, "under the new banding the old rows never match"
    assert await at_08.ensure_index(database) == 2
    assert await at_08.ensure_index(database) is None, "already this banding's"
    async with database.sessions() as s:
        band_rows = (await s.execute(select(func.count()).select_from(near_dup_bands))).scalar_one()
    assert band_rows == 2 * at_08.bands
    await _handler(database, at_08)(_message(2, "E-2", near))
    dropped = (await _dropped(database))["crm:E-2"]
    assert dropped["reason"] == "near_duplicate" and dropped["duplicate_of"] == "crm:E-1"
    assert dropped["threshold"] == 0.8 and dropped["measured"] == similarity


async def _find(database: Database, index: NearDuplicateIndex, text: str) -> NearDuplicate | None:
    async with database.sessions() as s:
        return await index.find(s, index.fingerprint(text), "crm:probe")


async def test_a_rebuild_of_a_large_index_at_a_low_threshold_fits_the_driver(database: Database) -> None:
    """At 0.5 a record has dozens of bands: a page of records is more band rows than PostgreSQL's
    driver takes parameters in one statement (32,767), so the rebuild inserts them in chunks."""
    await database.create_all(metadata)
    at_05 = NearDuplicateIndex(0.5)
    kept = 1_200
    assert kept * at_05.bands * 3 > 32_767 and at_05.bands > 10
    now = datetime.now(UTC)
    rows = []
    for i in range(kept):
        text = f"ticket {i}: " + " ".join(f"w{(i * 7919 + j * 104729) % 100_003}" for j in range(12))
        rows.append(
            {
                "record_id": f"crm:R-{i}",
                "raw_event_id": f"e-{i}",
                "content_hash": content_hash(text),
                "raw_content_hash": content_hash(text),
                "source": "crm",
                "text": text,
                "metadata": {},
                "masked_entities": {},
                "split": "train",
                "source_partition": 0,
                "source_offset": i,
                "created_at": now,
                "minhash": at_05.fingerprint(text).signature,
            }
        )
    async with database.sessions.begin() as s:
        await s.execute(cleaned_records.insert(), rows)
    assert await at_05.ensure_index(database) == kept
    async with database.sessions() as s:
        owners = (await s.execute(select(func.count(func.distinct(near_dup_bands.c.cleaned_id))))).scalar_one()
    assert owners == kept, "every kept record owns band rows"


async def test_records_kept_while_the_index_was_off_are_indexed_when_it_is_back(database: Database) -> None:
    """Switched off (no ``near_dup`` step, or the setting), preprocess keeps records without band
    rows and marks the index stale; the next start with it rebuilds it, so they are found."""
    await database.create_all(metadata)
    index = NearDuplicateIndex(0.9)
    await index.ensure_index(database)
    await _handler(database, index)(_message(0, "O-1", OTHER))
    off = RawRecordHandler(database, "lmforge-preprocess", _relay(database), near_dups=None)
    await mark_index_stale(database)  # what a start without the index does
    await off(_message(1, "E-1", EN))
    assert await index.ensure_index(database) == 2, "rebuilt from both kept records"
    await _handler(database, index)(_message(2, "E-2", EN_COPY))
    dropped = (await _dropped(database))["crm:E-2"]
    assert (dropped["reason"], dropped["duplicate_of"]) == ("near_duplicate", "crm:E-1")
