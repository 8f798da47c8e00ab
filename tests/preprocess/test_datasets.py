"""Dataset versions on SQLite and the real PostgreSQL.

- Concurrent cuts of one dataset each claim their own version number before writing, so no cut
  overwrites another's "immutable" files and none fails.
- A record edited upstream (same source and source id, new text) is in later versions once, with
  its newest text; the older text stays in the versions cut before the edit and is named in the
  manifest's ``superseded`` list.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pyarrow.parquet as pq
from sqlalchemy import select

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import Event, content_hash
from lmforge.common.kafka import EventProducer, InboundMessage
from lmforge.common.settings import KafkaSettings
from lmforge.preprocess.handlers import RawRecordHandler
from lmforge.preprocess.models import dataset_versions, metadata, outbox
from lmforge.preprocess.store import DatasetStore

from ..common.factories import raw_record


async def _setup(database: Database, tmp_path: Path) -> tuple[DatasetStore, RawRecordHandler]:
    await database.create_all(metadata)
    relay = OutboxRelay(outbox, database.sessions, EventProducer(KafkaSettings(), source="tests"))  # only woken
    store = DatasetStore(database, ArtifactStore(str(tmp_path / "artifacts")), relay)
    return store, RawRecordHandler(database, "lmforge-preprocess", relay)


def _message(offset: int, source_id: str, text: str) -> InboundMessage:
    value, headers = Event(data=raw_record(source_id, text), source="tests").to_kafka()
    return InboundMessage("raw-data", 0, offset, source_id.encode(), value, tuple(headers), 0)


def _texts(store: DatasetStore, manifest: dict[str, object]) -> dict[str, str]:
    texts: dict[str, str] = {}
    for uri in manifest["shards"].values():  # type: ignore[attr-defined]
        table = pq.read_table(io.BytesIO(store.artifacts.read_bytes(store.artifacts.key_of(uri))))
        texts |= dict(zip(table["record_id"].to_pylist(), table["text"].to_pylist(), strict=True))
    return texts


async def test_concurrent_cuts_get_distinct_versions_and_files(database: Database, tmp_path: Path) -> None:
    store, handle = await _setup(database, tmp_path)
    for i in range(6):
        await handle(_message(i, f"T-{i}", f"ticket {i}: the invoice total is wrong"))
    cuts = await asyncio.gather(*(store.create_version("tickets") for _ in range(4)))
    assert sorted(c["version"] for c in cuts) == [1, 2, 3, 4]
    assert len({c["manifest_uri"] for c in cuts}) == 4
    for cut in cuts:
        manifest = store.manifest(cut["manifest_uri"])
        assert manifest["version"] == cut["version"], "each manifest is the one its version wrote"
        assert f"/v{cut['version']}/" in cut["manifest_uri"]
        assert all(f"/v{cut['version']}/" in uri for uri in manifest["shards"].values())
    listed = await store.list_versions("tickets")
    assert [v["version"] for v in listed] == [1, 2, 3, 4]
    async with database.sessions() as s:
        states = (await s.execute(select(dataset_versions.c.state))).scalars().all()
    assert set(states) == {"ready"}


async def test_an_edited_record_supersedes_its_older_text(database: Database, tmp_path: Path) -> None:
    store, handle = await _setup(database, tmp_path)
    old, new = "T-1: my invoice shows the wrong total", "T-1: my invoice shows the wrong total and currency"
    await handle(_message(0, "T-1", old))
    await handle(_message(1, "T-2", "T-2: the app crashes when I upload a photo"))
    before = store.manifest((await store.create_version("tickets"))["manifest_uri"])
    await handle(_message(2, "T-1", new))  # the same ticket, edited upstream
    after = store.manifest((await store.create_version("tickets"))["manifest_uri"])

    assert _texts(store, before)["crm:T-1"] == old, "the version cut before the edit keeps the old text"
    texts = _texts(store, after)
    assert texts == {"crm:T-1": new, "crm:T-2": "T-2: the app crashes when I upload a photo"}
    assert [r["record_id"] for r in after["records"]].count("crm:T-1") == 1
    assert after["record_count"] == 2
    assert after["superseded"] == [{"record_id": "crm:T-1", "content_hash": content_hash(old)}]


async def test_a_version_reports_what_was_masked_and_each_records_sensitivity(
    database: Database, tmp_path: Path
) -> None:
    store, handle = await _setup(database, tmp_path)
    await handle(_message(0, "T-1", "T-1: my card 6222 0212 3456 7890 128 was charged twice, call 13812345678"))
    await handle(_message(1, "T-2", "T-2: please write to zhang.wei@example.com about the delivery"))
    await handle(_message(2, "T-3", "T-3: the app crashes when I upload a photo"))
    manifest = store.manifest((await store.create_version("tickets"))["manifest_uri"])
    texts = _texts(store, manifest)
    assert "6222" not in texts["crm:T-1"] and "13812345678" not in texts["crm:T-1"]
    assert manifest["masked"] == {"bank_card": 1, "phone": 1, "email": 1}
    assert manifest["sensitivity"] == {"none": 1, "low": 1, "high": 1}
    levels = {r["record_id"]: r["sensitivity"] for r in manifest["records"]}
    assert levels == {"crm:T-1": "high", "crm:T-2": "low", "crm:T-3": "none"}
