"""What ``lmforge.common.http.create_app`` gives every service: errors in OpenAI's shape (``type``
from the status, ``param`` naming the field), and per-route HTTP metrics labelled with the route
template, never the raw path."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse
from prometheus_client import REGISTRY
from pydantic import BaseModel, Field

from lmforge.common.http import create_app, error_type

from ..helpers import INTERNAL_AUTH, INTERNAL_HEADERS


class Thing(BaseModel):
    name: str = Field(max_length=5)
    count: int


def metrics_app(service: str) -> object:
    app = create_app(service, internal=INTERNAL_AUTH)
    router = APIRouter(prefix="/v1")

    @router.get("/things/{thing_id}")
    async def get_thing(thing_id: int) -> dict[str, int]:
        if thing_id == 404:
            raise HTTPException(404, {"code": "thing_not_found", "message": "no such thing", "param": "thing_id"})
        return {"id": thing_id}

    @router.post("/things")
    async def make(body: Thing) -> dict[str, str]:
        return {"name": body.name}

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @router.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"one\n"
            raise RuntimeError("cut")

        return StreamingResponse(chunks(), media_type="text/plain")

    app.include_router(router, prefix="/api")
    return app


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def client_for(app: object, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "invalid_request_error"),
        (409, "invalid_request_error"),
        (413, "invalid_request_error"),
        (415, "invalid_request_error"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (502, "api_error"),
        (503, "api_error"),
        (504, "api_error"),
    ],
)
def test_error_type_follows_the_status(status: int, kind: str) -> None:
    assert error_type(status) == kind


async def test_errors_carry_type_and_param() -> None:
    app = metrics_app("errors-example")
    async with client_for(app, **INTERNAL_HEADERS) as client:
        r = await client.post("/api/v1/things", json={"name": "toolong", "count": 1})
        assert r.status_code == 422
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "name"
        assert error["code"] == "invalid_request" and error["message"].startswith("name:")

        r = await client.get("/api/v1/things/404")
        assert r.status_code == 404
        assert {k: r.json()["error"][k] for k in ("type", "param", "code")} == {
            "type": "invalid_request_error",
            "param": "thing_id",
            "code": "thing_not_found",
        }

        r = await client.get("/api/v1/nothing-here")
        assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
        assert r.json()["error"]["param"] is None

    async with client_for(app) as client:  # no internal credential
        r = await client.get("/api/v1/things/1")
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error" and r.json()["error"]["code"] == "unauthorized"


async def test_every_answer_is_counted_by_route_template_and_status() -> None:
    service = "metrics-example"
    app = metrics_app(service)
    template = "/api/v1/things/{thing_id}"
    get = {"service": service, "method": "GET", "route": template}
    before = {
        "ok": sample("lmforge_http_requests_total", **get, status="200"),
        "missing": sample("lmforge_http_requests_total", **get, status="404"),
        "timed": sample("lmforge_http_request_seconds_count", **get),
    }
    async with client_for(app, **INTERNAL_HEADERS) as client:
        for thing_id in (1, 2, 3):
            assert (await client.get(f"/api/v1/things/{thing_id}")).status_code == 200
        assert (await client.get("/api/v1/things/404")).status_code == 404
        assert (await client.get("/api/v1/things/not-a-number")).status_code == 422
        assert (await client.post("/api/v1/things", json={"name": "a", "count": 1})).status_code == 200
        assert (await client.get("/api/v1/boom")).status_code == 500
        # The answer began (200) and was cut: the ASGI transport hands back what was sent.
        with contextlib.suppress(httpx.HTTPError):
            await client.get("/api/v1/stream")
        assert (await client.get("/no/such/path/42")).status_code == 404
        text = (await client.get("/metrics")).text
    async with client_for(app) as client:
        assert (await client.get("/api/v1/things/7")).status_code == 401  # refused before routing

    assert sample("lmforge_http_requests_total", **get, status="200") - before["ok"] == 3
    assert sample("lmforge_http_requests_total", **get, status="404") - before["missing"] == 1
    assert sample("lmforge_http_requests_total", **get, status="422") >= 1
    assert sample("lmforge_http_request_seconds_count", **get) - before["timed"] == 5
    assert sample("lmforge_http_requests_total", service=service, method="POST", route="/api/v1/things", status="200")
    boom = {"service": service, "method": "GET", "route": "/api/v1/boom", "status": "500"}
    assert sample("lmforge_http_requests_total", **boom) == 1
    assert sample("lmforge_http_request_errors_total", **boom) == 1
    cut = {"service": service, "method": "GET", "route": "/api/v1/stream", "status": "200"}
    assert sample("lmforge_http_request_errors_total", **cut) == 1
    # 4xx are the client's: counted by status, not as server errors.
    assert not sample("lmforge_http_request_errors_total", **get, status="404")
    unmatched = {"service": service, "method": "GET", "route": "<unmatched>"}
    assert sample("lmforge_http_requests_total", **unmatched, status="404") == 1
    assert sample("lmforge_http_requests_total", **unmatched, status="401") == 1
    # Raw paths never become labels: the series stay as few as the routes.
    assert "/api/v1/things/1" not in text and "not-a-number" not in text and "/no/such/path" not in text
    assert f'route="{template}"' in text
