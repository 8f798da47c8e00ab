"""The OpenAI-compatible routes over a stand-in for inference (``fake_inference``): the gateway
in process on the real broker and a database, inference's internal API on a real port.

What is checked: the request each choice becomes, ``n`` fanned out at once, choice indexes and
usage, the version in ``model`` and in the headers, server-sent events in OpenAI's chunk format,
400 for what fails validation or is not supported, errors passed through in OpenAI's shape, and
token quotas charged with what was used, streams included. The real inference and Triton are in
``tests/e2e/test_openai_sdk.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from lmforge.common.settings import KafkaSettings
from lmforge.gateway.auth import Principal
from lmforge.gateway.openai_api import Fanout, StreamShape, Target, _events, _payloads
from lmforge.gateway.schemas import CompletionRequest

from .apps import bearer, gateway_settings, new_key, running
from .fake_inference import CONTEXT_LENGTH, CREATED, FakeInference, serving


@pytest.fixture
def fake() -> FakeInference:
    return FakeInference()


@pytest.fixture
async def started(
    fake: FakeInference, kafka_settings: KafkaSettings, tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, dict[str, Any]]]:
    async with serving(fake) as url:
        settings = gateway_settings(kafka_settings, f"sqlite+aiosqlite:///{tmp_path}/gateway.db", inference_url=url)
        async with running(settings) as (app, client):
            key = await new_key(client, ["completions"], completion_tokens_per_day=1000)
            client.headers.update(bearer(key["key"]))
            yield app, client, key


@pytest.fixture
async def gateway(started: tuple[FastAPI, httpx.AsyncClient, dict[str, Any]]) -> httpx.AsyncClient:
    return started[1]


def sse(text: str) -> list[Any]:
    """The events of a server-sent event stream: each ``data:`` payload, parsed ("[DONE]" as is)."""
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: ") and "\n" not in block, block
            data = block.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


# --- /v1/models ----------------------------------------------------------------------------


async def test_models_lists_every_served_id_in_openai_shape(gateway: httpx.AsyncClient) -> None:
    r = await gateway.get("/v1/models")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert sorted(ids) == sorted(["support", "support@production", "support@canary", "support@v3", "support@v4"])
    for m in body["data"]:
        assert set(m) == {"id", "object", "created", "owned_by"}
        assert m["object"] == "model" and m["owned_by"] == "lmforge" and m["created"] > CREATED
    assert "triton" not in r.text and "context_length" not in r.text

    for model_id in ("support@v3", "support%40v3", "support", "support@canary"):
        r = await gateway.get(f"/v1/models/{model_id}")
        assert r.status_code == 200, (model_id, r.text)
        assert r.json()["id"] == model_id.replace("%40", "@") and r.json()["object"] == "model"


async def test_an_unknown_model_is_404_in_openai_shape(gateway: httpx.AsyncClient) -> None:
    r = await gateway.get("/v1/models/support@v9")
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "model_not_found"
    assert error["param"] == "model" and "support@v9" in error["message"]
    r = await gateway.get("/v1/models/Not A Model")
    assert r.status_code == 400 and r.json()["error"]["param"] == "path.model"
    for body in (
        {"model": "nope", "prompt": "hi"},
        {"model": "support@v9", "prompt": "hi"},
        {"model": "support@v99999999999999", "prompt": "hi"},
        {"model": "support@nightly", "prompt": "hi"},
    ):
        r = await gateway.post("/v1/completions", json=body)
        assert r.status_code == 404, (body, r.text)
        assert r.json()["error"]["code"] == "model_not_found" and r.json()["error"]["param"] == "model"
        assert r.json()["error"]["type"] == "invalid_request_error"


# --- whole answers ---------------------------------------------------------------------------


async def test_a_completion_names_its_version_and_forwards_the_request(
    gateway: httpx.AsyncClient, fake: FakeInference, started: tuple[FastAPI, httpx.AsyncClient, dict[str, Any]]
) -> None:
    r = await gateway.post("/v1/completions", json={"model": "support", "prompt": "hello there", "max_tokens": 5})
    assert r.status_code == 200, r.text
    assert r.headers["x-lmforge-model-version"] == "support@v3" and r.headers["x-lmforge-cache"] == "miss"
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == "support@v3"
    assert body["choices"] == [{"text": " t0 t1 t2 t3 t4", "index": 0, "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    assert body["lmforge"] == {"model": "support", "alias": "production", "version": 3, "triton_model": "support-v3"}
    sent = fake.requests[-1]
    key_id = started[2]["key_id"]
    assert json.loads(sent.pop("principal"))["key_id"] == key_id
    assert sent == {
        "model": "support",
        "alias": "production",
        "version": None,
        "prompt": "hello there",
        "messages": None,
        "max_tokens": 5,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": None,
        "stop": [],
        "stream": False,
        "caller": key_id,
    }

    r = await gateway.post("/v1/completions", json={"model": "support@canary", "prompt": "cached one"})
    assert r.json()["model"] == "support@v4" and r.headers["x-lmforge-cache"] == "hit"
    assert r.json()["usage"]["completion_tokens"] == 16  # the default max_tokens
    r = await gateway.post("/v1/completions", json={"model": "support@v3", "prompt": "x", "max_tokens": 1})
    assert r.json()["model"] == "support@v3" and r.json()["lmforge"]["alias"] is None
    assert (fake.requests[-1]["alias"], fake.requests[-1]["version"]) == (None, 3)


async def test_n_choices_per_prompt_go_out_at_once_and_are_indexed(
    gateway: httpx.AsyncClient, fake: FakeInference
) -> None:
    body = {
        "model": "support",
        "prompt": ["one two", "three"],
        "n": 3,
        "max_tokens": 4,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 10,
        "user": "alice",
    }
    r = await gateway.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == list(range(6))
    # Choice j of each prompt samples with seed + j: n distinct samples, repeatable.
    assert [c["text"].split()[0] for c in choices] == ["t10", "t11", "t12"] * 2
    assert fake.max_in_flight == 6, "the choices were not sent at once"
    sent = fake.requests[-6:]
    assert [s["prompt"] for s in sent].count("one two") == 3 and [s["prompt"] for s in sent].count("three") == 3
    assert {(s["temperature"], s["top_p"], s["caller"]) for s in sent} == {(0.7, 0.9, "alice")}
    # Prompt tokens once per prompt, completion tokens of every choice.
    assert r.json()["usage"] == {"prompt_tokens": 3, "completion_tokens": 24, "total_tokens": 27}


async def test_chat_forwards_messages_for_the_runtimes_template(
    gateway: httpx.AsyncClient, fake: FakeInference
) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Where is"}, {"type": "text", "text": "my parcel?"}]},
        {"role": "assistant", "content": "Which order?"},
        {"role": "user", "content": "A-1"},
    ]
    r = await gateway.post(
        "/v1/chat/completions",
        json={"model": "support@canary", "messages": messages, "max_completion_tokens": 3, "max_tokens": 9, "n": 2},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "support@v4" and r.headers["x-lmforge-model-version"] == "support@v4"
    assert body["choices"] == [
        {
            "index": i,
            "message": {"role": "assistant", "content": " t0 t1 t2"},
            "logprobs": None,
            "finish_reason": "length",
        }
        for i in range(2)
    ]
    sent = fake.requests[-1]
    assert sent["prompt"] is None and sent["max_tokens"] == 3  # max_completion_tokens wins
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is\nmy parcel?"},
        {"role": "assistant", "content": "Which order?"},
        {"role": "user", "content": "A-1"},
    ]
    # Prompt tokens of the one conversation, counted once for both choices.
    assert body["usage"]["prompt_tokens"] == (2 + 3) + (4 + 3) + (2 + 3) + (1 + 3)
    assert body["usage"]["completion_tokens"] == 6


async def test_stop_sequences_end_the_text(gateway: httpx.AsyncClient, fake: FakeInference) -> None:
    r = await gateway.post("/v1/completions", json={"model": "support", "prompt": "x", "max_tokens": 8, "stop": " t3"})
    assert r.json()["choices"][0] == {"text": " t0 t1 t2", "index": 0, "logprobs": None, "finish_reason": "stop"}
    assert fake.requests[-1]["stop"] == [" t3"]
    stops = ["t9", " t5", "zz", "t4"]
    r = await gateway.post(
        "/v1/chat/completions",
        json={"model": "support", "messages": [{"role": "user", "content": "x"}], "max_tokens": 8, "stop": stops},
    )
    assert r.json()["choices"][0]["message"]["content"] == " t0 t1 t2 t3 " and fake.requests[-1]["stop"] == stops


# --- what lmforge refuses --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": 2}, "logprobs"),
        ({"echo": True}, "echo"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "end"}, "suffix"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"stream_everything": True}, "stream_everything"),
        ({"tools": [{"type": "function"}]}, "tools"),  # a chat field: unknown here
    ],
)
async def test_unsupported_completion_fields_are_400_naming_them(
    gateway: httpx.AsyncClient, fake: FakeInference, extra: dict[str, Any], param: str
) -> None:
    r = await gateway.post("/v1/completions", json={"model": "support", "prompt": "hi"} | extra)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["code"] == "unsupported_parameter" and param in error["message"]
    assert not fake.requests


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"echo": True}, "echo"),  # a completions field: unknown here
    ],
)
async def test_unsupported_chat_fields_are_400_naming_them(
    gateway: httpx.AsyncClient, fake: FakeInference, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "support", "messages": [{"role": "user", "content": "hi"}]}
    r = await gateway.post("/v1/chat/completions", json=body | extra)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and param in r.json()["error"]["message"]
    assert not fake.requests


async def test_neutral_values_of_unsupported_fields_are_accepted(gateway: httpx.AsyncClient) -> None:
    """What OpenAI clients send by default (null, 0, false, text) is not a request for the feature."""
    neutral = {"logprobs": None, "echo": False, "best_of": 1, "suffix": None, "logit_bias": {}, "presence_penalty": 0}
    r = await gateway.post("/v1/completions", json={"model": "support", "prompt": "hi", "max_tokens": 1} | neutral)
    assert r.status_code == 200, r.text
    neutral = {
        "logprobs": False,
        "tools": [],
        "response_format": {"type": "text"},
        "frequency_penalty": 0.0,
        "stream": False,
        "n": None,
        "temperature": None,
    }
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes", "refusal": None}]
    r = await gateway.post(
        "/v1/chat/completions", json={"model": "support", "messages": messages, "max_tokens": 1} | neutral
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": "m@Not An Alias", "prompt": "hi"}, "model"),
        ("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 10**30}, "max_tokens"),
        ("/v1/completions", {"model": "m", "prompt": []}, "prompt"),
        ("/v1/completions", {"model": "m", "prompt": ["p"] * 17}, "prompt"),
        ("/v1/completions", {"model": "m", "prompt": [1, 2, 3]}, "prompt"),
        ("/v1/completions", {"model": "m", "prompt": "hi", "n": 9}, "n"),
        ("/v1/completions", {"model": "m", "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("/v1/completions", {"model": "m", "prompt": "hi", "top_p": 0}, "top_p"),
        ("/v1/completions", {"model": "m", "prompt": "hi", "seed": -1}, "seed"),
        ("/v1/completions", {"model": "m"}, "prompt"),
        ("/v1/chat/completions", {"model": "m", "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0.content",
        ),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "x", "name": "bob"}]},
            "messages.0.name",
        ),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user"}]}, "messages.0.content"),
        ("/v1/chat/completions", {"model": "m", "messages": "hi"}, "messages"),
    ],
)
async def test_invalid_requests_are_400_not_422(
    gateway: httpx.AsyncClient, path: str, body: dict[str, Any], param: str
) -> None:
    r = await gateway.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] is not None
    assert error["param"].startswith(param) and error["message"].startswith(param), error


async def test_malformed_json_is_400(gateway: httpx.AsyncClient) -> None:
    r = await gateway.post(
        "/v1/chat/completions", content=b'{"model": "m", "messages": [', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


async def test_context_overflow_is_400_naming_the_limit(gateway: httpx.AsyncClient) -> None:
    long_prompt = " ".join(["word"] * 60)
    for stream in (False, True):
        r = await gateway.post(
            "/v1/completions", json={"model": "support", "prompt": long_prompt, "max_tokens": 10, "stream": stream}
        )
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
        assert str(CONTEXT_LENGTH) in error["message"] and error["param"] == "prompt"
    r = await gateway.post(
        "/v1/chat/completions",
        json={"model": "support", "messages": [{"role": "user", "content": long_prompt}], "max_tokens": 10},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert str(CONTEXT_LENGTH) in r.json()["error"]["message"]


# --- streams ---------------------------------------------------------------------------------


async def test_a_chat_stream_is_openai_chunks_ending_with_done(gateway: httpx.AsyncClient) -> None:
    body = {
        "model": "support",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "n": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with gateway.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-lmforge-model-version"] == "support@v3" and r.headers["x-lmforge-cache"] == "miss"
        events = sse((await r.aread()).decode())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {"support@v3"} and len({c["id"] for c in chunks}) == 1
    *choice_chunks, usage = chunks
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12}
    assert all(c["usage"] is None for c in choice_chunks)
    for index in (0, 1):
        mine = [c["choices"][0] for c in choice_chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}  # the first delta names the role
        content = [m["delta"]["content"] for m in mine[1:] if "content" in m["delta"]]
        assert len(content) > 1 and "".join(content) == " t0 t1 t2 t3"
        assert mine[-1]["finish_reason"] == "length" and mine[-1]["delta"] == {}
        assert all(m["finish_reason"] is None for m in mine[:-1])


async def test_a_completion_stream_is_text_completion_chunks(gateway: httpx.AsyncClient) -> None:
    body = {"model": "support@canary", "prompt": ["a", "b c"], "max_tokens": 3, "stream": True}
    r = await gateway.post("/v1/completions", json=body)
    assert r.status_code == 200 and r.headers["x-lmforge-model-version"] == "support@v4"
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" and c["model"] == "support@v4" for c in chunks)
    assert all("usage" not in c for c in chunks)  # not asked for
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert "".join(m["text"] for m in mine) == " t0 t1 t2" and len(mine) > 1
        assert mine[-1]["finish_reason"] == "length"


async def test_a_stream_that_fails_midway_ends_with_an_error_event(
    gateway: httpx.AsyncClient, started: tuple[FastAPI, httpx.AsyncClient, dict[str, Any]]
) -> None:
    app, _, key = started
    body = {"model": "support", "prompt": "fail-midway now", "max_tokens": 6, "stream": True}
    r = await gateway.post("/v1/completions", json=body)
    assert r.status_code == 200
    events = sse(r.text)
    assert "[DONE]" not in events
    assert [e["choices"][0]["text"] for e in events[:-1]] == [" t0", " t1"]
    error = events[-1]["error"]
    assert error["code"] == "triton_error" and error["type"] == "api_error"
    assert "/var/lib" not in error["message"] and "<internal>" in error["message"]
    # The two deltas sent were charged.
    assert await app.state.quotas.tokens_used(_principal(key), "support") == 2


def _principal(key: dict[str, Any], tokens_per_day: int = 1000) -> Principal:
    """The principal of a key made here: what the quota's counters are keyed by."""
    return Principal(
        key_id=key["key_id"], name="test", scopes=frozenset({"completions"}), completion_tokens_per_day=tokens_per_day
    )


# --- quotas ----------------------------------------------------------------------------------


async def test_the_token_quota_counts_n_and_what_streams_used(
    started: tuple[FastAPI, httpx.AsyncClient, dict[str, Any]], fake: FakeInference
) -> None:
    app, client, _ = started
    key = await new_key(client, ["completions"], completion_tokens_per_day=30)
    headers = bearer(key["key"])
    # 4 tokens x 2 prompts x 4 choices = 32 could be spent: more than the budget, refused up front.
    r = await client.post(
        "/v1/completions", json={"model": "support", "prompt": ["a", "b"], "n": 4, "max_tokens": 4}, headers=headers
    )
    assert r.status_code == 429 and r.json()["error"]["code"] == "token_quota_exceeded"
    assert r.json()["error"]["type"] == "rate_limit_error" and "32" in r.json()["error"]["message"]
    assert not fake.requests
    r = await client.post(
        "/v1/completions", json={"model": "support", "prompt": "a", "n": 2, "max_tokens": 4}, headers=headers
    )
    assert r.status_code == 200
    principal = _principal(key, 30)
    assert await app.state.quotas.tokens_used(principal, "support") == 8
    body = {"model": "support", "messages": [{"role": "user", "content": "a"}], "n": 3, "max_tokens": 4, "stream": True}
    r = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 200 and sse(r.text)[-1] == "[DONE]"
    assert await app.state.quotas.tokens_used(principal, "support") == 20
    # Quotas are per model and the alias or version does not matter: 20 of 30 spent on support.
    r = await client.post(
        "/v1/completions", json={"model": "support@v4", "prompt": "a", "n": 3, "max_tokens": 4}, headers=headers
    )
    assert r.status_code == 429


async def test_a_stream_left_by_its_client_stops_and_is_charged(fake: FakeInference) -> None:
    """What the route does when the client goes away: the generator is closed after one event;
    the streams to inference are closed and the deltas read so far are charged."""
    fake.delay_s = 0.05
    charged: list[int] = []

    async def charge(tokens: int) -> None:
        charged.append(tokens)

    async with serving(fake) as url:
        from lmforge.gateway.downstream import Downstream
        from lmforge.gateway.settings import GatewaySettings

        from ..helpers import INTERNAL_AUTH

        down = Downstream(GatewaySettings(inference_url=url, internal=INTERNAL_AUTH))
        try:
            body = CompletionRequest(model="support", prompt="a", max_tokens=40, n=2, stream=True)
            payloads = _payloads(body, Target.parse(body.model), "alice", [{"prompt": "a"}], stream=True)
            fan = Fanout(down, _principal({"key_id": "k"}).forwarded(), payloads, timeout=10)
            await fan.open()
            shape = StreamShape(chat=False, id="cmpl-1", created=0, model="support@v3", include_usage=False)
            events = _events(fan, shape, 2, charge)
            seen = [await anext(events) for _ in range(3)]
            assert all(e.startswith(b"data: ") for e in seen)
            await events.aclose()
        finally:
            await down.aclose()
    assert charged == [3], charged  # three deltas were read before the client left
    assert fake.in_flight == 0
