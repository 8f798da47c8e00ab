"""A gateway app in the test process, on the real broker and a real database, with an ASGI client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from lmforge.common.settings import DatabaseSettings, KafkaSettings
from lmforge.devstack.servers import free_port
from lmforge.gateway.app import build_app
from lmforge.gateway.settings import GatewaySettings

from ..helpers import INTERNAL_AUTH

ADMIN = "lmf_admin_0123456789abcdef0123456789abcdef"


def gateway_settings(kafka: KafkaSettings, database_url: str, **extra: Any) -> GatewaySettings:
    """Services behind it unreachable (their calls answer 503) unless their URLs are given."""
    closed = f"http://127.0.0.1:{free_port()}"
    values: dict[str, Any] = {
        "kafka": kafka,
        "database": DatabaseSettings(url=database_url),
        "bootstrap_admin_key": ADMIN,
        "internal": INTERNAL_AUTH,
        "connect_timeout_s": 0.5,
        **{f"{s}_url": closed for s in ("ingest", "preprocess", "trainer", "registry", "inference")},
    }
    return GatewaySettings(**values | extra)


@asynccontextmanager
async def running(settings: GatewaySettings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield app, client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def new_key(client: httpx.AsyncClient, scopes: list[str], **extra: Any) -> dict[str, Any]:
    r = await client.post("/v1/api-keys", json={"name": "test", "scopes": scopes} | extra, headers=bearer(ADMIN))
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]
