"""The OpenAI-compatible routes: ``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``.

What an OpenAI client sends and reads, on top of the inference service's internal API
(``docs/serving.md``):

- A request is checked like every ``/v1`` route (key 401, scope 403, rate 429), then its body; a
  body that fails validation is a ``400`` (OpenAI's BadRequest) naming the field, and so is a field
  lmforge does not support (``schemas.SamplingRequest``).
- ``n`` choices per prompt are ``n`` requests to inference, sent at once, so that they are
  batched together in Triton; choice ``j`` of prompt ``i`` has index ``i * n + j``, and, given a
  ``seed``, samples with ``seed + j``.
- The token quota is checked up front for ``max_tokens`` x prompts x ``n`` and charged with the
  tokens used.
- Every answer names the version that produced it: ``model`` is ``name@v<n>`` and the
  ``X-Lmforge-Model-Version`` header. ``X-Lmforge-Cache`` passes through (``partial`` when the
  choices of one request disagree).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.common.http import (
    error_responses,
    undecodable_body_response,
    validation_error_response,
)
from lmforge.common.names import MAX_INT32, ModelReference, url_path
from lmforge.common.telemetry import get_logger

from .auth import AuthenticatedRoute, Principal, Scope, require
from .downstream import Downstream, PassThrough
from .quotas import Quotas
from .schemas import (
    MAX_SEED,
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelList,
    ModelObject,
    SamplingRequest,
    ServedBy,
    Usage,
)

log = get_logger(__name__)

MODEL_VERSION_HEADER = "X-Lmforge-Model-Version"
CACHE_HEADER = "X-Lmforge-Cache"
_VERSION_REFERENCE = re.compile(r"v(\d{1,12})")


class OpenAIRoute(AuthenticatedRoute):
    """An ``AuthenticatedRoute`` with OpenAI's statuses: a request that fails validation is ``400``
    (not ``422``), and so is a service's ``422``; a service's 4xx names the field it is about."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        params = {
            "model_not_found": "model",
            "context_length_exceeded": "messages" if self.path.endswith("/chat/completions") else "prompt",
        }

        async def openai_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return validation_error_response(exc, 400)
            except StarletteHTTPException as exc:
                if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
                    return undecodable_body_response(exc.__cause__, 400)
                raise
            except PassThrough as exc:
                return exc.response(400 if exc.resp.status_code == 422 else None, params=params)

        return openai_handler


# Every route: the key (401), its scope (403), a malformed request (400), too many requests (429),
# 503 while rate limits cannot be counted; each calls inference (502, 503, 504).
router = APIRouter(prefix="/v1", route_class=OpenAIRoute, responses=error_responses(400, 401, 403, 429, 503))
DOWNSTREAM = error_responses(502, 503, 504)
_VERSION_HEADERS = {
    MODEL_VERSION_HEADER: {
        "description": "`name@v<version>`: the version that answered.",
        "schema": {"type": "string"},
    },
    CACHE_HEADER: {"description": "`hit`, `miss` or `partial`: from inference's cache.", "schema": {"type": "string"}},
}
_STREAMED = {200: {"description": "The completion.", "headers": _VERSION_HEADERS}}


def _downstream(request: Request) -> Downstream:
    return request.app.state.downstream  # type: ignore[no-any-return]


def _quotas(request: Request) -> Quotas:
    return request.app.state.quotas  # type: ignore[no-any-return]


# --- /v1/models: what answers right now -------------------------------------------------------


def _model_object(entry: dict[str, Any]) -> ModelObject:
    created = entry.get("created")
    return ModelObject(
        id=str(entry["id"]),
        object="model",
        created=int(created) if isinstance(created, int | float) else 0,
        owned_by="lmforge",
    )


async def _served(request: Request, who: Principal) -> list[ModelObject]:
    served = await _downstream(request).json("inference", "GET", url_path("served-models"), principal=who.forwarded())
    return [_model_object(e) for e in served if isinstance(e, dict) and isinstance(e.get("id"), str)]


@router.get("/models", response_model=ModelList, responses=DOWNSTREAM)
async def list_models(request: Request, who: Annotated[Principal, Depends(require(Scope.COMPLETIONS))]) -> ModelList:
    """Every id a completion may name right now: each served model's name (its production alias),
    ``name@alias`` for each alias and ``name@v<n>`` for each version being served."""
    return ModelList(object="list", data=await _served(request, who))


@router.get("/models/{model}", response_model=ModelObject, responses=error_responses(404) | DOWNSTREAM)
async def retrieve_model(
    request: Request, model: ModelReference, who: Annotated[Principal, Depends(require(Scope.COMPLETIONS))]
) -> ModelObject:
    """One id of ``GET /v1/models``; ``404`` (``model_not_found``) for an id not served."""
    for entry in await _served(request, who):
        if entry.id == model:
            return entry
    raise HTTPException(
        404,
        {
            "code": "model_not_found",
            "message": f"The model '{model}' does not exist or is not served",
            "param": "model",
        },
    )


# --- generation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` names: a model and its alias (``production`` by default), or a version."""

    model: str
    alias: str | None
    version: int | None

    @classmethod
    def parse(cls, reference: str) -> Target:
        model, _, tail = reference.partition("@")
        version = _VERSION_REFERENCE.fullmatch(tail)
        if version is None:
            return cls(model, tail or "production", None)
        if not 1 <= int(version.group(1)) <= MAX_INT32:
            raise HTTPException(
                404,
                {"code": "model_not_found", "message": f"The model '{reference}' does not exist", "param": "model"},
            )
        return cls(model, None, int(version.group(1)))


def _payloads(
    body: SamplingRequest, target: Target, caller: str, inputs: list[dict[str, Any]], stream: bool
) -> list[dict[str, Any]]:
    """One inference request per choice: ``n`` per input (a prompt, or the messages), in index order."""
    n = body.choices_per_prompt()
    return [
        {
            "model": target.model,
            "alias": target.alias,
            "version": target.version,
            "prompt": None,
            "messages": None,
            **given,
            "max_tokens": body.new_tokens(),
            "temperature": body.temperature if body.temperature is not None else 0.0,
            "top_p": body.top_p if body.top_p is not None else 1.0,
            "seed": None if body.seed is None else (body.seed + j) % (MAX_SEED + 1),
            "stop": body.stop_sequences(),
            "stream": stream,
            "caller": caller,
        }
        for given in inputs
        for j in range(n)
    ]


@dataclass
class Answer:
    """One choice's whole answer (not streamed)."""

    text: str
    finish_reason: Literal["stop", "length"]
    usage: Usage
    served: ServedBy
    model_version: str
    cache: str | None


def _finish(value: Any) -> Literal["stop", "length"]:
    return "length" if value == "length" else "stop"


def _answer(out: dict[str, Any], headers: httpx.Headers) -> Answer:
    try:
        served = ServedBy(
            model=out["model"], alias=out.get("alias"), version=out["version"], triton_model=out["triton_model"]
        )
        usage = Usage.model_validate(out["usage"])
        text = str(out["text"])
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("inference answered an unexpected body", error=type(exc).__name__)
        raise HTTPException(
            502, {"code": "upstream_error", "message": "a platform service gave an unreadable answer"}
        ) from exc
    return Answer(
        text=text,
        finish_reason=_finish(out.get("finish_reason")),
        usage=usage,
        served=served,
        model_version=headers.get(MODEL_VERSION_HEADER) or f"{served.model}@v{served.version}",
        cache=headers.get(CACHE_HEADER),
    )


def _cache(values: list[str | None]) -> str | None:
    seen = {v for v in values if v}
    return None if not seen else seen.pop() if len(seen) == 1 else "partial"


def _answer_headers(model_version: str, cache: str | None) -> dict[str, str]:
    return {MODEL_VERSION_HEADER: model_version} | ({CACHE_HEADER: cache} if cache else {})


def _usage(prompt_tokens: list[int], completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=sum(prompt_tokens),
        completion_tokens=completion_tokens,
        total_tokens=sum(prompt_tokens) + completion_tokens,
    )


async def _generate(
    request: Request, who: Principal, model: str, payloads: list[dict[str, Any]], n: int
) -> tuple[list[Answer], Usage]:
    """Every choice at once; the tokens of those that were answered are charged even if another failed."""
    down, quotas, principal = _downstream(request), _quotas(request), who.forwarded()

    async def one(payload: dict[str, Any]) -> Answer:
        resp = await down.call(
            "inference",
            "POST",
            url_path("generate"),
            principal=principal,
            json=payload,
            timeout=down.settings.completion_timeout_s,
        )
        if resp.status_code >= 400:
            raise PassThrough(resp)
        try:
            out = resp.json()
        except ValueError:
            out = None
        if not isinstance(out, dict):
            raise HTTPException(
                502, {"code": "upstream_error", "message": "a platform service gave an unreadable answer"}
            )
        return _answer(out, resp.headers)

    results = await asyncio.gather(*(one(p) for p in payloads), return_exceptions=True)
    answers = [r for r in results if isinstance(r, Answer)]
    await quotas.count_completion(who, model, sum(a.usage.completion_tokens for a in answers))
    for r in results:
        if isinstance(r, BaseException):
            raise r
    # Tokens of each prompt once (its n choices read the same prompt), completion tokens of every choice.
    usage = _usage(
        [answers[i].usage.prompt_tokens for i in range(0, len(answers), n)],
        sum(a.usage.completion_tokens for a in answers),
    )
    return answers, usage


async def _prepare(
    request: Request, who: Principal, body: SamplingRequest, inputs: list[dict[str, Any]]
) -> tuple[Target, list[dict[str, Any]]]:
    target = Target.parse(body.model)
    payloads = _payloads(body, target, body.user or who.key_id, inputs, stream=False)
    await _quotas(request).check_completion(who, target.model, body.new_tokens() * len(payloads))
    return target, payloads


@router.post(
    "/completions",
    response_model=CompletionResponse,
    responses=_STREAMED | error_responses(404) | DOWNSTREAM,
)
async def completions(
    request: Request,
    response: Response,
    body: CompletionRequest,
    who: Annotated[Principal, Depends(require(Scope.COMPLETIONS))],
) -> Any:
    """OpenAI's completions: one prompt or several, ``n`` choices each.

    ``429`` (``token_quota_exceeded``) when the answer could take more completion tokens than this
    key has left today for this model (``max_tokens`` x prompts x ``n``); the tokens used are
    counted against that budget. ``400`` (``context_length_exceeded``) when a prompt and
    ``max_tokens`` do not fit the model's context.
    """
    n = body.choices_per_prompt()
    target, payloads = await _prepare(request, who, body, [{"prompt": p} for p in body.prompts()])
    answers, usage = await _generate(request, who, target.model, payloads, n)
    response.headers.update(_answer_headers(answers[0].model_version, _cache([a.cache for a in answers])))
    return CompletionResponse(
        id=f"cmpl-{uuid.uuid4().hex[:24]}",
        object="text_completion",
        created=int(time.time()),
        model=answers[0].model_version,
        choices=[CompletionChoice(text=a.text, index=i, finish_reason=a.finish_reason) for i, a in enumerate(answers)],
        usage=usage,
        lmforge=answers[0].served,
    )


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses=_STREAMED | error_responses(404) | DOWNSTREAM,
)
async def chat_completions(
    request: Request,
    response: Response,
    body: ChatCompletionRequest,
    who: Annotated[Principal, Depends(require(Scope.COMPLETIONS))],
) -> Any:
    """OpenAI's chat completions: the messages go to the model, whose runtime applies its chat
    template; ``n`` choices. Quotas and errors as for ``/v1/completions``."""
    n = body.choices_per_prompt()
    messages = [m.forwarded() for m in body.messages]
    target, payloads = await _prepare(request, who, body, [{"messages": messages}])
    answers, usage = await _generate(request, who, target.model, payloads, n)
    response.headers.update(_answer_headers(answers[0].model_version, _cache([a.cache for a in answers])))
    return ChatCompletionResponse(
        id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
        object="chat.completion",
        created=int(time.time()),
        model=answers[0].model_version,
        choices=[
            ChatChoice(
                index=i, message=AssistantMessage(role="assistant", content=a.text), finish_reason=a.finish_reason
            )
            for i, a in enumerate(answers)
        ],
        usage=usage,
        lmforge=answers[0].served,
    )
