"""The internal credential, as ``lmforge.common.http`` applies it to every service behind the
gateway: no token, no call (health, readiness and metrics excepted), checked before a route reads
anything; a service without a token refuses to be built unless told otherwise; the caller's
principal travels in one header."""

from __future__ import annotations

import httpx
import pytest
from fastapi import Depends, Request
from pydantic import BaseModel

from lmforge.common.http import (
    PRINCIPAL_HEADER,
    CallerPrincipal,
    InternalAuthNotConfigured,
    caller_principal,
    create_app,
    internal_headers,
)
from lmforge.common.settings import InternalAuthSettings, ServiceSettings, service_config

from ..helpers import INTERNAL_AUTH, INTERNAL_HEADERS, INTERNAL_TOKEN


class Thing(BaseModel):
    name: str


def example_app(internal: InternalAuthSettings) -> object:
    app = create_app("example", internal=internal)
    reads: list[str] = []

    @app.post("/things")
    async def make(request: Request, body: Thing) -> dict[str, str]:
        reads.append(body.name)
        return {"name": body.name}

    @app.get("/who")
    async def who(principal: CallerPrincipal | None = Depends(caller_principal)) -> dict[str, str | None]:
        return {"key_id": principal.key_id if principal else None, "name": principal.name if principal else None}

    app.state.reads = reads
    return app


def client_for(app: object, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://example", headers=headers)


async def test_no_token_no_call_and_the_body_is_never_read(span_exporter: object) -> None:
    app = example_app(INTERNAL_AUTH)
    refused = [
        {},
        {"Authorization": "Bearer not-the-token"},
        {"Authorization": f"Basic {INTERNAL_TOKEN}"},
        {"Authorization": f"Bearer {INTERNAL_TOKEN}x"},
        {"Authorization": f"Bearer {INTERNAL_TOKEN[:-1]}"},
    ]
    for headers in refused:
        async with client_for(app, **headers) as client:
            # A malformed body: a 422 here would mean the route read it before the credential.
            r = await client.post("/things", content=b"{not json", headers={"content-type": "application/json"})
            assert r.status_code == 401, (headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer" and r.headers["connection"] == "close"
            assert r.json()["error"]["code"] == "unauthorized" and r.json()["error"]["trace_id"]
            assert r.headers["x-trace-id"] == r.json()["error"]["trace_id"]
            assert (await client.get("/openapi.json")).status_code == 401
            assert (await client.get("/no-such-route")).status_code == 401  # nor which routes exist
    assert app.state.reads == []  # type: ignore[attr-defined]
    async with client_for(app, **INTERNAL_HEADERS) as client:
        assert (await client.post("/things", json={"name": "a"})).json() == {"name": "a"}
        assert (
            await client.post("/things", content=b"{", headers={"content-type": "application/json"})
        ).status_code == 422
    assert app.state.reads == ["a"]  # type: ignore[attr-defined]


async def test_health_readiness_and_metrics_stay_open() -> None:
    async with client_for(example_app(INTERNAL_AUTH)) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/healthz/x")).status_code == 401  # open paths are exact


async def test_the_openapi_document_declares_the_credential_on_every_route() -> None:
    async with client_for(example_app(INTERNAL_AUTH), **INTERNAL_HEADERS) as client:
        spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["internal"]["scheme"] == "bearer"
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            assert op["security"] == [{"internal": []}], (method, path)
            assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorResponse"
            }
    assert "/healthz" not in spec["paths"]


def test_a_service_without_a_token_refuses_to_start() -> None:
    with pytest.raises(InternalAuthNotConfigured) as err:
        create_app("registry", internal=InternalAuthSettings())
    message = str(err.value)
    assert (
        "LMFORGE_REGISTRY_INTERNAL__TOKEN" in message and "LMFORGE_REGISTRY_INTERNAL__ALLOW_UNAUTHENTICATED" in message
    )
    with pytest.raises(InternalAuthNotConfigured, match="too short") as err:
        create_app("registry", internal=InternalAuthSettings(token="guessable-token"))
    assert "guessable-token" not in str(err.value)
    with pytest.raises(InternalAuthNotConfigured):
        internal_headers("inference", InternalAuthSettings())
    assert internal_headers("inference", INTERNAL_AUTH) == INTERNAL_HEADERS


async def test_running_without_a_token_is_an_explicit_choice(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    app = example_app(InternalAuthSettings(allow_unauthenticated=True))
    printed = capsys.readouterr()  # structlog prints, or hands to logging once set up by a service
    assert "calls to this service are not authenticated" in printed.out + printed.err + caplog.text
    async with client_for(app) as client:
        assert (await client.post("/things", json={"name": "a"})).status_code == 200
    assert internal_headers("inference", InternalAuthSettings(allow_unauthenticated=True)) == {}


def test_the_token_comes_from_each_services_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    class ExampleSettings(ServiceSettings):
        model_config = service_config("example")

    monkeypatch.setenv("LMFORGE_EXAMPLE_INTERNAL__TOKEN", INTERNAL_TOKEN)
    settings = ExampleSettings()
    assert settings.internal.token is not None and settings.internal.token.get_secret_value() == INTERNAL_TOKEN
    assert INTERNAL_TOKEN not in repr(settings)
    monkeypatch.delenv("LMFORGE_EXAMPLE_INTERNAL__TOKEN")
    monkeypatch.setenv("LMFORGE_EXAMPLE_INTERNAL__ALLOW_UNAUTHENTICATED", "true")
    assert ExampleSettings().internal == InternalAuthSettings(allow_unauthenticated=True)


async def test_the_principal_header_round_trips_any_name_in_ascii() -> None:
    principal = CallerPrincipal(key_id="0123456789ab", name='Zoë "ops" \\ team\n')
    header = principal.header()[PRINCIPAL_HEADER]
    assert header.isascii() and "\n" not in header
    async with client_for(example_app(INTERNAL_AUTH), **INTERNAL_HEADERS) as client:
        r = await client.get("/who", headers=principal.header())
        assert r.json() == {"key_id": "0123456789ab", "name": 'Zoë "ops" \\ team\n'}
        assert (await client.get("/who")).json() == {"key_id": None, "name": None}
        for bad in ("alice", '{"key_id": "a/b", "name": "x"}', '{"key_id": "a", "name": "x", "admin": true}'):
            r = await client.get("/who", headers={PRINCIPAL_HEADER: bad})
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", bad
