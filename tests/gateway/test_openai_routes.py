"""The OpenAI-compatible routes over a stand-in for inference (``fake_inference``): the gateway
in process on the real broker and a database, inference's internal API on a real port.

What is checked: ``/v1/models`` lists what inference serves in OpenAI's shape, and an id that is
not served is OpenAI's 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from lmforge.common.settings import KafkaSettings

from .apps import bearer, gateway_settings, new_key, running
from .fake_inference import CREATED, FakeInference, serving


@pytest.fixture
def fake() -> FakeInference:
    return FakeInference()


@pytest.fixture
async def started(
    fake: FakeInference, kafka_settings: KafkaSettings, tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, dict[str, Any]]]:
    async with serving(fake) as url:
        settings = gateway_settings(kafka_settings, f"sqlite+aiosqlite:///{tmp_path}/gateway.db", inference_url=url)
        async with running(settings) as (app, client):
            key = await new_key(client, ["completions"], completion_tokens_per_day=1000)
            client.headers.update(bearer(key["key"]))
            yield app, client, key


@pytest.fixture
async def gateway(started: tuple[FastAPI, httpx.AsyncClient, dict[str, Any]]) -> httpx.AsyncClient:
    return started[1]


# --- /v1/models ----------------------------------------------------------------------------


async def test_models_lists_every_served_id_in_openai_shape(gateway: httpx.AsyncClient) -> None:
    r = await gateway.get("/v1/models")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert sorted(ids) == sorted(["support", "support@production", "support@canary", "support@v3", "support@v4"])
    for m in body["data"]:
        assert set(m) == {"id", "object", "created", "owned_by"}
        assert m["object"] == "model" and m["owned_by"] == "lmforge" and m["created"] > CREATED
    assert "triton" not in r.text and "context_length" not in r.text

    for model_id in ("support@v3", "support%40v3", "support", "support@canary"):
        r = await gateway.get(f"/v1/models/{model_id}")
        assert r.status_code == 200, (model_id, r.text)
        assert r.json()["id"] == model_id.replace("%40", "@") and r.json()["object"] == "model"


async def test_an_unknown_model_is_404_in_openai_shape(gateway: httpx.AsyncClient) -> None:
    r = await gateway.get("/v1/models/support@v9")
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "model_not_found"
    assert error["param"] == "model" and "support@v9" in error["message"]
    r = await gateway.get("/v1/models/Not A Model")
    assert r.status_code == 400 and r.json()["error"]["param"] == "path.model"
