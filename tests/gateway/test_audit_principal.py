"""The registry's audit log names the API key the gateway authenticated, never a name a caller
claims: the real registry app (served over HTTP, on SQLite and PostgreSQL) behind a gateway app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from lmforge.common.events import Hyperparameters, ModelReadyV1
from lmforge.common.http import PRINCIPAL_HEADER, CallerPrincipal
from lmforge.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings
from lmforge.devstack.servers import free_port
from lmforge.registry.app import build_app as build_registry
from lmforge.registry.settings import RegistrySettings
from lmforge.registry.store import register

from ..helpers import INTERNAL_AUTH, INTERNAL_HEADERS, wait_until
from .apps import bearer, gateway_settings, new_key, running


def ready(run: str, ppl: float) -> ModelReadyV1:
    return ModelReadyV1(
        model_name="support",
        run_id=run,
        job_id=f"job-{run}",
        artifact_uri=f"file:///a/{run}",
        base_model="builtin:tiny-gpt2",
        dataset="tickets",
        dataset_version=1,
        dataset_manifest_uri="file:///m.json",
        hyperparameters=Hyperparameters(),
        metrics={"val_perplexity": ppl},
    )


@pytest.fixture
async def registry(kafka_settings: KafkaSettings, database_url: str, tmp_path: Path, unique: str) -> AsyncIterator[str]:
    """The registry on a free port, with versions 1 (production, by the gate) and 2 of ``support``."""
    settings = RegistrySettings(
        kafka=kafka_settings,
        database=DatabaseSettings(url=database_url),
        artifacts=ArtifactSettings(url=str(tmp_path / "artifacts")),
        consumer_group=f"registry-{unique}",
        internal=INTERNAL_AUTH,
    )
    app = build_registry(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    serving = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    try:
        await wait_until(started, timeout=60)
        async with app.state.runtime.db.sessions.begin() as session:
            await register(session, ready(f"r1-{unique}", 10.0), settings)
            await register(session, ready(f"r2-{unique}", 12.0), settings)  # worse: not promoted
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


async def audit(registry: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=registry, headers=INTERNAL_HEADERS) as client:
        r = await client.get("/models/support/audit")
    assert r.status_code == 200, r.text
    return [e for e in r.json() if e["action"] == "alias_moved"]


async def test_the_audit_log_names_the_authenticated_key(
    registry: str, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    settings = gateway_settings(kafka_settings, f"sqlite+aiosqlite:///{tmp_path}/g.db", registry_url=registry)
    async with running(settings) as (_, gateway):
        key = await new_key(gateway, ["models:write"])
        forged = CallerPrincipal(key_id="admin", name="mallory").header()
        r = await gateway.put(
            "/v1/models/support/aliases/production",
            json={"version": 2, "reason": "promote v2"},
            headers=bearer(key["key"]) | forged,  # a client's own principal header is never passed on
        )
        assert r.status_code == 200, r.text
        r = await gateway.put(
            "/v1/models/support/aliases/production",
            json={"version": 1, "reason": "roll back", "actor": "mallory"},
            headers=bearer(key["key"]),
        )
        assert r.status_code == 422 and r.json()["error"]["message"].startswith("actor:"), r.text
    moves = await audit(registry)
    assert [(m["actor"], m["actor_key_id"], m["details"]["version"]) for m in moves] == [
        ("registry-gate", None, 1),
        ("test", key["key_id"], 2),
    ]
    assert moves[1]["details"]["reason"] == "promote v2"


async def test_the_registry_takes_no_actor_from_a_body_and_no_call_without_the_credential(registry: str) -> None:
    async with httpx.AsyncClient(base_url=registry) as client:
        body = {"version": 2, "reason": "direct"}
        r = await client.put("/models/support/aliases/canary", json=body)
        assert r.status_code == 401
        r = await client.put(
            "/models/support/aliases/canary",
            json=body,
            headers={PRINCIPAL_HEADER: '{"key_id":"admin","name":"mallory"}'},  # a principal, but no credential
        )
        assert r.status_code == 401
        r = await client.put(
            "/models/support/aliases/canary", json=body | {"actor": "mallory"}, headers=INTERNAL_HEADERS
        )
        assert r.status_code == 422 and r.json()["error"]["message"].startswith("actor:")
        # The credential without a principal: an internal caller acting for itself.
        r = await client.put("/models/support/aliases/canary", json=body, headers=INTERNAL_HEADERS)
        assert r.status_code == 200, r.text
        r = await client.put(
            "/models/support/aliases/canary", json=body, headers=INTERNAL_HEADERS | {PRINCIPAL_HEADER: "mallory"}
        )
        assert r.status_code == 400
    moves = await audit(registry)
    assert [(m["actor"], m["actor_key_id"]) for m in moves if m["details"]["alias"] == "canary"] == [("internal", None)]
    assert not [m for m in moves if m["actor"] == "mallory"]
