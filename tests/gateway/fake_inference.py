"""A stand-in for the inference service's internal API (docs/serving.md), on a real port.

It speaks the contract the gateway relies on: ``POST /generate`` (whole or NDJSON stream, the
version and cache headers, the error codes) and ``GET /served-models``; it checks the internal
credential like every service (``create_app``), and records what it was asked and how many
requests it had in flight at once. Its "model" writes one word per token: ``t0 t1 t2 ...``
(shifted by the seed), and counts one prompt token per word (per message word plus 3 per message).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lmforge.common.http import create_app
from lmforge.devstack.servers import free_port

from ..helpers import INTERNAL_AUTH

MODEL = "support"
ALIASES = {"production": 3, "canary": 4}
CONTEXT_LENGTH = 64
CREATED = 1_760_000_000


@dataclass
class FakeInference:
    delay_s: float = 0.02  # per token: concurrent requests overlap
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    cancelled: int = 0
    app: FastAPI = field(init=False)

    def __post_init__(self) -> None:
        self.app = create_app("fake-inference", internal=INTERNAL_AUTH)
        self.app.add_api_route("/generate", self.generate, methods=["POST"])
        self.app.add_api_route("/served-models", self.served_models, methods=["GET"])

    async def served_models(self) -> list[dict[str, Any]]:
        entries = []
        for alias, version in ALIASES.items():
            ids = [f"{MODEL}@{alias}"] + ([MODEL] if alias == "production" else [])
            for served_id in ids:
                entries.append(
                    {
                        "id": served_id,
                        "model": MODEL,
                        "alias": alias,
                        "version": version,
                        "triton_model": f"{MODEL}-v{version}",
                        "context_length": CONTEXT_LENGTH,
                        "created": CREATED + version,
                    }
                )
        for version in sorted(set(ALIASES.values())):
            entries.append(
                {
                    "id": f"{MODEL}@v{version}",
                    "model": MODEL,
                    "alias": None,
                    "version": version,
                    "triton_model": f"{MODEL}-v{version}",
                    "context_length": CONTEXT_LENGTH,
                    "created": CREATED + version,
                }
            )
        return entries

    async def generate(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body | {"principal": request.headers.get("x-lmforge-principal")})
        if body["model"] != MODEL or (body["version"] is None and body["alias"] not in ALIASES):
            raise HTTPException(404, {"code": "model_not_found", "message": f"no model {body['model']}"})
        version = body["version"] if body["version"] is not None else ALIASES[body["alias"]]
        if version not in ALIASES.values():
            raise HTTPException(404, {"code": "model_not_found", "message": f"no version {version}"})
        if (body["prompt"] is None) == (body["messages"] is None):
            raise HTTPException(400, {"code": "invalid_request", "message": "exactly one of prompt and messages"})
        if body["prompt"] is not None:
            prompt_tokens = len(body["prompt"].split())
        else:
            prompt_tokens = sum(len(m["content"].split()) + 3 for m in body["messages"])
        if prompt_tokens + body["max_tokens"] > CONTEXT_LENGTH:
            raise HTTPException(
                400,
                {
                    "code": "context_length_exceeded",
                    "message": f"this model's maximum context length is {CONTEXT_LENGTH} tokens; the request "
                    f"has {prompt_tokens} prompt tokens and asks for {body['max_tokens']} new tokens",
                },
            )
        words, finish = self._words(body)
        served = {
            "model": MODEL,
            "alias": None if body["version"] is not None else body["alias"],
            "version": version,
            "triton_model": f"{MODEL}-v{version}",
        }
        headers = {
            "X-Lmforge-Model-Version": f"{MODEL}@v{version}",
            "X-Lmforge-Cache": "hit" if "cached" in (body["prompt"] or "") else "miss",
        }
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        if body["stream"]:
            return StreamingResponse(
                self._stream(body, words, finish, usage, served),
                media_type="application/x-ndjson",
                headers=headers,
            )
        await self._work(len(words))
        out = {"text": "".join(words), "finish_reason": finish, **served, "usage": usage, "cached": False}
        return JSONResponse(out, headers=headers)

    def _words(self, body: dict[str, Any]) -> tuple[list[str], str]:
        """The deltas (one per token) and the finish reason; the text ends before the first stop."""
        offset = body["seed"] or 0
        words = [f" t{i + offset}" for i in range(body["max_tokens"])]
        full = "".join(words)
        cuts = [full.index(stop) for stop in body["stop"] if stop in full]
        if not cuts:
            return words, "length"
        kept, size = [], 0
        for word in words:
            if size + len(word) >= min(cuts):
                kept.append(word[: min(cuts) - size])
                break
            kept.append(word)
            size += len(word)
        return [w for w in kept if w], "stop"

    async def _work(self, tokens: int) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s * max(tokens, 1))
        finally:
            self.in_flight -= 1

    async def _stream(
        self,
        body: dict[str, Any],
        words: list[str],
        finish: str,
        usage: dict[str, int],
        served: dict[str, Any],
    ) -> AsyncIterator[bytes]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for i, word in enumerate(words):
                await asyncio.sleep(self.delay_s)
                if "fail-midway" in (body.get("prompt") or "") and i == 2:
                    error = {"code": "triton_error", "message": "model crashed at /var/lib/triton/support-v3"}
                    yield json.dumps({"error": error}).encode() + b"\n"
                    return
                yield json.dumps({"text": word}).encode() + b"\n"
            yield json.dumps({"finish_reason": finish, "usage": usage, **served}).encode() + b"\n"
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1


@asynccontextmanager
async def serving(fake: FakeInference) -> AsyncIterator[str]:
    """``fake`` under uvicorn on a free port; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started, "the fake inference did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
