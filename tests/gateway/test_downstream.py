"""A downstream failure is a clear 502/503/504 with a JSON body, never a stack trace."""

from __future__ import annotations

import httpx
import pytest
from fastapi import HTTPException

from lmforge.common.http import PRINCIPAL_HEADER, CallerPrincipal, InternalAuthNotConfigured
from lmforge.common.settings import InternalAuthSettings
from lmforge.devstack.servers import free_port
from lmforge.gateway.downstream import Downstream, PassThrough
from lmforge.gateway.settings import GatewaySettings

from ..helpers import INTERNAL_AUTH, INTERNAL_TOKEN


def downstream_with(handler: httpx.MockTransport | None = None, **urls: str) -> Downstream:
    settings = GatewaySettings(connect_timeout_s=1, request_timeout_s=1, internal=INTERNAL_AUTH, **urls)
    down = Downstream(settings)
    if handler is not None:  # the same client settings (headers, timeouts), another transport
        client = down.clients["registry"]
        down.clients["registry"] = httpx.AsyncClient(
            base_url="http://registry", transport=handler, headers=client.headers, timeout=client.timeout
        )
    return down


async def test_unreachable_service_is_503_with_retry_after() -> None:
    down = downstream_with(registry_url=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(HTTPException) as err:
        await down.call("registry", "GET", "/models")
    assert err.value.status_code == 503 and err.value.headers == {"Retry-After": "5"}
    assert err.value.detail["code"] == "upstream_unavailable"


@pytest.mark.parametrize(
    ("respond", "status", "code"),
    [
        (lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow", request=r)), 504, "upstream_timeout"),
        (lambda r: httpx.Response(500, text="Traceback (most recent call last): ..."), 502, "upstream_error"),
        (
            lambda r: httpx.Response(503, json={"error": {"message": "warming up"}}, headers={"Retry-After": "9"}),
            503,
            "upstream_unavailable",
        ),
    ],
)
async def test_downstream_failures_map_to_gateway_errors(respond, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    down = downstream_with(httpx.MockTransport(respond))
    with pytest.raises(HTTPException) as err:
        await down.call("registry", "GET", "/models")
    assert err.value.status_code == status and err.value.detail["code"] == code
    assert "Traceback" not in str(err.value.detail)


async def test_downstream_4xx_passes_through() -> None:
    down = downstream_with(httpx.MockTransport(lambda r: httpx.Response(404, json={"error": {"code": "not_found"}})))
    with pytest.raises(PassThrough) as err:
        await down.json("registry", "GET", "/models/x/versions/9")
    assert err.value.response().status_code == 404


async def test_downstream_failures_tell_the_client_nothing_internal() -> None:
    """A service's own 5xx text (paths, hosts) stays in the log; the client gets its code only."""
    leak = {"error": {"code": "triton_error", "message": "load failed: /var/lib/triton/m-v1 at 10.0.0.7:8001"}}
    down = downstream_with(httpx.MockTransport(lambda r: httpx.Response(502, json=leak)))
    with pytest.raises(HTTPException) as err:
        await down.call("registry", "GET", "/models")
    assert err.value.status_code == 502
    assert err.value.detail == {
        "code": "upstream_error",
        "message": "a platform service failed",
        "reason": "triton_error",
    }


async def test_a_downstream_4xx_without_the_error_shape_gets_it() -> None:
    down = downstream_with(httpx.MockTransport(lambda r: httpx.Response(404, text="<html>nope</html>")))
    with pytest.raises(PassThrough) as err:
        await down.json("registry", "GET", "/models/x/versions/9")
    resp = err.value.response()
    assert resp.status_code == 404
    assert b'"code":"upstream_rejected"' in resp.body and b"html" not in resp.body


async def test_every_call_carries_the_internal_credential_and_the_principal() -> None:
    seen: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    down = downstream_with(httpx.MockTransport(respond))
    await down.json("registry", "GET", "/models")
    await down.json("registry", "GET", "/models", principal=CallerPrincipal(key_id="k1", name="Zoë's key"))
    assert [r.headers["authorization"] for r in seen] == [f"Bearer {INTERNAL_TOKEN}"] * 2
    assert PRINCIPAL_HEADER not in seen[0].headers
    sent = seen[1].headers[PRINCIPAL_HEADER]
    assert sent.isascii() and CallerPrincipal.model_validate_json(sent) == CallerPrincipal(
        key_id="k1", name="Zoë's key"
    )


async def test_a_refused_internal_credential_is_a_502_not_the_clients_401() -> None:
    refused = {"error": {"code": "unauthorized", "message": "send the internal token"}}
    down = downstream_with(
        httpx.MockTransport(lambda r: httpx.Response(401, json=refused, headers={"WWW-Authenticate": "Bearer"}))
    )
    with pytest.raises(HTTPException) as err:
        await down.json("registry", "GET", "/models")
    assert err.value.status_code == 502 and err.value.detail["reason"] == "internal_unauthorized"


def test_the_gateway_refuses_to_start_without_an_internal_credential() -> None:
    with pytest.raises(InternalAuthNotConfigured, match="LMFORGE_GATEWAY_INTERNAL__TOKEN is not set"):
        Downstream(GatewaySettings())
    with pytest.raises(InternalAuthNotConfigured, match="too short") as err:
        Downstream(GatewaySettings(internal=InternalAuthSettings(token="short-secret")))
    assert "short-secret" not in str(err.value)
    allowed = Downstream(GatewaySettings(internal=InternalAuthSettings(allow_unauthenticated=True)))
    assert "authorization" not in allowed.clients["registry"].headers
