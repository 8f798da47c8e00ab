"""The official ``openai`` client against the real gateway, inference and Triton, as processes.

One stack (registry, inference and gateway, on Tansu and a CPU Triton) serves one small GPT-2
version, published as a finished training run would be (``lmforge.devstack.model_seed``): no
training here. Through the SDK, with an API key holding only the ``completions`` scope:
``models.list`` and ``models.retrieve``, ``completions.create`` and ``chat.completions.create``,
whole and streamed (more than one chunk, and the usage at the end), ``n`` choices batched in
Triton, a context overflow as ``BadRequestError`` naming the limit, an unknown model as
``NotFoundError``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import torch
from openai import OpenAI
from transformers import AutoTokenizer, GPT2LMHeadModel

from lmforge.devstack.model_seed import publish_model, save_small_gpt2
from lmforge.devstack.servers import make_workdir
from lmforge.devstack.stack import Stack
from lmforge.devstack.support_corpus import make_corpus

pytestmark = pytest.mark.slow

MODEL = "sdk-assistant"
CONTEXT = 128  # the model's n_positions: its context length


@dataclass
class Served:
    stack: Stack
    client: OpenAI  # a key with the completions scope only


def _whole_character_gpt2(target: Path) -> Path:
    """A small random GPT-2 whose every token decodes to whole characters: the output embeddings
    of byte tokens that are only part of a UTF-8 character are zeroed, so a streamed answer gets a
    delta per token instead of fragments the runtime holds back until they form a character."""
    save_small_gpt2(target, [r["text"] for r in make_corpus(60)], n_positions=CONTEXT)
    tokenizer = AutoTokenizer.from_pretrained(target)
    model = GPT2LMHeadModel.from_pretrained(target)
    fragments = [i for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i])]
    with torch.no_grad():
        model.transformer.wte.weight[fragments] = 0.0
    model.save_pretrained(target)
    return target


def _wait_served(client: OpenAI, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client.completions.create(model=MODEL, prompt="Customer: hi", max_tokens=1)
            return
        except (openai.NotFoundError, openai.InternalServerError, openai.APIConnectionError) as exc:
            last = exc  # not registered, promoted or loaded yet
            time.sleep(1)
    raise TimeoutError(f"{MODEL} was not served within {timeout:.0f}s: {last}")


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    workdir = make_workdir("lmforge-openai-sdk-")
    try:
        with Stack(workdir, only=("registry", "inference", "gateway")) as stack:
            with tempfile.TemporaryDirectory() as tmp:
                asyncio.run(publish_model(stack, MODEL, _whole_character_gpt2(Path(tmp) / "weights")))
            admin = {"Authorization": f"Bearer {stack.admin_key}"}
            r = httpx.post(
                f"{stack.gateway_url}/v1/api-keys",
                json={"name": "sdk", "scopes": ["completions"]},
                headers=admin,
                timeout=30,
            )
            assert r.status_code == 201, r.text
            with OpenAI(
                base_url=f"{stack.gateway_url}/v1", api_key=r.json()["key"], max_retries=0, timeout=120
            ) as client:
                _wait_served(client)
                yield Served(stack, client)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_models(served: Served) -> None:
    ids = {m.id for m in served.client.models.list()}
    assert {MODEL, f"{MODEL}@production", f"{MODEL}@v1"} <= ids
    for model_id in (MODEL, f"{MODEL}@production", f"{MODEL}@v1"):
        model = served.client.models.retrieve(model_id)
        assert model.id == model_id and model.object == "model" and model.owned_by == "lmforge"
        assert model.created > 0
    with pytest.raises(openai.NotFoundError):
        served.client.models.retrieve(f"{MODEL}@v99")


def test_completions_whole_and_streamed(served: Served) -> None:
    prompt = "Customer: my parcel never arrived. Agent:"
    stream = served.client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert len(texts) > 1, chunks
    assert {c.model for c in chunks} == {f"{MODEL}@v1"}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert 1 < chunks[-1].usage.completion_tokens <= 8 and chunks[-1].usage.prompt_tokens > 0
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0] in ("length", "stop")

    raw = served.client.completions.with_raw_response.create(model=MODEL, prompt=prompt, max_tokens=8)
    assert raw.headers["x-lmforge-model-version"] == f"{MODEL}@v1"
    assert raw.headers["x-lmforge-cache"] == "hit"  # greedy and asked before, by the stream
    whole = raw.parse()
    assert whole.model == f"{MODEL}@v1" and whole.choices[0].text == "".join(texts)
    assert whole.usage is not None and whole.usage.completion_tokens == chunks[-1].usage.completion_tokens


def test_chat_whole_and_streamed(served: Served) -> None:
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "system", "content": "You answer support tickets."},
        {"role": "user", "content": "Where is my invoice?"},
    ]
    stream = served.client.chat.completions.create(
        model=f"{MODEL}@production",
        messages=messages,
        max_completion_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 1, chunks
    assert {c.model for c in chunks} == {f"{MODEL}@v1"} and {c.object for c in chunks} == {"chat.completion.chunk"}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert 1 < chunks[-1].usage.completion_tokens <= 8

    chat = served.client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=8)
    assert chat.model == f"{MODEL}@v1" and chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content == "".join(content)


def test_n_choices_are_batched_in_triton(served: Served) -> None:
    completion = served.client.completions.create(
        model=f"{MODEL}@v1", prompt="Customer: I was charged twice. Agent:", max_tokens=6, n=8, temperature=0.9, seed=7
    )
    assert [c.index for c in completion.choices] == list(range(8))
    assert len({c.text for c in completion.choices}) > 1  # seed + index: different samples
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 8 * 6
    # Inference's histogram of the batch each generation ran in: the 8 went through Triton together.
    metrics = httpx.get(f"{served.stack.url('inference')}/metrics", timeout=30).text
    label = f'model="{MODEL}-v1"'
    count = _sample(metrics, f"lmforge_inference_batch_size_count{{{label}}}")
    alone = _sample(metrics, f'lmforge_inference_batch_size_bucket{{le="1.0",{label}}}')
    assert count - alone >= 2, (count, alone)


def _sample(metrics: str, series: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in /metrics")


def test_errors_are_the_sdks_classes(served: Served) -> None:
    long_prompt = " ".join(["parcel invoice refund"] * 120)
    with pytest.raises(openai.BadRequestError) as overflow:
        served.client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=8)
    assert overflow.value.code == "context_length_exceeded" and str(CONTEXT) in overflow.value.message
    with pytest.raises(openai.BadRequestError) as overflow:
        served.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": long_prompt}], max_tokens=8, stream=True
        )
    assert overflow.value.code == "context_length_exceeded" and str(CONTEXT) in overflow.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        served.client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        served.client.chat.completions.create(
            model=f"{MODEL}@v7", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    with pytest.raises(openai.BadRequestError) as unsupported:
        served.client.completions.create(model=MODEL, prompt="hi", max_tokens=2, logprobs=3)
    assert unsupported.value.param == "logprobs"
