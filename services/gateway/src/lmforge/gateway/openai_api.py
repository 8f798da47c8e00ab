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
  tokens used, for streams too (where a stream is cut before its end, with the deltas it sent).
- Every answer names the version that produced it: ``model`` is ``name@v<n>`` (in every chunk of
  a stream) and the ``X-Lmforge-Model-Version`` header, sent before the first chunk.
  ``X-Lmforge-Cache`` passes through (``partial`` when the choices of one request disagree).
- ``stream: true``: server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``; a
  failure after the stream began is a last ``data: {"error": {...}}`` event.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import anyio
import httpx
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.common.http import (
    CallerPrincipal,
    error_body,
    error_responses,
    public_text,
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
_STREAMED = {
    200: {
        "description": "The completion; with `stream: true`, server-sent events (`data: <chunk>` ..., `data: [DONE]`).",
        "headers": _VERSION_HEADERS,
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


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


# --- streams ---------------------------------------------------------------------------------

_END: dict[str, Any] = {}  # a stream's end (identity-compared)
_CUT = {"code": "upstream_error", "message": "the answer was cut short by a platform failure"}


class Fanout:
    """The choices of one request, streamed from inference at once and read into one queue.

    ``open`` returns once every stream has answered its headers (or raises the first failure:
    a 4xx as ``PassThrough``, anything else as the gateway's error); each stream is read as soon
    as it opened, so none waits on another. ``events`` yields ``(choice index, line)``.
    """

    def __init__(
        self, down: Downstream, principal: CallerPrincipal, payloads: list[dict[str, Any]], timeout: float
    ) -> None:
        self.down, self.principal, self.payloads, self.timeout = down, principal, payloads, timeout
        self.queue: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
        self.opened: list[asyncio.Future[httpx.Headers]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.finished = [False] * len(payloads)
        self.deltas = [0] * len(payloads)
        self.usage: list[Usage | None] = [None] * len(payloads)

    async def open(self) -> list[httpx.Headers]:
        loop = asyncio.get_running_loop()
        self.opened = [loop.create_future() for _ in self.payloads]
        self.tasks = [asyncio.create_task(self._pump(i, p)) for i, p in enumerate(self.payloads)]
        try:
            pending: set[asyncio.Future[httpx.Headers]] = set(self.opened)
            while pending:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                failed = [f for f in self.opened if f.done() and not f.cancelled() and f.exception()]
                if failed:
                    raise failed[0].exception()  # type: ignore[misc]
        except BaseException:
            await self.aclose()
            raise
        return [f.result() for f in self.opened]

    async def _pump(self, i: int, payload: dict[str, Any]) -> None:
        try:
            async with self.down.stream(
                "inference", "POST", url_path("generate"), principal=self.principal, json=payload, timeout=self.timeout
            ) as resp:
                self.opened[i].set_result(resp.headers)
                async for line in resp.aiter_lines():
                    if line.strip():
                        await self.queue.put((i, _line(line)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a stream's failure is told to the client, never raised here
            if not self.opened[i].done():
                self.opened[i].set_exception(exc)
                return
            log.warning("a completion stream failed", error=type(exc).__name__)
            await self.queue.put((i, {"error": _CUT}))
        await self.queue.put((i, _END))

    async def events(self) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """Lines as they come, from every stream; a stream that ends without its last line is an error."""
        running = len(self.tasks)
        while running:
            i, line = await self.queue.get()
            if line is _END:
                running -= 1
                if not self.finished[i]:
                    yield i, {"error": _CUT}
                continue
            if "error" not in line:
                if line.get("text"):
                    self.deltas[i] += 1
                if line.get("finish_reason"):
                    self.finished[i] = True
                    try:
                        self.usage[i] = Usage.model_validate(line.get("usage"))
                    except ValueError:
                        self.usage[i] = None
            yield i, line

    def tokens_spent(self) -> int:
        """Completion tokens used: as reported where a stream finished, else one per delta sent."""
        return sum(u.completion_tokens if u is not None else d for u, d in zip(self.usage, self.deltas, strict=True))

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for future in self.opened:
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a failure told once is not logged again
            else:
                future.cancel()


def _line(text: str) -> dict[str, Any]:
    try:
        line = json.loads(text)
    except ValueError:
        line = None
    if not isinstance(line, dict):
        return {"error": {"code": "upstream_error", "message": "a platform service gave an unreadable answer"}}
    return line


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _stream_error(line: dict[str, Any]) -> dict[str, Any]:
    """Inference's error line as the client's last event: its code, its message made public."""
    given = line.get("error")
    error: dict[str, Any] = given if isinstance(given, dict) else {}
    code = error.get("code")
    code = code if isinstance(code, str) and code.isidentifier() else "upstream_error"
    message = public_text(str(error.get("message") or "the answer failed")) or "the answer failed"
    return error_body(code, message, status=502)


@dataclass
class StreamShape:
    """How a stream's chunks look: chat (``delta``) or text completion (``text``)."""

    chat: bool
    id: str
    created: int
    model: str
    include_usage: bool

    def chunk(self, index: int, text: str | None, finish_reason: str | None, role: bool = False) -> dict[str, Any]:
        choice: dict[str, Any]
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            base = {"object": "chat.completion.chunk", "system_fingerprint": None}
        else:
            choice = {"text": text or "", "index": index, "logprobs": None, "finish_reason": finish_reason}
            base = {"object": "text_completion"}
        chunk = {"id": self.id, **base, "created": self.created, "model": self.model, "choices": [choice]}
        return chunk | ({"usage": None} if self.include_usage else {})

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        base = (
            {"object": "chat.completion.chunk", "system_fingerprint": None}
            if self.chat
            else {"object": "text_completion"}
        )
        return {
            "id": self.id,
            **base,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.model_dump(),
        }


async def _events(
    fan: Fanout, shape: StreamShape, n: int, charge: Callable[[int], Coroutine[Any, Any, None]]
) -> AsyncIterator[bytes]:
    try:
        if shape.chat:
            for index in range(len(fan.payloads)):
                yield _sse(shape.chunk(index, None, None, role=True))
        async for index, line in fan.events():
            if "error" in line:
                yield _sse(_stream_error(line))
                return
            if line.get("text"):
                yield _sse(shape.chunk(index, str(line["text"]), None))
            if line.get("finish_reason"):
                yield _sse(shape.chunk(index, None, _finish(line["finish_reason"])))
        if shape.include_usage:
            usage = [u or Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0) for u in fan.usage]
            yield _sse(
                shape.usage_chunk(
                    _usage(
                        [usage[i].prompt_tokens for i in range(0, len(usage), n)],
                        sum(u.completion_tokens for u in usage),
                    )
                )
            )
        yield b"data: [DONE]\n\n"
    finally:
        # Also when the client went away: the streams behind it stop, and what was spent is charged.
        with anyio.CancelScope(shield=True):
            await fan.aclose()
            await charge(fan.tokens_spent())


async def _stream(
    request: Request,
    who: Principal,
    model: str,
    payloads: list[dict[str, Any]],
    n: int,
    *,
    chat: bool,
    include_usage: bool,
) -> StreamingResponse:
    down, quotas = _downstream(request), _quotas(request)
    fan = Fanout(down, who.forwarded(), payloads, down.settings.completion_timeout_s)
    headers = await fan.open()
    model_version = headers[0].get(MODEL_VERSION_HEADER) or model

    async def charge(tokens: int) -> None:
        try:
            await quotas.count_completion(who, model, tokens)
        except HTTPException:
            log.error("the tokens of a stream could not be counted", tokens=tokens)

    shape = StreamShape(
        chat=chat,
        id=f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        created=int(time.time()),
        model=model_version,
        include_usage=include_usage,
    )
    return StreamingResponse(
        _events(fan, shape, n, charge),
        media_type="text/event-stream",
        headers=_answer_headers(model_version, _cache([h.get(CACHE_HEADER) for h in headers]))
        | {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _prepare(
    request: Request, who: Principal, body: SamplingRequest, inputs: list[dict[str, Any]]
) -> tuple[Target, list[dict[str, Any]]]:
    target = Target.parse(body.model)
    payloads = _payloads(body, target, body.user or who.key_id, inputs, bool(body.stream))
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
    """OpenAI's completions: one prompt or several, ``n`` choices each, whole or streamed.

    ``429`` (``token_quota_exceeded``) when the answer could take more completion tokens than this
    key has left today for this model (``max_tokens`` x prompts x ``n``); the tokens used are
    counted against that budget. ``400`` (``context_length_exceeded``) when a prompt and
    ``max_tokens`` do not fit the model's context.
    """
    n = body.choices_per_prompt()
    target, payloads = await _prepare(request, who, body, [{"prompt": p} for p in body.prompts()])
    if body.stream:
        return await _stream(request, who, target.model, payloads, n, chat=False, include_usage=body.include_usage())
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
    template; ``n`` choices, whole or streamed. Quotas and errors as for ``/v1/completions``."""
    n = body.choices_per_prompt()
    messages = [m.forwarded() for m in body.messages]
    target, payloads = await _prepare(request, who, body, [{"messages": messages}])
    if body.stream:
        return await _stream(request, who, target.model, payloads, n, chat=True, include_usage=body.include_usage())
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
