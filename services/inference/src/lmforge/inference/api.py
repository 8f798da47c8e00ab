"""Internal API (called by the gateway): generate, what is served, and deployment state.

The contract is docs/serving.md, "The serving service's internal API".
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmforge.common.db import as_utc
from lmforge.common.http import error_responses
from lmforge.common.names import AliasName, ModelName

from . import metrics, store
from .cache import CachedAnswer, ResponseCache, cache_key
from .routing import Routing
from .triton import (
    ContextLengthExceeded,
    Delta,
    GenerationRequest,
    InvalidRequest,
    TritonModels,
    TritonRejected,
    TritonUnavailable,
)

router = APIRouter(responses=error_responses(422))

DEFAULT_ALIAS = "production"
VERSION_HEADER = "X-Lmforge-Model-Version"
CACHE_HEADER = "X-Lmforge-Cache"
NDJSON = "application/x-ndjson"
RETRY_AFTER_S = 5

StopString = Annotated[str, Field(min_length=1, max_length=200)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=20_000)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelName
    alias: AliasName | None = Field(
        default=None, description="which alias answers; neither alias nor version: production"
    )
    version: int | None = Field(default=None, ge=1, le=2**31 - 1, description="which version answers; wins over alias")
    prompt: str | None = Field(default=None, max_length=20_000, description="exactly one of prompt and messages")
    messages: list[Message] | None = Field(default=None, min_length=1, max_length=256)
    max_tokens: int = Field(default=32, ge=1, le=4096, description="at most the max_new_tokens_limit setting")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 = greedy (and cacheable)")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="nucleus sampling; 1 = off")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: list[StopString] = Field(default_factory=list, max_length=4)
    stream: bool = False
    caller: str | None = Field(
        default=None, max_length=200, description="who asks; traffic splits are sticky per caller"
    )

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of prompt and messages")
        return self


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Generation(BaseModel):
    text: str
    finish_reason: str
    model: str
    alias: str | None = Field(description="null when addressed by version")
    version: int
    triton_model: str
    usage: Usage
    cached: bool


class ServedModel(BaseModel):
    id: str = Field(description="<model> (its production alias), <model>@<alias> or <model>@v<version>")
    model: str
    alias: str | None = Field(description="null for a version id")
    version: int
    triton_model: str
    context_length: int | None = Field(description="prompt + new tokens at most, from the weights' config")
    created: int = Field(description="unix seconds when this version started serving")


class DeploymentState(BaseModel):
    model_name: str
    alias: str
    desired_version: int
    desired_artifact_uri: str
    serving_version: int | None
    triton_model: str | None
    context_length: int | None
    deployed_at: datetime | None
    state: str
    failed_version: int | None
    error: str | None
    updated_at: datetime


@dataclass(frozen=True)
class Target:
    """What answers a request: one serving deployment row, addressed by alias or by version."""

    model: str
    alias: str | None
    version: int
    triton_model: str
    context_length: int | None

    @property
    def header(self) -> str:
        return f"{self.model}@v{self.version}"


def _not_found(message: str) -> HTTPException:
    return HTTPException(404, {"code": "model_not_found", "message": message})


async def resolve(
    routing: Routing, model: str, alias: str | None, version: int | None, *, fresh: bool = False
) -> Target:
    """What answers; from ``routing``'s snapshot, or read from the database with ``fresh``."""
    if version is not None:
        row = await routing.serving_version(model, version, fresh=fresh)
        if row is None:
            raise _not_found(f"no version {version} of model {model} is being served")
        return Target(model, None, version, row.triton_model, row.context_length)
    alias = alias or DEFAULT_ALIAS
    row = await routing.deployment(model, alias, fresh=fresh)
    if row is None:
        raise _not_found(f"no model {model}@{alias}")
    if row.serving_version is None or row.triton_model is None:
        raise HTTPException(
            503,
            {"code": "model_not_deployed", "message": f"{model}@{alias} is not serving yet ({row.state})"},
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return Target(model, alias, row.serving_version, row.triton_model, row.context_length)


def _error(exc: TritonRejected | TritonUnavailable, target: Target) -> tuple[int, str, str]:
    """(status, code, message) of a failed generation."""
    if isinstance(exc, ContextLengthExceeded):
        limit = target.context_length  # the runtime's message names it; say it if it does not
        named = limit is None or str(limit) in exc.detail
        prefix = "" if named else f"this model's maximum context length is {limit} tokens: "
        return 400, "context_length_exceeded", prefix + exc.detail
    if isinstance(exc, InvalidRequest):
        return 400, "invalid_request", exc.detail
    if isinstance(exc, TritonUnavailable):
        return 503, "triton_unavailable", str(exc)
    return 502, "triton_error", str(exc)


def _http_error(exc: TritonRejected | TritonUnavailable, target: Target) -> HTTPException:
    status, code, message = _error(exc, target)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return HTTPException(status, {"code": code, "message": message}, headers=headers)


def _unknown_to_triton(exc: TritonRejected) -> bool:
    """Triton no longer has the model: unloaded after a promotion moved the alias on."""
    text = str(exc)
    return "unknown model" in text or "no available versions" in text or "is not found" in text


def _line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode() + b"\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _final_line(target: Target, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    return _line(
        {
            "finish_reason": finish_reason,
            "usage": _usage(prompt_tokens, completion_tokens),
            "model": target.model,
            "alias": target.alias,
            "version": target.version,
            "triton_model": target.triton_model,
        }
    )


@router.post(
    "/generate",
    response_model=Generation,
    responses=error_responses(400, 404, 502, 503)
    | {
        200: {
            "description": "The answer; with stream: NDJSON lines {text} ..., then {finish_reason, usage, ...}",
            "content": {NDJSON: {"schema": {"type": "string"}}},
            "headers": {
                VERSION_HEADER: {"description": "<model>@v<version> that answered", "schema": {"type": "string"}},
                CACHE_HEADER: {"description": "hit or miss", "schema": {"type": "string", "enum": ["hit", "miss"]}},
            },
        }
    },
)
async def generate(request: Request, response: Response, body: GenerateRequest) -> Any:
    settings = request.app.state.settings
    routing: Routing = request.app.state.routing
    triton: TritonModels = request.app.state.triton
    cache: ResponseCache = request.app.state.cache
    if body.max_tokens > settings.max_new_tokens_limit:
        raise HTTPException(
            422, {"code": "invalid_request", "message": f"max_tokens: at most {settings.max_new_tokens_limit}"}
        )
    target = await resolve(routing, body.model, body.alias, body.version)
    if target.context_length is not None and body.max_tokens >= target.context_length:
        raise HTTPException(
            400,
            {
                "code": "context_length_exceeded",
                "message": f"this model's maximum context length is {target.context_length} tokens: "
                f"max_tokens {body.max_tokens} leaves no room for the prompt",
            },
        )
    gen = GenerationRequest(
        prompt=body.prompt,
        messages=[m.model_dump() for m in body.messages] if body.messages is not None else None,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=tuple(body.stop),
        stream=body.stream,
    )
    key = cache_key(target.triton_model, gen)
    cached = await cache.get(key) if key is not None else None
    if key is not None:
        (metrics.cache_hits if cached is not None else metrics.cache_misses).labels(target.triton_model).inc()
    headers = {VERSION_HEADER: target.header, CACHE_HEADER: "hit" if cached is not None else "miss"}

    if cached is not None:
        if body.stream:
            return StreamingResponse(_replay(target, cached), media_type=NDJSON, headers=headers)
        response.headers.update(headers)
        return _generation(target, cached, cached=True)

    # Start generating before answering: errors before the first delta are HTTP errors.
    deltas, first, target = await _start(routing, triton, target, gen, body)
    headers[VERSION_HEADER] = target.header
    if body.stream:
        return StreamingResponse(_relay(target, deltas, first, cache, key), media_type=NDJSON, headers=headers)
    parts = [first.text]
    last = first
    try:
        while last.finish_reason is None:
            last = await anext(deltas)
            parts.append(last.text)
    except (TritonRejected, TritonUnavailable) as exc:
        raise _http_error(exc, target) from exc
    finally:
        await deltas.aclose()
    answer = CachedAnswer("".join(parts), last.finish_reason, last.prompt_tokens, last.completion_tokens)
    if key is not None:
        await cache.put(key, answer)
    response.headers.update(headers)
    return _generation(target, answer, cached=False)


async def _start(
    routing: Routing, triton: TritonModels, target: Target, gen: GenerationRequest, body: GenerateRequest
) -> tuple[AsyncGenerator[Delta, None], Delta, Target]:
    """The generation's iterator and first delta. A model Triton no longer has (a promotion
    unloaded it after this request read its row) is retried once on what serves now, read from
    the database."""
    for attempt in (1, 2):
        deltas = triton.generate(target.triton_model, gen)
        try:
            return deltas, await anext(deltas), target
        except TritonRejected as exc:
            await deltas.aclose()
            if attempt == 1 and _unknown_to_triton(exc) and not isinstance(exc, ContextLengthExceeded | InvalidRequest):
                now = await resolve(routing, body.model, body.alias, body.version, fresh=True)
                if now.triton_model != target.triton_model:
                    target = now
                    continue
            raise _http_error(exc, target) from exc
        except TritonUnavailable as exc:
            await deltas.aclose()
            raise _http_error(exc, target) from exc
    raise AssertionError("unreachable")


def _generation(target: Target, answer: CachedAnswer, *, cached: bool) -> Generation:
    return Generation(
        text=answer.text,
        finish_reason=answer.finish_reason,
        model=target.model,
        alias=target.alias,
        version=target.version,
        triton_model=target.triton_model,
        usage=Usage(**_usage(answer.prompt_tokens, answer.completion_tokens)),
        cached=cached,
    )


async def _replay(target: Target, answer: CachedAnswer) -> AsyncIterator[bytes]:
    """A cached answer as a stream: the whole text as one delta, then the last line."""
    if answer.text:
        yield _line({"text": answer.text})
    yield _final_line(target, answer.finish_reason, answer.prompt_tokens, answer.completion_tokens)


async def _relay(
    target: Target, deltas: AsyncGenerator[Delta, None], delta: Delta, cache: ResponseCache, key: str | None
) -> AsyncIterator[bytes]:
    """NDJSON lines from Triton's deltas; a failure after the first line is a last ``error`` line."""
    parts: list[str] = []
    try:
        while True:
            if delta.text:
                parts.append(delta.text)
                yield _line({"text": delta.text})
            if delta.finish_reason is not None:
                yield _final_line(target, delta.finish_reason, delta.prompt_tokens, delta.completion_tokens)
                if key is not None:
                    answer = CachedAnswer(
                        "".join(parts), delta.finish_reason, delta.prompt_tokens, delta.completion_tokens
                    )
                    await cache.put(key, answer)
                return
            delta = await anext(deltas)
    except (TritonRejected, TritonUnavailable) as exc:
        _, code, message = _error(exc, target)
        yield _line({"error": {"code": code, "message": message}})
    finally:
        await deltas.aclose()


@router.get("/served-models", response_model=list[ServedModel])
async def served_models(request: Request) -> list[ServedModel]:
    """One entry per addressable id: the bare name (production), each alias, each served version."""
    rows = await store.list_serving(request.app.state.runtime.db)
    out: list[ServedModel] = []
    versions: dict[tuple[str, int], ServedModel] = {}
    for row in rows:
        created = _unix(row.deployed_at or row.updated_at)
        common = {
            "model": row.model_name,
            "version": row.serving_version,
            "triton_model": row.triton_model,
            "context_length": row.context_length,
        }
        if row.alias == DEFAULT_ALIAS:
            out.append(ServedModel(id=row.model_name, alias=row.alias, created=created, **common))
        out.append(ServedModel(id=f"{row.model_name}@{row.alias}", alias=row.alias, created=created, **common))
        key = (row.model_name, row.serving_version)
        earliest = versions.get(key)
        if earliest is None or created < earliest.created:
            versions[key] = ServedModel(
                id=f"{row.model_name}@v{row.serving_version}", alias=None, created=created, **common
            )
    out.extend(versions[k] for k in sorted(versions))
    return sorted(out, key=lambda m: (m.model, m.alias is None, m.id != m.model, m.id))


def _unix(moment: datetime) -> int:
    return int(as_utc(moment).timestamp())


@router.get("/deployments", response_model=list[DeploymentState])
async def list_deployments(request: Request) -> list[DeploymentState]:
    rows = await store.list_deployments(request.app.state.runtime.db)
    return [DeploymentState.model_validate(r, from_attributes=True) for r in rows]
