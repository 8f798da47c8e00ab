"""The FastAPI app every service starts from: health, readiness, metrics, tracing, error shape.

- ``/healthz``: the process is alive (no dependencies checked).
- ``/readyz``: every readiness check passes (database reachable, broker connected, ...): 200 or 503.
- ``/metrics``: Prometheus exposition of the default registry.
- Errors are JSON in OpenAI's shape, ``{"error": {"message", "type", "param", "code", "trace_id", ...}}``
  (``ErrorResponse``): ``type`` follows the status (``error_type``), ``param`` names the field at
  fault or is null, ``code`` is lmforge's stable identifier. An unexpected exception is a 500 with a
  short message and the trace id, never a stack trace.
- ``/metrics`` also counts every answer by method, route template and status, and times it
  (``lmforge_http_requests_total``, ``lmforge_http_request_errors_total``, ``lmforge_http_request_seconds``).
- ``error_responses(...)`` declares those error answers in a route's OpenAPI entry;
  ``only_query(...)`` refuses query parameters a route does not take, and any given twice.
- Calls between services carry the internal credential: ``create_app(..., internal=settings.internal)``
  refuses (``401``) every call without it, health, readiness and metrics excepted, and
  ``internal_headers`` is what a caller sends. ``X-Lmforge-Principal`` names the API key a call is
  made for (``CallerPrincipal``); it is trusted because only holders of the credential get through.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import iter_route_contexts
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route, compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from .events import UpstreamRecord
from .kafka.producer import BrokerUnavailable
from .metrics import http_request_errors, http_request_seconds, http_requests
from .names import API_KEY_ID_PATTERN, NO_NUL_PATTERN
from .settings import InternalAuthSettings
from .telemetry import current_trace_id, get_logger

log = get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]


class ErrorDetail(BaseModel):
    """What went wrong, in OpenAI's error shape: a ``message`` for people, the ``type`` of error
    (from the status), the ``param`` at fault, a stable ``code`` to branch on, the trace to look up."""

    model_config = ConfigDict(extra="allow")

    message: str = Field(description="For people; never carries an internal path, host or stack trace.")
    type: str = Field(
        description="invalid_request_error (400, 404, 409, 413, 415, 422), authentication_error (401), "
        "permission_error (403), rate_limit_error (429), server_error (500) or api_error (other 5xx)."
    )
    param: str | None = Field(default=None, description="The request field at fault (`messages.0.content`), or null.")
    code: str = Field(description="Stable, machine-readable: e.g. unauthorized, invalid_request, model_not_found.")
    trace_id: str | None = Field(default=None, description="The request's trace, as in the X-Trace-Id header.")


class ErrorResponse(BaseModel):
    """Every error answer: ``{"error": {"message", "type", "param", "code", "trace_id", ...}}``
    (more fields by code)."""

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


def only_query(*names: str) -> Callable[[Request], None]:
    """A dependency: query parameters other than ``names`` are refused (422), not ignored, as
    unknown body fields are; so is one of them given more than once (FastAPI would keep the last
    value of a parameter that takes one, which a list of values does not match)."""

    def check(request: Request) -> None:
        unknown = [k for k in request.query_params if k not in names]
        repeated = [k for k in names if len(request.query_params.getlist(k)) > 1]
        if unknown or repeated:
            name = (unknown or repeated)[0]
            problem = f"unknown query parameter (this route takes {', '.join(names)})" if unknown else "given twice"
            raise RequestValidationError(
                [
                    {
                        "type": "extra_forbidden" if unknown else "too_long",
                        "loc": ("query", name[:40]),
                        "msg": problem,
                        "input": request.query_params[name][:40],
                    }
                ]
            )

    return check


def error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status (what its clients branch on besides the status)."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status == 500:
        return "server_error"
    if status > 500:
        return "api_error"
    return "invalid_request_error"


def error_body(
    code: str,
    message: str,
    *,
    status: int | None = None,
    param: str | None = None,
    type: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code", "trace_id", **extra}}``.

    ``status``: the answer's HTTP status, which picks ``type`` (``error_type``); without it (and
    without ``type``) the error is a client's: ``invalid_request_error``. ``param``: the field at fault.
    """
    kind = type or (error_type(status) if status is not None else "invalid_request_error")
    body: dict[str, Any] = {"message": message, "type": kind, "param": param, "code": code, **extra}
    trace_id = current_trace_id()
    if trace_id:
        body["trace_id"] = trace_id
    return {"error": body}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An error answer: ``error_body`` with its ``type`` from ``status``."""
    return JSONResponse(
        error_body(code, message, status=status, param=param, **extra), status_code=status, headers=headers
    )


def validation_error_response(exc: RequestValidationError, status_code: int = 422) -> JSONResponse:
    """A request that failed validation: the first problem in ``message`` and ``param``, up to 20 in ``details``.

    An error raised with ``ctx={"param": ..., "code": ...}`` (``pydantic_core.PydanticCustomError``)
    names its own field (under the model's location) and code: a model-level check about one field.
    """
    details: list[dict[str, str]] = []
    param: str | None = None
    code = "invalid_request"
    for e in exc.errors()[:20]:
        ctx = e.get("ctx") or {}
        path = [str(p) for p in e["loc"] if p != "body"] + ([str(ctx["param"])] if ctx.get("param") else [])
        field = ".".join(path) or "<body>"
        if not details:
            param = None if field == "<body>" else str(field)
            code = str(ctx.get("code") or code)
        details.append({"field": str(field), "message": e["msg"]})
    first = details[0] if details else {"field": "<body>", "message": "invalid request"}
    return error_response(status_code, code, f"{first['field']}: {first['message']}", param=param, details=details)


def undecodable_body_response(reason: UnicodeDecodeError, status_code: int = 422) -> JSONResponse:
    """A JSON body that is not UTF-8 (FastAPI answers it with a bare 400): say what is wrong."""
    return error_response(
        status_code, "invalid_request", f"body: not valid UTF-8 (byte {reason.start}: {reason.reason})"
    )


def payload_too_large(message: str) -> HTTPException:
    """413 that also closes the connection: the unread rest of the body must not be parsed as the
    next request, and a kept-alive connection after an unread body carried the rejected request's
    trace context into every later request on it (seen with uvicorn + the OTel ASGI middleware)."""
    return HTTPException(413, message, headers={"Connection": "close"})


# --- calls between services -------------------------------------------------------------------

# Open to anyone who can reach a service: probes and Prometheus carry no credential.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
MIN_INTERNAL_TOKEN_CHARS = 32
PRINCIPAL_HEADER = "X-Lmforge-Principal"
# The id part of an API key (``lmf_<id>_<secret>``), as the gateway makes and accepts them.


class InternalAuthNotConfigured(RuntimeError):
    """A service has no internal token and was not told that it may run without one."""


def internal_token(service_name: str, settings: InternalAuthSettings) -> str | None:
    """The internal token from ``settings``; ``None`` only where running without one is allowed.

    Raises ``InternalAuthNotConfigured`` (the service refuses to start) when the token is missing
    or shorter than 32 characters. The message names the variables, never the value.
    """
    env = f"LMFORGE_{service_name.upper()}_INTERNAL__"
    if settings.token is None:
        if settings.allow_unauthenticated:
            return None
        raise InternalAuthNotConfigured(
            f"{env}TOKEN is not set. Set it to the deployment's shared internal token (at least "
            f"{MIN_INTERNAL_TOKEN_CHARS} characters, e.g. `openssl rand -hex 32`), or set "
            f"{env}ALLOW_UNAUTHENTICATED=true to let anyone who can reach this service call it."
        )
    if len(settings.token.get_secret_value()) < MIN_INTERNAL_TOKEN_CHARS:
        raise InternalAuthNotConfigured(
            f"{env}TOKEN is too short: at least {MIN_INTERNAL_TOKEN_CHARS} characters (`openssl rand -hex 32`)."
        )
    return settings.token.get_secret_value()


def internal_headers(service_name: str, settings: InternalAuthSettings) -> dict[str, str]:
    """The headers a call to another lmforge service carries: the internal token as a bearer credential."""
    token = internal_token(service_name, settings)
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def _fingerprint(token: bytes) -> bytes:
    # Compared as digests: constant time, and the comparison says nothing about the token's length.
    return hashlib.sha256(token).digest()


class InternalAuthMiddleware:
    """Refuses (``401``) every call without the internal token, before any route reads the request.

    ``OPEN_PATHS`` stay open. The answer closes the connection: a refused request's body is never read.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = _fingerprint(token.encode())

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, presented = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    _fingerprint(presented.strip()), self._expected
                )
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401,
            "unauthorized",
            "an internal service: send the internal token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer", "Connection": "close"},
        )
        await response(scope, receive, send)


# Declares the credential in the OpenAPI document of every internal service; the middleware checks it.
internal_scheme = HTTPBearer(
    scheme_name="internal",
    description="The deployment's internal token (LMFORGE_<SERVICE>_INTERNAL__TOKEN), shared by its services.",
    auto_error=False,
)


class CallerPrincipal(BaseModel):
    """The API key a call is made for, as the gateway authenticated it (``X-Lmforge-Principal``).

    Only the gateway sets it. A service trusts it because a call reaches a route only with the
    internal credential; a client's own ``X-Lmforge-Principal`` never gets past the gateway.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_id: str = Field(pattern=API_KEY_ID_PATTERN)
    name: str = Field(min_length=1, max_length=200, pattern=NO_NUL_PATTERN)

    def header(self) -> dict[str, str]:
        """The header that carries it: JSON with every non-ASCII character escaped (a header is ASCII)."""
        return {PRINCIPAL_HEADER: json.dumps(self.model_dump(), ensure_ascii=True, separators=(",", ":"))}


def caller_principal(
    value: Annotated[
        str | None,
        # Not in the services' OpenAPI documents: only the gateway sets it (docs/security.md), and
        # a header schema cannot say which strings are a principal's JSON.
        Header(
            alias=PRINCIPAL_HEADER,
            description='The API key the gateway authenticated: `{"key_id": ..., "name": ...}`; set by the gateway.',
            include_in_schema=False,
        ),
    ] = None,
) -> CallerPrincipal | None:
    """A dependency: the principal a call is made for, or ``None`` (an internal caller acting for itself)."""
    if value is None:
        return None
    try:
        return CallerPrincipal.model_validate_json(value)
    except ValidationError as exc:
        raise HTTPException(400, {"code": "bad_request", "message": f"{PRINCIPAL_HEADER}: not a principal"}) from exc


def create_app(
    service_name: str,
    *,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    readiness: dict[str, ReadinessCheck] | None = None,
    internal: InternalAuthSettings | None = None,
    **fastapi_kwargs: Any,
) -> FastAPI:
    """The app of one service. ``internal``: the service sits behind the gateway, and every call to
    it needs the internal credential (it refuses to be built without one unless that is allowed)."""
    token = internal_token(service_name, internal) if internal is not None else None
    if internal is not None and token is None:
        log.warning("calls to this service are not authenticated: anyone who can reach it may call it")
    if token is not None:
        fastapi_kwargs["dependencies"] = [*fastapi_kwargs.get("dependencies", []), Depends(internal_scheme)]
        fastapi_kwargs["responses"] = error_responses(401) | fastapi_kwargs.get("responses", {})
    app = FastAPI(title=f"lmforge {service_name}", lifespan=lifespan, **fastapi_kwargs)
    app.state.readiness = dict(readiness or {})
    if token is not None:
        # Added before the trace-id middleware, so it runs inside it: a 401 carries X-Trace-Id too.
        app.add_middleware(InternalAuthMiddleware, token=token)

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
        return validation_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            return undecodable_body_response(exc.__cause__)
        # Routes raise HTTPException(status, "message") or HTTPException(status, {"code", "message", ...}).
        extra = dict(exc.detail) if isinstance(exc.detail, dict) else {"message": str(exc.detail)}
        code = str(extra.pop("code", _code_for(exc.status_code)))
        message = str(extra.pop("message", ""))
        extra.pop("type", None)  # the status says it
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette names the methods of the first route that matched the path only; a path
            # with a route per method (GET and POST /v1/api-keys) must list them all.
            headers = dict(headers or {}) | {"Allow": ", ".join(_allowed_methods(app, request.scope["path"]))}
        return error_response(exc.status_code, code, message, headers=headers, **extra)

    @app.exception_handler(BrokerUnavailable)
    async def _broker(_: Request, exc: BrokerUnavailable) -> JSONResponse:
        return error_response(
            503,
            "broker_unavailable",
            "the event broker did not acknowledge the write; retry",
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", error=repr(exc))
        return error_response(500, "internal_error", "internal error")

    app.add_middleware(TraceHeaderMiddleware)
    # Outermost of the app's own middleware: it sees every answer, the internal credential's 401 too.
    app.add_middleware(HttpMetricsMiddleware, service=service_name)
    _instrument(app)
    return app


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route of ``app`` serves at ``path`` (included routers too)."""
    methods: set[str] = set()
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, Route) and context.path and compile_path(context.path)[0].match(path):
            methods |= route.methods or set()
    return sorted(methods)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"


def route_template(scope: Scope) -> str:
    """The template of the route that answered (``/v1/models/{model}``), never the raw path:
    ``<unmatched>`` when no route did (an unknown path, or a call refused before routing)."""
    fastapi_scope = scope.get("fastapi")
    context = fastapi_scope.get("effective_route_context") if isinstance(fastapi_scope, dict) else None
    path = getattr(context, "path_format", None) or getattr(scope.get("route"), "path_format", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class TraceHeaderMiddleware:
    """Adds ``X-Trace-Id`` (the trace to look up in Grafana/Tempo) to every answer, streams too.

    Plain ASGI: Starlette's ``BaseHTTPMiddleware`` runs every request through an extra task and
    memory stream; on a bare FastAPI route that was 570 us per request against 300 us without it
    (this ASGI form: 275-320 us), and a completion crosses two services.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                trace_id = current_trace_id()
                if trace_id:
                    message = {**message, "headers": [*message.get("headers", []), (b"x-trace-id", trace_id.encode())]}
            await send(message)

        await self.app(scope, receive, sending)


class HttpMetricsMiddleware:
    """Counts and times every HTTP answer by method, route template and status.

    The time runs until the last byte of the answer (the end of a stream, for a streamed one).
    ``lmforge_http_request_errors_total`` counts server errors: 5xx answers, and answers that
    failed after they had begun (a stream cut by an exception keeps its 200 in the status label).
    """

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status, failed = time.perf_counter(), 0, False

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            failed = True
            raise
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            route = route_template(scope)
            code = str(status or 500)  # no answer begun: the server error handler answers 500
            http_requests.labels(self.service, method, route, code).inc()
            http_request_seconds.labels(self.service, method, route).observe(time.perf_counter() - started)
            if failed or status >= 500 or not status:
                http_request_errors.labels(self.service, method, route, code).inc()


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

    # One server span per request. The ASGI instrumentation's own "http send"/"http receive"
    # spans (one per message: every chunk of a stream) say nothing a trace reader needs.
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics", exclude_spans=["receive", "send"])
