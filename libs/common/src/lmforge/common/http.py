"""The FastAPI app every service starts from: health, readiness, metrics, tracing, error shape.

- ``/healthz``: the process is alive (no dependencies checked).
- ``/readyz``: every readiness check passes (database reachable, broker connected, ...): 200 or 503.
- ``/metrics``: Prometheus exposition of the default registry.
- Errors are JSON ``{"error": {"code", "message", ...}}`` (``ErrorResponse``); an unexpected
  exception is a 500 with a short message and the trace id, never a stack trace.
- ``error_responses(...)`` declares those error answers in a route's OpenAPI entry.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .events import UpstreamRecord
from .kafka.producer import BrokerUnavailable
from .telemetry import current_trace_id, get_logger

log = get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]


class ErrorDetail(BaseModel):
    """What went wrong: a stable ``code`` to branch on, a ``message`` for people, the trace to look up."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(description="Stable, machine-readable: e.g. unauthorized, invalid_request, not_found.")
    message: str = Field(description="For people; never carries an internal path, host or stack trace.")
    trace_id: str | None = Field(default=None, description="The request's trace, as in the X-Trace-Id header.")


class ErrorResponse(BaseModel):
    """Every error answer: ``{"error": {"code", "message", "trace_id", ...}}`` (more fields by code)."""

    error: ErrorDetail


_ERROR_DESCRIPTIONS = {
    400: "The request could not be read.",
    401: "No API key, or an unknown, revoked or expired one.",
    403: "The API key lacks the scope this route needs.",
    404: "The resource does not exist.",
    409: "The request conflicts with the current state.",
    413: "The request is too large.",
    415: "The content type is not supported.",
    422: "The request is malformed: the message names the field.",
    429: "Too many requests; retry after Retry-After seconds.",
    500: "An unexpected error; report the trace id.",
    502: "A service behind this one failed.",
    503: "Temporarily unavailable; retry after Retry-After seconds.",
    504: "A service behind this one did not answer in time.",
}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}}
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry declaring these error statuses, all in the ``ErrorResponse`` shape."""
    return {
        status: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[status]}
        | ({"headers": _RETRY_AFTER} if status in (429, 503) else {})
        for status in statuses
    }


# A URI (file://, s3://, http://host:port/...), an absolute path, or an IP address with or without port.
_INTERNAL = re.compile(
    r"""[A-Za-z][A-Za-z0-9+.-]*://\S+"""
    r"""|(?<![\w.:/-])/[^\s'",;:)]+"""
    r"""|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"""
    r"""|\blocalhost(?::\d+)?\b"""
)


def public_text(text: str | None, limit: int = 300) -> str | None:
    """A message from inside the platform made fit for a public answer.

    Keeps the last meaningful line (a traceback ends in the exception), replaces URIs, absolute
    paths and addresses with ``<internal>``, and cuts it to ``limit`` characters.
    """
    if text is None:
        return None
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.startswith((" ", "\t")) and not line.startswith("Traceback (most recent")
    ]
    line = lines[-1] if lines else text.strip()
    line = _INTERNAL.sub("<internal>", line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def upstream_records_body(max_records: int = 1000) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a route taking upstream records (``openapi_extra=``).

    Such a route reads its body itself (JSON, JSONL or a multipart upload), so FastAPI cannot
    derive this from a parameter: one record or an array as JSON, records one per line as JSONL,
    or a JSONL ``file`` part.
    """
    record = UpstreamRecord.model_json_schema()
    records = {"type": "array", "items": record, "minItems": 1, "maxItems": max_records}
    return {
        "requestBody": {
            "required": True,
            "description": "One record, a JSON array of records, JSON Lines, or a multipart upload of a JSONL `file`.",
            "content": {
                "application/json": {"schema": {"anyOf": [record, records]}},
                "application/x-ndjson": {"schema": records | {"description": "One JSON record per line."}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary", "description": "JSONL"}},
                        "required": ["file"],
                    },
                    "encoding": {"file": {"contentType": "application/jsonl"}},
                },
            },
        }
    }


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
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI answers a JSON body that is not UTF-8 with a bare 400; say what is wrong.
            reason = exc.__cause__
            return JSONResponse(
                error_body("invalid_request", f"body: not valid UTF-8 (byte {reason.start}: {reason.reason})"),
                status_code=422,
            )
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
