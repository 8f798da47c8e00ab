"""Calls to the internal services: timeouts, trace propagation, and errors a client can act on.

Connection refused -> 503 (with Retry-After), a timeout -> 504, a downstream 5xx -> 502, and a
downstream 4xx passes through with its body: the caller's request was wrong, not the platform.
What a client reads never names an internal host, path or service, and never carries a
downstream's 5xx text: that goes to the log, under the request's trace id.

Every call carries the internal credential (``LMFORGE_GATEWAY_INTERNAL__TOKEN``) and, when made
for a client, the client's API key as ``X-Lmforge-Principal``. No header a client sent is passed on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import HTTPException
from fastapi.responses import JSONResponse, Response

from lmforge.common.http import CallerPrincipal, error_body, error_type, internal_headers
from lmforge.common.redaction import describe_error
from lmforge.common.telemetry import get_logger

from .settings import GatewaySettings

log = get_logger(__name__)


class Downstream:
    def __init__(self, settings: GatewaySettings) -> None:
        timeout = httpx.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s)
        headers = internal_headers("gateway", settings.internal)  # refuses to start without a token
        if not headers:
            log.warning("calls to the services behind the gateway carry no internal credential")
        self.settings = settings
        self.clients = {
            name: httpx.AsyncClient(base_url=url, timeout=timeout, headers=headers)
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

    async def call(
        self, service: str, method: str, path: str, *, principal: CallerPrincipal | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One request to ``service``; ``path`` comes from ``lmforge.common.names.url_path``;
        ``principal``: the API key the call is made for."""
        return await self._send(service, method, path, principal=principal, stream=False, **kwargs)

    @asynccontextmanager
    async def stream(
        self, service: str, method: str, path: str, *, principal: CallerPrincipal | None = None, **kwargs: Any
    ) -> AsyncIterator[httpx.Response]:
        """``call``, with the answer's body still to be read (``aiter_lines``); closed on leaving.

        The status and headers are checked before it is handed over: a 4xx is raised as
        ``PassThrough``, a failure as ``call`` raises it."""
        resp = await self._send(service, method, path, principal=principal, stream=True, **kwargs)
        try:
            if resp.status_code >= 400:
                await resp.aread()
                raise PassThrough(resp)
            yield resp
        finally:
            await resp.aclose()

    async def _send(
        self, service: str, method: str, path: str, *, principal: CallerPrincipal | None, stream: bool, **kwargs: Any
    ) -> httpx.Response:
        if principal is not None:
            kwargs["headers"] = {**kwargs.get("headers", {}), **principal.header()}
        client = self.clients[service]
        try:
            resp = await client.send(client.build_request(method, path, **kwargs), stream=stream)
            if stream and (resp.status_code == 401 or resp.status_code >= 500):
                try:
                    await resp.aread()  # for the log below; the answer is a failure either way
                finally:
                    await resp.aclose()
        except httpx.TimeoutException as exc:
            log.warning("downstream timeout", service=service, path=path, error=describe_error(exc))
            raise HTTPException(
                504, {"code": "upstream_timeout", "message": "a platform service did not answer in time"}
            ) from exc
        except httpx.TransportError as exc:
            log.warning("downstream unreachable", service=service, path=path, error=describe_error(exc))
            raise HTTPException(
                503,
                {"code": "upstream_unavailable", "message": "a platform service is unavailable; retry"},
                headers={"Retry-After": "5"},
            ) from exc
        if resp.status_code == 401:
            # The service refused the gateway's internal credential: a deployment fault, not the
            # client's key. Passed through, it would read as "your API key is invalid".
            log.error("a service refused the internal credential", service=service, path=path)
            raise HTTPException(
                502,
                {"code": "upstream_error", "message": "a platform service failed", "reason": "internal_unauthorized"},
            )
        if resp.status_code >= 500:
            log.warning("downstream error", service=service, path=path, status=resp.status_code, body=resp.text[:500])
            if resp.status_code == 503:
                raise HTTPException(
                    503,
                    {
                        "code": "upstream_unavailable",
                        "message": "temporarily unavailable; retry",
                        "reason": _code(resp),
                    },
                    headers={"Retry-After": _retry_after(resp)},
                )
            raise HTTPException(
                502, {"code": "upstream_error", "message": "a platform service failed", "reason": _code(resp)}
            )
        return resp

    async def json(
        self, service: str, method: str, path: str, *, principal: CallerPrincipal | None = None, **kwargs: Any
    ) -> Any:
        """The JSON of a 2xx answer; a 4xx is raised as ``PassThrough``."""
        resp = await self.call(service, method, path, principal=principal, **kwargs)
        if resp.status_code >= 400:
            raise PassThrough(resp)
        try:
            return resp.json()
        except ValueError as exc:
            log.warning("downstream answered no JSON", service=service, path=path, status=resp.status_code)
            raise HTTPException(
                502, {"code": "upstream_error", "message": "a platform service gave an unreadable answer"}
            ) from exc


class PassThrough(Exception):
    """A downstream 4xx: answered to the client with its status and error body."""

    def __init__(self, resp: httpx.Response) -> None:
        self.resp = resp

    def response(self, status_code: int | None = None, params: dict[str, str] | None = None) -> Response:
        """The client's answer: the service's error, in the gateway's error shape (``type`` and
        ``param`` filled in where the service left them out); ``status_code`` replaces its status,
        ``params`` names the field an error code is about where the service named none."""
        status = status_code or self.resp.status_code
        try:
            body = self.resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error = dict(body["error"])
            error["type"] = error_type(status)
            error.setdefault("code", "upstream_rejected")
            if error.get("param") is None:
                error["param"] = (params or {}).get(str(error["code"]))
            error["message"] = str(error.get("message", ""))
            body = {"error": error}
        else:
            body = error_body("upstream_rejected", f"the request was refused ({self.resp.status_code})", status=status)
        headers = {k: v for k, v in self.resp.headers.items() if k.lower() in ("retry-after", "www-authenticate")}
        return JSONResponse(body, status_code=status, headers=headers)


def _code(resp: httpx.Response) -> str:
    """The downstream's error code (a stable identifier), never its message."""
    try:
        code = resp.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "http_" + str(resp.status_code)
    return str(code) if isinstance(code, str) and code.isidentifier() else "http_" + str(resp.status_code)


def _retry_after(resp: httpx.Response) -> str:
    value = resp.headers.get("Retry-After", "")
    return value if value.isdigit() else "5"
