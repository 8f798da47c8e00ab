"""A stand-in for the parts of vLLM that triton_vllm_model.py uses, for machines without a GPU or
vllm: ``AsyncEngineArgs``, ``SamplingParams`` (checked as vLLM checks the fields used), and
``AsyncLLMEngine.from_engine_args`` giving an engine whose ``generate(prompt, sampling_params,
request_id)`` is an async generator of RequestOutput-like objects, one per token, with vLLM's
cumulative text, its stop handling (end token ids counted but not decoded; stop strings cut, the
first of the list that appears), ``finish_reason`` ``stop``/``length``/``abort``, and ``abort``.

It does not run a model: every request is answered with ``reply`` (its tokens, then the EOS
token when ``reply_eos``, else the reply again and again), whatever the prompt. Self-contained
(standard library; transformers for the tokenizer), so that a test can also put it on a Triton
stub's path as the ``vllm`` package.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__version__ = "0.0-fake"
# Seconds per token of every new engine (a test may change it, or append a new value to a copy).
STEP_S = 0.0


class AsyncEngineArgs:
    def __init__(
        self,
        model: str,
        tokenizer: str | None = None,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        **extra: Any,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer or model
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.extra = extra


class SamplingParams:
    def __init__(
        self,
        n: int = 1,
        max_tokens: int | None = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        stop_token_ids: list[int] | None = None,
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
    ) -> None:
        stop = list(stop or [])
        stop_token_ids = list(stop_token_ids or [])
        if n != 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {n}.")
        if temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {temperature}.")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
        if any(not s for s in stop):
            raise ValueError("stop cannot contain an empty string.")
        if not all(isinstance(t, int) for t in stop_token_ids):
            raise ValueError(f"stop_token_ids must contain only integers, got {stop_token_ids}.")
        self.n = n
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.stop = stop
        self.stop_token_ids = stop_token_ids
        self.include_stop_str_in_output = include_stop_str_in_output
        self.skip_special_tokens = skip_special_tokens

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool


@dataclass
class ModelConfig:
    max_model_len: int


@dataclass
class Call:
    """One ``generate`` call as the engine saw it."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    in_flight: int  # requests in the engine when it arrived, itself included
    outputs: int = 0
    aborted: bool = False
    closed: bool = False


class AsyncLLMEngine:
    instances: list[AsyncLLMEngine] = []

    def __init__(self, args: AsyncEngineArgs) -> None:
        from transformers import AutoTokenizer

        self.args = args
        self.tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        config = json.loads((Path(args.model) / "config.json").read_text())
        own = int(config.get("n_positions") or config.get("max_position_embeddings") or 2048)
        self.model_config = ModelConfig(int(args.max_model_len or own))
        self.reply = " it ships today. glad to help!"
        self.reply_eos = True
        self.step_s = STEP_S
        self.fail_after: int | None = None  # raise after this many outputs
        self.calls: dict[str, Call] = {}
        self.in_flight = 0
        self.shut_down = False

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs) -> AsyncLLMEngine:
        engine = cls(engine_args)
        cls.instances.append(engine)
        return engine

    def reply_ids(self) -> Iterator[int]:
        ids = [int(i) for i in self.tokenizer(self.reply, add_special_tokens=False)["input_ids"]]
        if self.reply_eos:
            return iter([*ids, int(self.tokenizer.eos_token_id)])
        return itertools.cycle(ids)

    async def generate(
        self, prompt: dict[str, Any], sampling_params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        ids = list(prompt["prompt_token_ids"])
        if len(ids) > self.model_config.max_model_len:
            raise ValueError(f"prompt of {len(ids)} tokens is longer than max_model_len")
        self.in_flight += 1
        call = Call(request_id, ids, sampling_params, self.in_flight)
        self.calls[request_id] = call
        params = sampling_params
        new: list[int] = []
        checked = 0
        try:
            for token in self.reply_ids():
                await asyncio.sleep(self.step_s)
                if call.aborted:
                    yield RequestOutput(request_id, ids, [CompletionOutput(0, "", new, "abort")], True)
                    return
                if self.fail_after is not None and call.outputs >= self.fail_after:
                    raise RuntimeError("device lost")
                new.append(token)
                ended = token in params.stop_token_ids or token == self.tokenizer.eos_token_id
                text = self.tokenizer.decode(new[:-1] if ended else new, skip_special_tokens=True)
                reason = "stop" if ended else None
                for s in params.stop:  # vLLM's order: the first stop string of the list found
                    at = text.find(s, max(0, checked - len(s) + 1))
                    if at >= 0:
                        text, reason = text[:at], "stop"
                        break
                checked = len(text)
                if reason is None and params.max_tokens is not None and len(new) >= params.max_tokens:
                    reason = "length"
                if reason is None and len(ids) + len(new) >= self.model_config.max_model_len:
                    reason = "length"
                call.outputs += 1
                yield RequestOutput(request_id, ids, [CompletionOutput(0, text, list(new), reason)], reason is not None)
                if reason is not None:
                    return
        finally:
            call.closed = True
            self.in_flight -= 1

    async def abort(self, request_id: str) -> None:
        if request_id in self.calls:
            self.calls[request_id].aborted = True

    def shutdown(self) -> None:
        self.shut_down = True
