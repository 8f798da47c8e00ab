"""``GET /v1/pipeline/dropped``: the records the curation pipeline dropped, and why, through the
public API. The gateway app in process, on the real broker, in front of preprocess's own API app
(behind its internal credential) on a real database, SQLite and PostgreSQL, into which preprocess's
record handler dropped an exact duplicate, a filtered record and an empty one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import Event
from lmforge.common.http import create_app
from lmforge.common.kafka import EventProducer, InboundMessage
from lmforge.common.settings import KafkaSettings
from lmforge.preprocess import api as preprocess_api
from lmforge.preprocess.handlers import RawRecordHandler
from lmforge.preprocess.models import metadata, outbox
from lmforge.preprocess.near_dup import NearDuplicateIndex
from lmforge.preprocess.store import DatasetStore

from ..common.factories import raw_record
from ..helpers import INTERNAL_AUTH
from .apps import ADMIN, bearer, gateway_settings, new_key, running

EN = (
    "Hello, my order 58213 has not arrived and the tracking page has not changed for nine days. "
    "I was also charged twice for the invoice, once on the 3rd and again today. Please help."
)
DIGITS = "3528 4723 6786 0201 3301"  # a card number and nothing else: the digit_ratio filter
STREAM = [("E-1", EN), ("E-2", EN), ("D-1", DIGITS), ("X-1", "<p> </p>")]


@dataclass
class Setup:
    gateway: httpx.AsyncClient
    preprocess_calls: list[httpx.Request]


def _message(offset: int, source_id: str, text: str) -> InboundMessage:
    value, headers = Event(data=raw_record(source_id, text), source="tests").to_kafka()
    return InboundMessage("raw-data", 0, offset, source_id.encode(), value, tuple(headers), 0)


async def _preprocess_app(database: Database, tmp_path: Path) -> FastAPI:
    """Preprocess's API on ``database``, after its handler took ``STREAM``."""
    await database.create_all(metadata)
    relay = OutboxRelay(outbox, database.sessions, EventProducer(KafkaSettings(), source="tests"))  # only woken
    handle = RawRecordHandler(database, "lmforge-preprocess", relay, near_dups=NearDuplicateIndex())
    for offset, (source_id, text) in enumerate(STREAM):
        await handle(_message(offset, source_id, text))
    app = create_app("preprocess", internal=INTERNAL_AUTH)
    app.state.datasets = DatasetStore(database, ArtifactStore(str(tmp_path / "artifacts")), relay, handle.near_dups)
    app.include_router(preprocess_api.router)
    return app


@pytest.fixture
async def setup(kafka_settings: KafkaSettings, database: Database, tmp_path: Path) -> AsyncIterator[Setup]:
    preprocess = await _preprocess_app(database, tmp_path)
    settings = gateway_settings(kafka_settings, f"sqlite+aiosqlite:///{tmp_path}/gateway.db")
    async with running(settings) as (app, client):
        calls: list[httpx.Request] = []
        asgi = httpx.ASGITransport(app=preprocess)

        async def recording(request: httpx.Request) -> httpx.Response:
            calls.append(request)
            return await asgi.handle_async_request(request)

        down = app.state.downstream
        old = down.clients["preprocess"]  # the same headers (the internal credential) and timeouts
        down.clients["preprocess"] = httpx.AsyncClient(
            base_url="http://preprocess",
            transport=httpx.MockTransport(recording),
            headers=old.headers,
            timeout=old.timeout,
        )
        try:
            yield Setup(client, calls)
        finally:
            await down.clients["preprocess"].aclose()
            await old.aclose()


async def _reader(client: httpx.AsyncClient) -> dict[str, str]:
    return bearer((await new_key(client, ["datasets:read"]))["key"])


async def test_dropped_records_with_their_reason_and_measures(setup: Setup) -> None:
    api = setup.gateway
    r = await api.get("/v1/pipeline/dropped", headers=await _reader(api))
    assert r.status_code == 200, r.text
    rows = {row["record_id"]: row for row in r.json()}
    assert set(rows) == {"crm:E-2", "crm:D-1", "crm:X-1"}, "crm:E-1 was kept"
    seen = {k: (v["reason"], v["operator"], v["measured"], v["threshold"], v["duplicate_of"]) for k, v in rows.items()}
    assert seen == {
        "crm:E-2": ("duplicate", "exact_dedup", 1.0, 1.0, "crm:E-1"),
        "crm:D-1": ("digit_ratio", "digit_ratio", 1.0, 0.9, None),
        "crm:X-1": ("empty", "clean_text", 0.0, 1.0, None),
    }
    row = rows["crm:E-2"]
    assert set(row) == {
        "raw_event_id",
        "record_id",
        "reason",
        "duplicate_of",
        "operator",
        "measured",
        "threshold",
        "recipe_hash",
        "created_at",
    }
    assert row["raw_event_id"] and row["recipe_hash"] and row["created_at"]
    # The internal credential and the caller went along; the defaults were passed on.
    call = setup.preprocess_calls[-1]
    assert call.url.path == "/dropped" and dict(call.url.params) == {"limit": "100", "offset": "0"}
    assert call.headers["X-Lmforge-Principal"]


async def test_filters_and_pages_are_passed_to_preprocess(setup: Setup) -> None:
    api, headers = setup.gateway, await _reader(setup.gateway)

    async def dropped(**params: Any) -> list[dict[str, Any]]:
        r = await api.get("/v1/pipeline/dropped", params=params, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    duplicates = await dropped(reason="duplicate")
    assert [(d["record_id"], d["duplicate_of"], d["measured"]) for d in duplicates] == [("crm:E-2", "crm:E-1", 1.0)]
    filtered = await dropped(reason="digit_ratio")
    assert [(d["record_id"], d["measured"], d["threshold"]) for d in filtered] == [("crm:D-1", 1.0, 0.9)]
    assert await dropped(reason="language") == []
    assert [d["reason"] for d in await dropped(record_id="crm:X-1")] == ["empty"]
    every = [d["record_id"] for d in await dropped()]
    assert every == ["crm:E-2", "crm:D-1", "crm:X-1"], "oldest first"
    assert [d["record_id"] for d in await dropped(limit=2)] == every[:2]
    assert [d["record_id"] for d in await dropped(limit=2, offset=2)] == every[2:]
    assert await dropped(offset=3) == []
    assert dict(setup.preprocess_calls[-1].url.params) == {"limit": "100", "offset": "3"}


async def test_scope_and_key_come_first(setup: Setup) -> None:
    api = setup.gateway
    r = await api.get("/v1/pipeline/dropped")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text
    assert r.headers["www-authenticate"] == "Bearer"
    others = bearer((await new_key(api, ["datasets:write", "records:write", "models:read"]))["key"])
    r = await api.get("/v1/pipeline/dropped", params={"limit": 0}, headers=others)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    assert (await api.get("/v1/pipeline/dropped", headers=bearer(ADMIN))).status_code == 200
    assert setup.preprocess_calls and all(c.url.path == "/dropped" for c in setup.preprocess_calls)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "query.limit"),
        ({"limit": 1001}, "query.limit"),
        ({"limit": "many"}, "query.limit"),
        ({"offset": -1}, "query.offset"),
        ({"offset": 1_000_001}, "query.offset"),
        ({"reason": "Duplicate"}, "query.reason"),
        ({"reason": "a" * 33}, "query.reason"),
        ({"reason": "../stats"}, "query.reason"),
        ({"record_id": ""}, "query.record_id"),
        ({"record_id": "x" * 402}, "query.record_id"),
        ({"record_id": "crm:\x00"}, "query.record_id"),
    ],
)
async def test_bad_query_parameters_are_422_at_the_edge(setup: Setup, params: dict[str, Any], param: str) -> None:
    r = await setup.gateway.get("/v1/pipeline/dropped", params=params, headers=await _reader(setup.gateway))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert error["message"].startswith(f"{param}:"), error
    assert setup.preprocess_calls == [], "refused before preprocess was called"


async def test_a_reason_nothing_was_dropped_for_lists_nothing(setup: Setup) -> None:
    """A well-formed name no record was dropped for (yet), such as a filter a later recipe adds:
    an empty list, as the OpenAPI document promises for any name of that form."""
    r = await setup.gateway.get("/v1/pipeline/dropped", params={"reason": "spam"}, headers=await _reader(setup.gateway))
    assert r.status_code == 200, r.text
    assert r.json() == []


async def test_preprocess_down_is_503_with_retry_after(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """As for ``/v1/pipeline/stats``: nothing listens at preprocess's address."""
    settings = gateway_settings(kafka_settings, f"sqlite+aiosqlite:///{tmp_path}/gateway.db")
    async with running(settings) as (_, client):
        r = await client.get("/v1/pipeline/dropped", headers=await _reader(client))
        stats = await client.get("/v1/pipeline/stats", headers=bearer(ADMIN))
    assert r.status_code == stats.status_code == 503, r.text
    assert r.json()["error"]["code"] == stats.json()["error"]["code"] == "upstream_unavailable"
    assert r.headers["Retry-After"] == "5"


async def test_an_unknown_query_parameter_is_refused_not_ignored(setup: Setup) -> None:
    for params in ({"": "false"}, {"reasons": "duplicate"}):
        r = await setup.gateway.get("/v1/pipeline/dropped", params=params, headers=await _reader(setup.gateway))
        assert r.status_code == 422, r.text
        assert "unknown query parameter" in r.json()["error"]["message"]
    for query in ("record_id=crm:T-1&record_id=crm:T-2", "limit=2&limit=3"):
        r = await setup.gateway.get(f"/v1/pipeline/dropped?{query}", headers=await _reader(setup.gateway))
        assert r.status_code == 422 and r.json()["error"]["message"].endswith(": given twice"), r.text
