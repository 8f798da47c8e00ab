"""The official ``openai`` client against the gateway in process (inference is ``fake_inference``):
it reads the gateway's answers, chunks and errors as OpenAI's, and raises the right classes.
The same against the whole stack is ``tests/e2e/test_openai_sdk.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import openai
import pytest
from openai import AsyncOpenAI

from lmforge.common.settings import KafkaSettings

from .apps import gateway_settings, new_key, running
from .fake_inference import CONTEXT_LENGTH, FakeInference, serving


@pytest.fixture
async def clients(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[dict[str, AsyncOpenAI]]:
    """Clients with a completions key, a key without that scope, a bad key and a spent budget."""
    async with serving(FakeInference()) as url:
        settings = gateway_settings(kafka_settings, f"sqlite+aiosqlite:///{tmp_path}/gateway.db", inference_url=url)
        async with running(settings) as (app, admin):
            keys = {
                "ok": (await new_key(admin, ["completions"]))["key"],
                "no scope": (await new_key(admin, ["models:read"]))["key"],
                "bad": "lmf_0123456789ab_not-a-real-secret",
                "poor": (await new_key(admin, ["completions"], completion_tokens_per_day=3))["key"],
            }
            transport = httpx2.ASGITransport(app=app)
            made = {
                name: AsyncOpenAI(
                    api_key=key,
                    base_url="http://gateway/v1",
                    http_client=httpx2.AsyncClient(transport=transport, base_url="http://gateway/v1"),
                    max_retries=0,
                )
                for name, key in keys.items()
            }
            try:
                yield made
            finally:
                for client in made.values():
                    await client.close()


async def test_models_and_completions_through_the_sdk(clients: dict[str, AsyncOpenAI]) -> None:
    client = clients["ok"]
    ids = [m.id async for m in client.models.list()]
    assert "support@v3" in ids and "support" in ids
    model = await client.models.retrieve("support@v3")
    assert model.id == "support@v3" and model.owned_by == "lmforge"

    completion = await client.completions.create(model="support", prompt="hello", max_tokens=3, n=2, seed=1)
    assert completion.model == "support@v3" and [c.index for c in completion.choices] == [0, 1]
    assert completion.choices[0].text == " t1 t2 t3" and completion.usage is not None
    assert completion.usage.completion_tokens == 6

    raw = await client.chat.completions.with_raw_response.create(
        model="support@canary", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=2
    )
    assert raw.headers["x-lmforge-model-version"] == "support@v4"
    chat = raw.parse()
    assert chat.model == "support@v4" and chat.choices[0].message.content == " t0 t1"
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].finish_reason == "length"


async def test_streams_through_the_sdk(clients: dict[str, AsyncOpenAI]) -> None:
    client = clients["ok"]
    stream = await client.chat.completions.create(
        model="support",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 1 and "".join(content) == " t0 t1 t2 t3"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.model for c in chunks} == {"support@v3"}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4

    stream = await client.completions.create(
        model="support", prompt="hi", max_tokens=3, stream=True, stream_options={"include_usage": True}
    )
    text_chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in text_chunks if c.choices) == " t0 t1 t2"
    assert text_chunks[-1].usage is not None and text_chunks[-1].usage.total_tokens == 1 + 3

    # A failure after the stream began reaches the client as an error, not as a short answer.
    stream = await client.completions.create(model="support", prompt="fail-midway", max_tokens=5, stream=True)
    with pytest.raises(openai.APIError, match="model crashed"):
        async for _ in stream:
            pass


async def test_errors_are_the_sdks_classes(clients: dict[str, AsyncOpenAI]) -> None:
    client = clients["ok"]
    with pytest.raises(openai.NotFoundError) as not_found:
        await client.models.retrieve("support@v9")
    assert not_found.value.code == "model_not_found" and not_found.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="no-such-model", prompt="hi")
    with pytest.raises(openai.BadRequestError) as overflow:
        await client.completions.create(model="support", prompt=" ".join(["w"] * 60), max_tokens=10)
    assert overflow.value.code == "context_length_exceeded" and str(CONTEXT_LENGTH) in overflow.value.message
    with pytest.raises(openai.BadRequestError) as unsupported:
        await client.chat.completions.create(
            model="support",
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert unsupported.value.param == "tools" and unsupported.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as invalid:
        await client.completions.create(model="support", prompt="hi", max_tokens=100_000)
    assert invalid.value.param == "max_tokens"
    with pytest.raises(openai.AuthenticationError):
        await clients["bad"].models.list()
    with pytest.raises(openai.PermissionDeniedError):
        await clients["no scope"].models.list()
    with pytest.raises(openai.RateLimitError) as spent:
        await clients["poor"].completions.create(model="support", prompt="hi", max_tokens=4)
    assert spent.value.code == "token_quota_exceeded" and spent.value.type == "rate_limit_error"
