"""Every service behind the gateway, as built by its own ``build_app`` and running on a real broker
and database: each route answers 401 without the internal credential or with a wrong one, and
works with it; health, readiness and metrics stay open; without a token it refuses to be built."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from lmforge.common.http import OPEN_PATHS, InternalAuthNotConfigured
from lmforge.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings
from lmforge.devstack.servers import free_port

from .helpers import INTERNAL_AUTH, INTERNAL_HEADERS

INTERNAL_SERVICES = ["ingest", "preprocess", "trainer", "registry", "inference"]
PATH_VALUES = {
    "name": "m",
    "version": "1",
    "alias": "production",
    "job_id": "job-0123456789ab",
    "erasure_id": "0b9e6c1a-4f7d-4c3e-9a2b-5d8e7f6a1b2c",
}
# One call per service that must succeed with the credential.
WORKS = {
    "ingest": ("POST", "/records", {"json": {"source": "crm", "source_id": "1", "text": "hello"}}, 202),
    "preprocess": ("GET", "/stats", {}, 200),
    "trainer": ("GET", "/jobs", {}, 200),
    "registry": ("GET", "/models", {}, 200),
    "inference": ("GET", "/deployments", {}, 200),
}


def settings_for(service: str, kafka: KafkaSettings, tmp_path: Path, unique: str, **extra: Any) -> Any:
    module = importlib.import_module(f"lmforge.{service}.settings")
    cls = getattr(module, f"{service.capitalize()}Settings")
    own: dict[str, Any] = {"consumer_group": f"{service}-{unique}"}
    if service == "ingest":
        own["upstream_topics"] = [f"upstream-{unique}"]
    if service == "trainer":
        own["work_dir"] = str(tmp_path / "work")
    if service == "inference":  # no Triton and no registry here: deployments wait, as they would
        closed = free_port()
        own |= {
            "triton_grpc_url": f"127.0.0.1:{closed}",
            "registry_url": f"http://127.0.0.1:{closed}",
            "model_repository": str(tmp_path / "repo"),
        }
    return cls(
        kafka=kafka,
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/{service}.db"),
        artifacts=ArtifactSettings(url=str(tmp_path / "artifacts")),
        **own | extra,
    )


def build(service: str, settings: Any) -> Any:
    return importlib.import_module(f"lmforge.{service}.app").build_app(settings)


@pytest.mark.parametrize("service", INTERNAL_SERVICES)
async def test_every_route_needs_the_internal_credential(
    service: str, kafka_settings: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    app = build(service, settings_for(service, kafka_settings, tmp_path, unique, internal=INTERNAL_AUTH))
    routes = [
        (method, context.path)
        for context in iter_route_contexts(app.routes)  # routers included in the app too
        if isinstance(context.original_route, APIRoute) and context.path and context.path not in OPEN_PATHS
        for method in sorted(context.original_route.methods)
    ]
    assert (WORKS[service][0], WORKS[service][1]) in routes, routes
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{service}") as client:
            for path in sorted(OPEN_PATHS):
                assert (await client.get(path)).status_code in (200, 503), path  # open (503: not ready yet)
            for method, path in routes:
                url = path.format(**PATH_VALUES)
                for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789abcdef0123456789"}):
                    r = await client.request(method, url, headers=headers, json={})
                    assert r.status_code == 401, (service, method, path, r.text)
                    assert r.json()["error"]["code"] == "unauthorized"
                r = await client.request(method, url, headers=INTERNAL_HEADERS, json={})
                assert r.status_code not in (401, 500), (service, method, path, r.text)
            method, path, kwargs, status = WORKS[service]
            r = await client.request(method, path, headers=INTERNAL_HEADERS, **kwargs)
            assert r.status_code == status, (service, r.text)
            assert (await client.get("/openapi.json")).status_code == 401
            spec = (await client.get("/openapi.json", headers=INTERNAL_HEADERS)).json()
            assert spec["components"]["securitySchemes"]["internal"]["scheme"] == "bearer"


@pytest.mark.parametrize("service", INTERNAL_SERVICES)
def test_a_service_without_a_token_is_not_built(service: str, kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    with pytest.raises(InternalAuthNotConfigured, match=f"LMFORGE_{service.upper()}_INTERNAL__TOKEN is not set"):
        build(service, settings_for(service, kafka_settings, tmp_path, "x"))
