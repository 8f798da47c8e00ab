"""A downstream failure is a clear 502/503/504 with a JSON body, never a stack trace."""

from __future__ import annotations

import httpx
import pytest
from fastapi import HTTPException

from lmforge.devstack.servers import free_port
from lmforge.gateway.downstream import Downstream, PassThrough
from lmforge.gateway.settings import GatewaySettings


def downstream_with(handler: httpx.MockTransport | None = None, **urls: str) -> Downstream:
    down = Downstream(GatewaySettings(connect_timeout_s=1, request_timeout_s=1, **urls))
    if handler is not None:
        down.clients["registry"] = httpx.AsyncClient(base_url="http://registry", transport=handler)
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
