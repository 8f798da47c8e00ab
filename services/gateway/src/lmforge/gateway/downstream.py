"""Calls to the internal services: timeouts, trace propagation, and errors a client can act on.

Connection refused -> 503 (with Retry-After), a timeout -> 504, a downstream 5xx -> 502, and a
downstream 4xx passes through with its body: the caller's request was wrong, not the platform.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import HTTPException
from fastapi.responses import JSONResponse, Response

from lmforge.common.telemetry import get_logger

from .settings import GatewaySettings

log = get_logger(__name__)


class Downstream:
    def __init__(self, settings: GatewaySettings) -> None:
        timeout = httpx.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s)
        self.settings = settings
        self.clients = {
            name: httpx.AsyncClient(base_url=url, timeout=timeout)
            for name, url in {
                "ingest": settings.ingest_url,
                "preprocess": settings.preprocess_url,
                "trainer": settings.trainer_url,
                "registry": settings.registry_url,
                "inference": settings.inference_url,
            }.items()
        }

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()

    async def call(self, service: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = await self.clients[service].request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise HTTPException(
                504, {"code": "upstream_timeout", "message": f"{service} did not answer in time"}
            ) from exc
        except httpx.TransportError as exc:
            raise HTTPException(
                503,
                {"code": "upstream_unavailable", "message": f"{service} is unavailable"},
                headers={"Retry-After": "5"},
            ) from exc
        if resp.status_code >= 500:
            log.warning("downstream error", service=service, path=path, status=resp.status_code, body=resp.text[:500])
            if resp.status_code == 503:
                raise HTTPException(
                    503,
                    {"code": "upstream_unavailable", "message": _message(resp, service)},
                    headers={"Retry-After": resp.headers.get("Retry-After", "5")},
                )
            raise HTTPException(
                502, {"code": "upstream_error", "message": f"{service} failed: {_message(resp, service)}"}
            )
        return resp

    async def json(self, service: str, method: str, path: str, **kwargs: Any) -> Any:
        resp = await self.call(service, method, path, **kwargs)
        if resp.status_code >= 400:
            raise PassThrough(resp)
        return resp.json()

    async def forward(self, service: str, method: str, path: str, **kwargs: Any) -> Response:
        resp = await self.call(service, method, path, **kwargs)
        return Response(resp.content, status_code=resp.status_code, media_type=resp.headers.get("content-type"))


class PassThrough(Exception):
    """A downstream 4xx: answered to the client as it is."""

    def __init__(self, resp: httpx.Response) -> None:
        self.resp = resp

    def response(self) -> Response:
        try:
            return JSONResponse(self.resp.json(), status_code=self.resp.status_code)
        except ValueError:
            return Response(self.resp.content, status_code=self.resp.status_code)


def _message(resp: httpx.Response, service: str) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"{service} answered {resp.status_code}"
