# ruff: noqa: RUF001
"""Erasure through the public API: ingest, preprocess and the gateway as processes on real Tansu
and SQLite, with the local artifact store.

A data-protection officer's key (scope ``records:erase`` only) erases a ticket that was edited
once and is in a dataset version already. Afterwards no store holds any of its text, its content
hashes or its record id: not ingest's or preprocess's database (every text and binary column of
every table is searched), not the artifact store (every file, the version's shards and manifest
included). The version cut before lists the erasure; the next version does not hold the record;
the erasure's audit trail names the key that asked and the version changed; ``cleaned-data``
carries the erasure after the record's own events. Other records are untouched.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lmforge.common.events import CleanedRecordV2, RecordErasedV1, Topic, content_hash, decode_event
from lmforge.devstack.stack import Stack

from ..helpers import read_topic, wait_until

pytestmark = pytest.mark.slow

ID_CARD = "11010519491231002X"  # a resident ID with a valid check digit: masked when cleaned
T1 = f"您好，我的快递外箱破损，身份证{ID_CARD}，请联系 zhao.lei.secret@example.com 处理退款，订单号 20261124001"
T1_EDITED = T1 + "，已经等了两周了"
OTHERS = [
    {"source": "crm", "source_id": "T-2", "text": "The invoice total does not match the order I placed on Monday."},
    {"source": "crm", "source_id": "T-3", "text": "I cannot log in after resetting my password on the mobile app."},
]
# What must be nowhere after the erasure: pieces of both texts (raw and as cleaned) and the content
# hashes that the stores and manifests keep. The record id also leaves the artifact store; the
# databases keep it in the erasure's audit entries (and preprocess in the event that passes it on).
GONE = ["快递外箱破损", "已经等了两周了", "zhao.lei.secret", ID_CARD, content_hash(T1), content_hash(T1_EDITED)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("erasure"), only=("ingest", "preprocess", "gateway")) as running:
        yield running


def _db_values(path: Path) -> list[bytes]:
    """Every text and binary value of every table of a SQLite database."""
    values: list[bytes] = []
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                values += [v.encode() if isinstance(v, str) else v for v in row if isinstance(v, str | bytes)]
    return values


def _artifact_bytes(stack: Stack) -> bytes:
    files = [p for p in sorted((stack.workdir / "artifacts").rglob("*")) if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files), "the version's shards are there"
    return b"\n".join(p.read_bytes() for p in files)


async def test_an_erased_ticket_leaves_no_trace_in_any_store(stack: Stack) -> None:
    admin = {"Authorization": f"Bearer {stack.admin_key}"}
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:

        async def key(*scopes: str) -> dict[str, str]:
            r = await client.post("/v1/api-keys", json={"name": "dpo", "scopes": list(scopes)}, headers=admin)
            assert r.status_code == 201, r.text
            return {"Authorization": f"Bearer {r.json()['key']}"}

        writer, dpo = await key("records:write", "datasets:write", "datasets:read"), await key("records:erase")
        for body in ({"source": "crm", "source_id": "T-1", "text": T1}, *OTHERS):
            assert (await client.post("/v1/records", json=body, headers=writer)).status_code == 202
        assert (
            await client.post(
                "/v1/records", json={"source": "crm", "source_id": "T-1", "text": T1_EDITED}, headers=writer
            )
        ).status_code == 202

        async def cleaned() -> bool:
            stats = (await client.get("/v1/pipeline/stats", headers=writer)).json()
            return bool(stats["cleaned"] == 4)

        await wait_until(cleaned, timeout=60, interval=0.3)
        v1 = (await client.post("/v1/datasets/tickets/versions", json={}, headers=writer)).json()
        assert v1["record_count"] == 3
        before = b"".join(_db_values(stack.workdir / "db" / "preprocess.db"))
        assert b"crm:T-1" in before and content_hash(T1).encode() in before, "the search below can find them"

        refused = await client.post("/v1/erasures", json={"source": "crm", "source_id": "T-1"}, headers=writer)
        assert refused.status_code == 403, "erasing needs records:erase"
        r = await client.post("/v1/erasures", json={"source": "crm", "source_id": "T-1"}, headers=dpo)
        assert r.status_code == 202, r.text
        requested = r.json()
        assert requested["status"] == "requested" and requested["raw_records_erased"] == 2
        assert requested["requested_by"].startswith("dpo (")

        async def applied() -> bool:
            got = await client.get(f"/v1/erasures/{requested['erasure_id']}", headers=dpo)
            return bool(got.json()["status"] == "applied")

        await wait_until(applied, timeout=60, interval=0.3)
        trail = (await client.get(f"/v1/erasures/{requested['erasure_id']}", headers=dpo)).json()
        assert trail["cleaned_records_erased"] == 2
        assert trail["dataset_versions"] == [{"dataset": "tickets", "version": v1["version"]}]

        manifest = (await client.get(f"/v1/datasets/tickets/versions/{v1['version']}", headers=writer)).json()
        assert manifest["record_count"] == 2 == sum(manifest["split_counts"].values())
        assert manifest["erased"] == [{"erasure_id": requested["erasure_id"], "records": 1, "superseded": 1}]
        v2 = (await client.post("/v1/datasets/tickets/versions", json={}, headers=writer)).json()
        assert v2["record_count"] == 2

    for service in ("ingest", "preprocess"):
        values = _db_values(stack.workdir / "db" / f"{service}.db")
        for fragment in GONE:
            assert not any(fragment.encode() in v for v in values), f"{fragment!r} is still in {service}'s database"
    stored = _artifact_bytes(stack)
    for fragment in [*GONE, "crm:T-1"]:
        assert fragment.encode() not in stored, f"{fragment!r} is still in the artifact store"
    assert b"The invoice total does not match" in stored, "the other records are untouched"

    assert stack.broker is not None
    events = await read_topic(stack.broker.bootstrap_servers, Topic.CLEANED_DATA, expected=5)
    t1 = [decode_event(e.headers, e.value, (CleanedRecordV2, RecordErasedV1)) for e in events if e.key == b"crm:T-1"]
    assert [type(e.data) for e in t1] == [CleanedRecordV2, CleanedRecordV2, RecordErasedV1]
    assert [e.data.sensitivity for e in t1[:2]] == ["high", "high"], "an ID card was masked in both texts"
