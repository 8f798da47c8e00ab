"""Dataset version splits and the streaming cut, on SQLite and the real PostgreSQL.

- ``by: hash``: a record's split depends on its id and the ratios only, so it keeps it in every
  version; 7:2:1 gives about 7:2:1. The default (8:1:1 by hash) is exactly the split each record
  was given when it was cleaned (``sha256(record_id) % 10``).
- ``by: time``: every train record was cleaned before every val record, every val before every test.
- Bad split specs are refused with a 422 naming the field, by preprocess and by the gateway schema.
- Shards are written in row groups, and the trainer reads the version.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import Event, Split, content_hash
from lmforge.common.http import create_app
from lmforge.common.kafka import EventProducer, InboundMessage
from lmforge.common.settings import KafkaSettings
from lmforge.gateway.schemas import DatasetVersionRequest
from lmforge.preprocess import api
from lmforge.preprocess.api import CreateVersion
from lmforge.preprocess.cleaning import split_for
from lmforge.preprocess.handlers import RawRecordHandler
from lmforge.preprocess.models import cleaned_records, metadata, outbox
from lmforge.preprocess.splits import SplitRatios, SplitSpec, split_by_hash, time_cuts
from lmforge.preprocess.store import DatasetStore

from ..common.factories import raw_record


def _store(database: Database, tmp_path: Path) -> DatasetStore:
    relay = OutboxRelay(outbox, database.sessions, EventProducer(KafkaSettings(), source="tests"))  # only woken
    return DatasetStore(database, ArtifactStore(str(tmp_path / "artifacts")), relay)


async def _insert(database: Database, ids: range, source: str = "crm", text: str = "record {i}: the invoice") -> None:
    """Cleaned rows as the handler writes them (in this order: ids ascending), without cleaning each."""
    now = datetime.now(UTC)
    rows = []
    for i in ids:
        record_id, body = f"{source}:R-{i}", text.format(i=i)
        rows.append(
            {
                "record_id": record_id,
                "raw_event_id": hashlib.sha256(f"{record_id}/{body}".encode()).hexdigest(),
                "content_hash": content_hash(body),
                "raw_content_hash": content_hash(body),
                "source": source,
                "text": body,
                "label": "billing" if i % 2 else None,
                "metadata": {},
                "masked_entities": {},
                "split": split_for(record_id).value,
                "source_partition": 0,
                "source_offset": i,
                "created_at": now,
            }
        )
    async with database.sessions.begin() as session:
        await session.execute(cleaned_records.insert(), rows)


def _splits(manifest: dict[str, Any]) -> dict[str, str]:
    return {r["record_id"]: r["split"] for r in manifest["records"]}


def _shard_ids(store: DatasetStore, manifest: dict[str, Any]) -> dict[str, set[str]]:
    ids = {}
    for split, uri in manifest["shards"].items():
        table = pq.read_table(io.BytesIO(store.artifacts.read_bytes(store.artifacts.key_of(uri))))
        ids[split] = set(table["record_id"].to_pylist())
    return ids


async def _cleaned_ids(database: Database) -> dict[str, int]:
    """record id -> the id of its newest cleaned row (the order records were cleaned in)."""
    async with database.sessions() as session:
        rows = (await session.execute(select(cleaned_records.c.record_id, cleaned_records.c.id))).all()
    latest: dict[str, int] = {}
    for record_id, row_id in rows:
        latest[record_id] = max(latest.get(record_id, 0), row_id)
    return latest


async def test_7_2_1_by_hash_is_close_to_the_ratios_and_a_record_keeps_its_split(
    database: Database, tmp_path: Path
) -> None:
    await database.create_all(metadata)
    store = _store(database, tmp_path)
    await _insert(database, range(2000))
    spec = SplitSpec.model_validate({"ratios": {"train": 7, "val": 2, "test": 1}, "by": "hash"})
    first = store.manifest((await store.create_version("tickets", split=spec))["manifest_uri"])

    counts = first["split_counts"]
    assert sum(counts.values()) == first["record_count"] == 2000
    for split, share in {"train": 0.7, "val": 0.2, "test": 0.1}.items():
        assert abs(counts[split] / 2000 - share) < 0.035, counts
    assert first["split"] == {"ratios": {"train": 7, "val": 2, "test": 1}, "by": "hash"}
    shards = _shard_ids(store, first)
    assert {s: len(ids) for s, ids in shards.items()} == counts
    assert all(r["record_id"] in shards[r["split"]] for r in first["records"])

    await _insert(database, range(2000, 2500))  # more records arrive; the same ratios, written as fractions
    fractions = SplitSpec.model_validate({"ratios": {"train": 0.7, "val": 0.2, "test": 0.1}})
    second = store.manifest((await store.create_version("tickets", split=fractions))["manifest_uri"])
    before, after = _splits(first), _splits(second)
    assert len(after) == 2500
    assert {rid: after[rid] for rid in before} == before, "every record keeps its split in the next version"
    assert second["split"] == {"ratios": {"train": 0.7, "val": 0.2, "test": 0.1}, "by": "hash"}


async def test_by_time_the_oldest_records_train_and_the_newest_test(database: Database, tmp_path: Path) -> None:
    await database.create_all(metadata)
    store = _store(database, tmp_path)
    await _insert(database, range(600))
    await _insert(database, range(600, 700), source="erp")  # another source, interleaved in time
    await _insert(database, range(700, 1000))
    await _insert(database, range(5), text="record {i}: the invoice, edited")  # 5 old records edited: now newest
    spec = SplitSpec.model_validate({"ratios": {"train": 7, "val": 2, "test": 1}, "by": "time"})
    manifest = store.manifest((await store.create_version("tickets", split=spec))["manifest_uri"])

    assert manifest["record_count"] == 1000
    assert manifest["split_counts"] == {"train": 700, "val": 200, "test": 100}
    assert manifest["split"] == {"ratios": {"train": 7, "val": 2, "test": 1}, "by": "time"}
    assert len(manifest["superseded"]) == 5
    order = await _cleaned_ids(database)
    by_split: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for record_id, split in _splits(manifest).items():
        by_split[split].append(order[record_id])
    assert max(by_split["train"]) < min(by_split["val"]), "every train record is older than every val record"
    assert max(by_split["val"]) < min(by_split["test"]), "every val record is older than every test record"
    assert {f"crm:R-{i}" for i in range(5)} <= set(_shard_ids(store, manifest)["test"]), "an edit is new data"

    only_crm = store.manifest(
        (await store.create_version("tickets", ["crm"], split=spec))["manifest_uri"]
    )  # per-source filtering: the order among that source's records
    assert only_crm["record_count"] == 900 and only_crm["sources"] == ["crm"]
    assert only_crm["split_counts"] == {"train": 630, "val": 180, "test": 90}
    crm = {s: [order[r] for r, x in _splits(only_crm).items() if x == s] for s in ("train", "val", "test")}
    assert max(crm["train"]) < min(crm["val"]) and max(crm["val"]) < min(crm["test"])


def test_time_cuts_round_each_share_and_keep_one_training_record() -> None:
    assert time_cuts(10, (8, 1, 1)) == (8, 9)
    assert time_cuts(2000, (7, 2, 1)) == (1400, 1800)
    assert time_cuts(1, (1, 1, 1)) == (1, 1), "one record: train"
    assert time_cuts(10, (1, 0, 0)) == (10, 10)


async def test_the_default_split_is_the_one_each_record_was_cleaned_with(database: Database, tmp_path: Path) -> None:
    await database.create_all(metadata)
    store = _store(database, tmp_path)
    handle = RawRecordHandler(database, "lmforge-preprocess", store.relay)
    for i in range(40):  # through the handler: the split it stores is the one cleaning gives
        value, headers = Event(data=raw_record(f"T-{i}", f"ticket {i}: my invoice {i} is wrong"), source="t").to_kafka()
        await handle(InboundMessage("raw-data", 0, i, b"k", value, tuple(headers), 0))
    await _insert(database, range(2000))
    default = store.manifest((await store.create_version("tickets"))["manifest_uri"])

    async with database.sessions() as session:
        stored = dict((await session.execute(select(cleaned_records.c.record_id, cleaned_records.c.split))).all())
    assert len(stored) == 2040
    assert _splits(default) == stored, "the default cut keeps each record's split from cleaning"
    old_rule = {rid: ("train", "train", "train", "train", "train", "train", "train", "train", "val", "test")[
        int(hashlib.sha256(rid.encode()).hexdigest(), 16) % 10
    ] for rid in stored}  # fmt: skip
    assert _splits(default) == old_rule, "sha256(record_id) % 10: 8 train, 1 val, 1 test"
    assert default["split"] == {"ratios": {"train": 8, "val": 1, "test": 1}, "by": "hash"}

    doubled = SplitSpec.model_validate({"ratios": {"train": 16, "val": 2, "test": 2}})
    assert SplitRatios(train=0.8, val=0.1, test=0.1).weights() == (8, 1, 1)
    same = store.manifest((await store.create_version("tickets", split=doubled))["manifest_uri"])
    assert _splits(same) == stored, "ratios in the same proportion split the same way"


BAD_SPLITS: list[tuple[dict[str, Any], str, str]] = [
    ({"ratios": {"train": 0, "val": 1, "test": 1}}, "split.ratios.train", "greater than 0"),
    ({"ratios": {"train": 8, "val": -1, "test": 1}}, "split.ratios.val", "greater than or equal to 0"),
    ({"ratios": {"train": "8", "val": 1, "test": 1}}, "split.ratios.train", "valid number"),
    ({"ratios": {"train": True, "val": 1, "test": 1}}, "split.ratios.train", "valid number"),
    ({"ratios": {"train": 8, "val": 1}}, "split.ratios.test", "required"),
    ({"ratios": {"train": 8, "val": 1, "test": 1, "holdout": 1}}, "split.ratios.holdout", "not permitted"),
    ({"ratios": {"train": 2_000_000, "val": 1, "test": 1}}, "split.ratios.train", "less than or equal to 1000000"),
    ({"by": "random"}, "split.by", "'hash' or 'time'"),
    ({"seed": 1}, "split.seed", "not permitted"),
]


@pytest.mark.parametrize(("split", "field", "message"), BAD_SPLITS)
async def test_bad_split_specs_are_422_naming_the_field(
    database: Database, tmp_path: Path, split: dict[str, Any], field: str, message: str
) -> None:
    await database.create_all(metadata)
    app = create_app("preprocess")
    app.include_router(api.router)
    app.state.datasets = _store(database, tmp_path)
    await _insert(database, range(10))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://preprocess") as client:
        r = await client.post("/datasets/tickets/versions", json={"split": split})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["message"].startswith(f"{field}: "), error
        assert message in error["message"], error
        ok = await client.post(
            "/datasets/tickets/versions", json={"split": {"ratios": {"train": 3, "val": 0, "test": 1}}}
        )
        assert ok.status_code == 201, ok.text
        assert sum(ok.json()["split_counts"].values()) == 10 and ok.json()["split_counts"]["val"] == 0
        manifest = (await client.get("/datasets/tickets/versions/1")).json()
        assert manifest["split"] == {"ratios": {"train": 3, "val": 0, "test": 1}, "by": "hash"}

    with pytest.raises(ValidationError) as refused:  # the gateway refuses it before preprocess is called
        DatasetVersionRequest.model_validate({"split": split})
    first = refused.value.errors()[0]
    assert ".".join(str(p) for p in first["loc"]).startswith(field.rsplit(".", 1)[0]), first
    assert message in first["msg"], first


def test_the_gateway_forwards_a_split_preprocess_reads_the_same() -> None:
    assert CreateVersion.model_validate(DatasetVersionRequest().model_dump()) == CreateVersion()
    body = {"sources": ["crm"], "split": {"ratios": {"train": 0.7, "val": 0.2, "test": 0.1}, "by": "time"}}
    forwarded = DatasetVersionRequest.model_validate(body).model_dump()
    assert forwarded == body
    assert CreateVersion.model_validate(forwarded).split.ratios.weights() == (7, 2, 1)


async def test_a_large_cut_is_written_in_row_groups_and_the_trainer_reads_it(
    database: Database, tmp_path: Path
) -> None:
    from lmforge.trainer.train import _splits as trainer_splits

    await database.create_all(metadata)
    store = _store(database, tmp_path)
    store.row_group_size, store.read_chunk = 100, 64
    await _insert(database, range(1500))
    cut = await store.create_version("tickets")
    manifest = store.manifest(cut["manifest_uri"])

    for split, uri in manifest["shards"].items():
        with store.artifacts.open(store.artifacts.key_of(uri)) as f:
            meta = pq.ParquetFile(f).metadata
            assert meta.num_rows == manifest["split_counts"][split]
            assert all(meta.row_group(i).num_rows <= 100 for i in range(meta.num_row_groups))
            if split == "train":
                assert meta.num_row_groups > 1, "written in row groups, not as one table"
                assert meta.num_row_groups == -(-meta.num_rows // 100), "full row groups, not one per chunk"
    records = trainer_splits(store.artifacts, manifest)
    assert {s: len(rs) for s, rs in records.items()} == manifest["split_counts"]
    texts = {r.record_id: (r.text, r.label, r.content_hash) for rs in records.values() for r in rs}
    assert texts["crm:R-7"] == ("record 7: the invoice", "billing", content_hash("record 7: the invoice"))
    assert texts["crm:R-8"][1] is None
    assert [r.record_id for r in records["train"]] == [
        r["record_id"] for r in manifest["records"] if r["split"] == "train"
    ], "each shard keeps the records in the order they were cleaned"


def test_extreme_ratios_keep_weights_small_enough_for_every_bucket() -> None:
    """Shares are taken to a millionth: a ratio of 1e-80 must not make ``sha256 % total`` blind to
    the later buckets (whole-number weights of 10^80 would put every record in train)."""
    assert SplitRatios(train=1, val=1e-80, test=1).weights() == (1, 0, 1)
    assert SplitRatios(train=1e-80, val=1, test=1).weights() == (1, 10**6, 10**6)
    assert SplitRatios(train=7, val=2, test=1).weights() == (7, 2, 1)
    weights = SplitRatios(train=1, val=1e-80, test=1).weights()
    assigned = Counter(split_by_hash(f"crm:{i}", weights) for i in range(2000))
    assert 800 < assigned[Split.TEST] < 1200 and assigned[Split.VAL] == 0


async def test_a_cancelled_cut_waits_for_its_writer_before_its_folder_goes(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while a row group is being written: the close runs after that write, in the same
    thread, and both are over before the cut's folder is removed; no version is claimed."""
    import asyncio
    import threading
    import time

    from lmforge.preprocess import store as store_module

    await database.create_all(metadata)
    store = _store(database, tmp_path)
    store.read_chunk = 10
    await _insert(database, range(50))
    events: list[str] = []
    folders: list[Path] = []
    writing = threading.Event()
    real_init = store_module._ShardWriter.__init__
    real_write, real_close = store_module._ShardWriter.write, store_module._ShardWriter.close

    def init(self: Any, folder: Path, row_group_size: int) -> None:
        folders.append(folder)
        real_init(self, folder, row_group_size)

    def slow_write(self: Any, batch: Any) -> None:
        events.append("write")
        writing.set()
        time.sleep(0.5)
        real_write(self, batch)
        events.append("written")

    def close(self: Any) -> None:
        events.append(f"close, folder there: {folders[0].exists()}")
        real_close(self)

    monkeypatch.setattr(store_module._ShardWriter, "__init__", init)
    monkeypatch.setattr(store_module._ShardWriter, "write", slow_write)
    monkeypatch.setattr(store_module._ShardWriter, "close", close)
    cut = asyncio.create_task(store.create_version("tickets"))
    await asyncio.to_thread(writing.wait, 10)
    cut.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cut
    assert events == ["write", "written", "close, folder there: True"], events
    assert not folders[0].exists(), "the cut's folder is removed once its writer is done"
    assert await store.list_versions("tickets") == []
