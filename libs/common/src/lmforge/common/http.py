"""The FastAPI app every service starts from: health, readiness, metrics, tracing, error shape.

- ``/healthz``: the process is alive (no dependencies checked).
- ``/readyz``: every readiness check passes (database reachable, broker connected, ...): 200 or 503.
- ``/metrics``: Prometheus exposition of the default registry.
- Errors are JSON ``{"error": {"code", "message", ...}}``; an unexpected exception is a 500 with a
  short message and the trace id, never a stack trace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from .kafka.producer import BrokerUnavailable
from .telemetry import current_trace_id, get_logger

log = get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, **extra}
    trace_id = current_trace_id()
    if trace_id:
        body["trace_id"] = trace_id
    return {"error": body}


def payload_too_large(message: str) -> HTTPException:
    """413 that also closes the connection: the unread rest of the body must not be parsed as the
    next request, and a kept-alive connection after an unread body carried the rejected request's
    trace context into every later request on it (seen with uvicorn + the OTel ASGI middleware)."""
    return HTTPException(413, message, headers={"Connection": "close"})


def create_app(
    service_name: str,
    *,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    readiness: dict[str, ReadinessCheck] | None = None,
    **fastapi_kwargs: Any,
) -> FastAPI:
    app = FastAPI(title=f"lmforge {service_name}", lifespan=lifespan, **fastapi_kwargs)
    app.state.readiness = dict(readiness or {})

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service_name}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        results = {}
        for name, check in app.state.readiness.items():
            try:
                results[name] = bool(await check())
            except Exception:  # noqa: BLE001 - a failing check is "not ready"
                results[name] = False
        ok = all(results.values())
        return JSONResponse({"ready": ok, "checks": results}, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body") or "<body>", "message": e["msg"]}
            for e in exc.errors()[:20]
        ]
        first = details[0] if details else {"field": "<body>", "message": "invalid request"}
        return JSONResponse(
            error_body("invalid_request", f"{first['field']}: {first['message']}", details=details),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Routes raise HTTPException(status, "message") or HTTPException(status, {"code", "message", ...}).
        extra = dict(exc.detail) if isinstance(exc.detail, dict) else {"message": str(exc.detail)}
        code = str(extra.pop("code", _code_for(exc.status_code)))
        message = str(extra.pop("message", ""))
        return JSONResponse(
            error_body(code, message, **extra),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(BrokerUnavailable)
    async def _broker(_: Request, exc: BrokerUnavailable) -> JSONResponse:
        return JSONResponse(
            error_body("broker_unavailable", "the event broker did not acknowledge the write; retry"),
            status_code=503,
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", error=repr(exc))
        return JSONResponse(error_body("internal_error", "internal error"), status_code=500)

    @app.middleware("http")
    async def _trace_header(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        trace_id = current_trace_id()
        if trace_id:
            response.headers["X-Trace-Id"] = trace_id  # the trace to look up in Grafana/Tempo
        return response

    _instrument(app)
    return app


def _code_for(status: int) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        409: "conflict",
        413: "payload_too_large",
        415: "unsupported_media_type",
        422: "invalid_request",
        429: "rate_limited",
        502: "bad_gateway",
        503: "unavailable",
        504: "timeout",
    }.get(status, "http_error")


def _instrument(app: FastAPI) -> None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics")
