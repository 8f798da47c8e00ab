"""The serving service's internal API on the real Triton (docs/serving.md): the inference app runs
under uvicorn on the real broker and a real database, and deploys tiny GPT-2 versions through
its own reconciler.

- ``POST /generate`` by alias (production when neither is given) and by version, plain and
  streamed (NDJSON deltas, then a last line with the usage), chat messages, the answer headers;
  404 for an unknown model, alias or version; 400 when the context would overflow, naming the limit.
- ``GET /served-models``: one entry per addressable id, with the context length from the
  weights' config and the unix time the version started serving.
- The response cache: a repeated greedy request is a hit (no Triton call), a sampled one never
  is, and a promotion never replays the previous version's answer.
- Generation metrics and Triton's statistics in ``/metrics``; one pooled gRPC client per service.
- A request that read its alias just before a promotion unloaded that version is answered by
  the new one; replicas share cached answers through Redis.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from prometheus_client import REGISTRY
from transformers import AutoTokenizer, GPT2LMHeadModel

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings
from lmforge.devstack.servers import RedisServer, TritonServer, free_port
from lmforge.inference import store
from lmforge.inference import triton as triton_module
from lmforge.inference.app import build_app
from lmforge.inference.reconciler import Reconciler
from lmforge.inference.settings import InferenceSettings
from lmforge.inference.triton import GenerationRequest, TritonModels

from ..helpers import INTERNAL_AUTH, INTERNAL_HEADERS, wait_until
from .test_reconcile import grpc_url, save_tiny_model

CONTEXT = 32  # the tiny model's n_positions


def save_model(store: ArtifactStore, key: str) -> str:
    """A tiny GPT-2 (random weights) whose greedy picks are whole characters: the output embeddings
    of byte tokens that decode to no character alone (UTF-8 fragments) are zeroed, so a streamed
    answer has a delta per token instead of fragments the runtime holds back."""
    with tempfile.TemporaryDirectory() as tmp:
        uri = save_tiny_model(store, f"{key}-raw")
        store.get_dir(store.key_of(uri), Path(tmp))
        tok = AutoTokenizer.from_pretrained(tmp)
        model = GPT2LMHeadModel.from_pretrained(tmp)
        fragments = [i for i in range(len(tok)) if "\ufffd" in tok.decode([i])]
        with torch.no_grad():
            model.transformer.wte.weight[fragments] = 0.0
        model.save_pretrained(tmp)
        return store.put_dir(Path(tmp), key)


@dataclass
class Inference:
    app: FastAPI
    client: httpx.AsyncClient
    store: ArtifactStore

    @property
    def reconciler(self) -> Reconciler:
        return self.app.state.reconciler  # type: ignore[no-any-return]

    @property
    def triton(self) -> TritonModels:
        return self.app.state.triton  # type: ignore[no-any-return]

    async def deploy(self, model: str, alias: str, version: int, uri: str) -> None:
        await self.reconciler.set_desired(model, alias, version, uri)
        await self.reconciler.reconcile()

    async def generate(self, **body: Any) -> httpx.Response:
        return await self.client.post("/generate", json=body)


def inference_settings(
    triton: TritonServer, kafka: KafkaSettings, tmp_path: Path, unique: str, **extra: Any
) -> InferenceSettings:
    values: dict[str, Any] = {
        # Only alias moves published from now on: other tests' events are not this app's business.
        "kafka": kafka.model_copy(update={"auto_offset_reset": "latest"}),
        "consumer_group": f"inference-{unique}",
        "database": DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/inference.db"),
        "artifacts": ArtifactSettings(url=str(tmp_path / "artifacts")),
        "triton_grpc_url": grpc_url(triton),
        "model_repository": str(triton.model_repository),
        "registry_url": f"http://127.0.0.1:{free_port()}",  # away: desired state comes from the tests
        "reconcile_interval_s": 3600,
        "internal": INTERNAL_AUTH,
    }
    return InferenceSettings(**values | extra)


@asynccontextmanager
async def running(settings: InferenceSettings) -> AsyncIterator[Inference]:
    """The inference app under uvicorn on a free port, and an HTTP client with the internal credential."""
    app = build_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "the inference app did not start"
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=INTERNAL_HEADERS, timeout=60
        ) as client:
            yield Inference(app, client, ArtifactStore(settings.artifacts.url))
    finally:
        server.should_exit = True
        await asyncio.gather(serving, return_exceptions=True)


@pytest.fixture
async def inference(
    triton: TritonServer, kafka_settings: KafkaSettings, tmp_path: Path, unique: str
) -> AsyncIterator[Inference]:
    async with running(inference_settings(triton, kafka_settings, tmp_path, unique)) as service:
        yield service


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line]


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_generate_by_alias_and_by_version(inference: Inference, unique: str) -> None:
    model = f"m{unique}"
    v1 = save_model(inference.store, "models/m/run-1")
    v2 = save_model(inference.store, "models/m/run-2")
    await inference.deploy(model, "production", 1, v1)
    await inference.deploy(model, "staging", 2, v2)

    r = await inference.generate(model=model, prompt="Customer: hello Agent:", max_tokens=4)
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["X-Lmforge-Model-Version"] == f"{model}@v1"
    assert r.headers["X-Lmforge-Cache"] == "miss"
    assert (body["model"], body["alias"], body["version"], body["triton_model"]) == (
        model,
        "production",
        1,
        f"{model}-v1",
    )
    assert body["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 1 <= usage["completion_tokens"] <= 4 and usage["prompt_tokens"] >= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["cached"] is False

    staging = await inference.generate(model=model, alias="staging", prompt="Customer: hello Agent:", max_tokens=4)
    assert staging.status_code == 200, staging.text
    assert (staging.json()["alias"], staging.json()["version"]) == ("staging", 2)
    assert staging.headers["X-Lmforge-Model-Version"] == f"{model}@v2"

    # A version answers from whichever alias serves it; version wins over alias.
    by_version = await inference.generate(model=model, version=2, alias="production", prompt="hello", max_tokens=2)
    assert by_version.status_code == 200, by_version.text
    assert (by_version.json()["alias"], by_version.json()["version"]) == (None, 2)
    assert by_version.headers["X-Lmforge-Model-Version"] == f"{model}@v2"

    chat = await inference.generate(
        model=model,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=2,
        temperature=0.8,
        top_p=0.9,
        seed=7,
        stop=["\n\n"],
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["usage"]["prompt_tokens"] > 1

    for missing in (
        {"model": model, "version": 3},
        {"model": model, "alias": "canary"},
        {"model": f"other{unique}"},
        {"model": f"other{unique}", "version": 1},
    ):
        r = await inference.generate(prompt="hello", **missing)
        assert r.status_code == 404, (missing, r.text)
        assert r.json()["error"]["code"] == "model_not_found"

    both = await inference.generate(model=model, prompt="hi", messages=[{"role": "user", "content": "hi"}])
    neither = await inference.generate(model=model)
    too_many_stops = await inference.generate(model=model, prompt="hi", stop=["a", "b", "c", "d", "e"])
    assert [x.status_code for x in (both, neither, too_many_stops)] == [422, 422, 422]


async def test_streaming_relays_deltas_then_the_usage(inference: Inference, unique: str) -> None:
    model = f"m{unique}"
    await inference.deploy(model, "production", 1, save_model(inference.store, "models/m/run-1"))
    request = {"model": model, "prompt": "Customer: hello Agent:", "max_tokens": 8, "stream": True}

    async with inference.client.stream("POST", "/generate", json=request) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        assert r.headers["X-Lmforge-Model-Version"] == f"{model}@v1"
        assert r.headers["X-Lmforge-Cache"] == "miss"
        lines = [json.loads(line) async for line in r.aiter_lines() if line]
    *deltas, last = lines
    assert len(deltas) > 1, lines
    assert all(set(d) == {"text"} for d in deltas)
    assert last["finish_reason"] in ("stop", "length")
    assert (last["model"], last["alias"], last["version"], last["triton_model"]) == (
        model,
        "production",
        1,
        f"{model}-v1",
    )
    assert last["usage"]["completion_tokens"] >= len(deltas)
    streamed = "".join(d["text"] for d in deltas)

    # The same greedy request unstreamed: the answer the stream stored, without Triton.
    plain = await inference.generate(**request | {"stream": False})
    assert plain.headers["X-Lmforge-Cache"] == "hit"
    assert plain.json()["text"] == streamed
    assert plain.json()["usage"] == last["usage"]
    # And streamed again: the cached answer replayed as one delta.
    replay = await inference.generate(**request)
    assert replay.headers["X-Lmforge-Cache"] == "hit"
    assert ndjson(replay) == [{"text": streamed}, last]


async def test_context_overflow_is_a_400_naming_the_limit(inference: Inference, unique: str) -> None:
    model = f"m{unique}"
    await inference.deploy(model, "production", 1, save_model(inference.store, "models/m/run-1"))
    long_prompt = "Customer: hello Agent: hi there " * 20  # far more than 32 tokens
    for stream in (False, True):
        r = await inference.generate(model=model, prompt=long_prompt, max_tokens=4, stream=stream)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "context_length_exceeded"
        assert str(CONTEXT) in error["message"]
    # max_tokens alone fills the context: refused before Triton is asked.
    r = await inference.generate(model=model, prompt="hello", max_tokens=CONTEXT)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert f"{CONTEXT} tokens" in r.json()["error"]["message"]


async def test_served_models_lists_every_addressable_id(
    triton: TritonServer, kafka_settings: KafkaSettings, database_url: str, tmp_path: Path, unique: str
) -> None:
    """On SQLite and on PostgreSQL."""
    settings = inference_settings(triton, kafka_settings, tmp_path, unique, database=DatabaseSettings(url=database_url))
    async with running(settings) as inference:
        await served_models_case(inference, unique)


async def served_models_case(inference: Inference, unique: str) -> None:
    model = f"m{unique}"
    before = int(time.time())
    uri = save_model(inference.store, "models/m/run-1")
    await inference.deploy(model, "production", 1, uri)
    await inference.deploy(model, "staging", 1, uri)  # the same version behind two aliases
    await inference.deploy(model, "canary", 2, save_model(inference.store, "models/m/run-2"))
    for version, alias in ((1, None), (2, None)):
        r = await inference.generate(model=model, version=version, prompt="hello", max_tokens=2)
        assert (r.status_code, r.json()["version"], r.json()["alias"]) == (200, version, alias), r.text
    assert (await inference.generate(model=model, version=3, prompt="hello")).status_code == 404

    r = await inference.client.get("/served-models")
    assert r.status_code == 200, r.text
    served = [m for m in r.json() if m["model"] == model]
    assert [(m["id"], m["alias"], m["version"]) for m in served] == [
        (model, "production", 1),
        (f"{model}@canary", "canary", 2),
        (f"{model}@production", "production", 1),
        (f"{model}@staging", "staging", 1),
        (f"{model}@v1", None, 1),
        (f"{model}@v2", None, 2),
    ]
    assert {m["triton_model"] for m in served} == {f"{model}-v1", f"{model}-v2"}
    assert {m["context_length"] for m in served} == {CONTEXT}
    assert all(before - 1 <= m["created"] <= time.time() + 1 for m in served)


async def test_cache_hits_skip_triton_and_a_promotion_is_never_stale(inference: Inference, unique: str) -> None:
    model = f"m{unique}"
    v1 = save_model(inference.store, "models/m/run-1")
    v2 = save_model(inference.store, "models/m/run-2")
    await inference.deploy(model, "production", 1, v1)
    request = {"model": model, "prompt": "Customer: refund please Agent:", "max_tokens": 6}
    labels = {"model": f"{model}-v1"}
    calls = 0
    generate = inference.triton.generate

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return generate(*args, **kwargs)

    inference.triton.generate = counting  # type: ignore[method-assign]

    first = await inference.generate(**request)
    second = await inference.generate(**request)
    assert [first.headers["X-Lmforge-Cache"], second.headers["X-Lmforge-Cache"]] == ["miss", "hit"]
    assert second.json() | {"cached": False} == first.json()
    assert second.json()["cached"] is True
    assert calls == 1, "a hit does not call Triton"
    assert sample("lmforge_inference_cache_hits_total", labels) == 1
    assert sample("lmforge_inference_cache_misses_total", labels) == 1

    # Anything that changes a greedy answer is another entry; sampling is never cached.
    for variant in ({"max_tokens": 5}, {"stop": ["x"]}, {"top_p": 0.5}):
        assert (await inference.generate(**request | variant)).headers["X-Lmforge-Cache"] == "miss"
    for _ in range(2):
        sampled = await inference.generate(**request | {"temperature": 0.7, "seed": 1})
        assert sampled.headers["X-Lmforge-Cache"] == "miss"
    assert calls == 6

    # Promotion: production now serves v2; the same request is answered by v2, not from v1's entry.
    await inference.deploy(model, "production", 2, v2)
    promoted = await inference.generate(**request)
    assert promoted.headers["X-Lmforge-Model-Version"] == f"{model}@v2"
    assert promoted.headers["X-Lmforge-Cache"] == "miss"
    assert promoted.json()["version"] == 2 and promoted.json()["cached"] is False
    # v1 was unloaded: Triton's strict readiness turns false, this service stays ready.
    assert (await inference.client.get("/readyz")).json()["checks"]["triton"] is True
    direct = await inference.triton.complete(f"{model}-v2", GenerationRequest(prompt=request["prompt"], max_tokens=6))
    assert promoted.json()["text"] == direct.text


async def test_generation_metrics_and_triton_statistics(inference: Inference, unique: str) -> None:
    model = f"m{unique}"
    await inference.deploy(model, "production", 1, save_model(inference.store, "models/m/run-1"))
    labels = {"model": f"{model}-v1"}
    r = await inference.generate(model=model, prompt="hello", max_tokens=6, stream=True, temperature=0.5)
    assert r.status_code == 200 and "error" not in ndjson(r)[-1]
    assert sample("lmforge_inference_time_to_first_token_seconds_count", labels) == 1
    assert sample("lmforge_inference_tokens_per_second_count", labels) >= 2  # the smoke test, this one
    assert sample("lmforge_inference_batch_size_count", labels) >= 2
    assert sample("lmforge_inference_batch_size_sum", labels) >= 2

    async def counted() -> bool:  # Triton counts a request once it released it, just after its last response
        await inference.reconciler.refresh_statistics()
        return sample("lmforge_inference_triton_requests_total", labels) >= 2

    await wait_until(counted, timeout=10, interval=0.2)
    text = (await inference.client.get("/metrics")).text
    assert f'lmforge_inference_triton_queue_seconds_total{{model="{model}-v1"}}' in text
    assert sample("lmforge_inference_triton_executions_total", labels) >= 2
    assert sample("lmforge_inference_triton_batch_executions_total", labels | {"batch_size": "1"}) >= 2
    assert f'lmforge_inference_time_to_first_token_seconds_bucket{{le="0.01",model="{model}-v1"}}' in text


async def test_one_pooled_client_serves_every_call_and_closes_at_shutdown(
    triton: TritonServer, kafka_settings: KafkaSettings, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Any] = []
    original = triton_module.triton_grpc.InferenceServerClient

    class Counted(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(triton_module.triton_grpc, "InferenceServerClient", Counted)
    model = f"m{unique}"
    async with running(inference_settings(triton, kafka_settings, tmp_path, unique)) as inference:
        await inference.deploy(model, "production", 1, save_model(inference.store, "models/m/run-1"))
        for stream in (False, True, False):
            r = await inference.generate(model=model, prompt="hi", max_tokens=2, stream=stream, temperature=0.3)
            assert r.status_code == 200, r.text
        assert (await inference.client.get("/readyz")).json()["checks"]["triton"] is True
        await inference.reconciler.refresh_statistics()
        assert await inference.triton.instance_kind(f"{model}-v1") == "KIND_CPU"
        assert len(made) == 1 and inference.triton.client is made[0]
        triton_models = inference.triton
    assert triton_models._client is None, "closed at shutdown"


async def test_replicas_share_answers_through_redis(
    triton: TritonServer, kafka_settings: KafkaSettings, redis_server: RedisServer, tmp_path: Path, unique: str
) -> None:
    model = f"m{unique}"
    request = {"model": model, "prompt": "Customer: where is my order Agent:", "max_tokens": 4}
    settings = inference_settings(triton, kafka_settings, tmp_path, unique, cache_url=redis_server.url)
    async with running(settings) as first:
        await first.deploy(model, "production", 1, save_model(first.store, "models/m/run-1"))
        answered = await first.generate(**request)
        assert answered.headers["X-Lmforge-Cache"] == "miss"
        # A second replica (same database, its own process state) finds the answer in Redis.
        replica = settings.model_copy(update={"consumer_group": f"inference-{unique}-b"})
        async with running(replica) as second:
            replayed = await second.generate(**request)
            assert replayed.headers["X-Lmforge-Cache"] == "hit"
            assert replayed.json() == answered.json() | {"cached": True}
            streamed = await second.generate(**request | {"stream": True})
            assert streamed.headers["X-Lmforge-Cache"] == "hit"
            assert ndjson(streamed)[0] == {"text": answered.json()["text"]}


async def test_a_request_that_read_its_alias_before_a_promotion_is_answered_by_the_new_version(
    inference: Inference, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = f"m{unique}"
    await inference.deploy(model, "production", 1, save_model(inference.store, "models/m/run-1"))
    stale = await store.get_deployment(inference.reconciler.db, model, "production")
    await inference.deploy(model, "production", 2, save_model(inference.store, "models/m/run-2"))
    assert not await inference.triton.is_ready(f"{model}-v1")  # the promotion unloaded v1

    # Routed as by a copy that missed the promotion: the first lookup answers the row before it.
    routing = inference.app.state.routing
    lookups = 0
    held = routing.deployment

    async def first_lookup_is_stale(model: str, alias: str, *, fresh: bool = False) -> Any:
        nonlocal lookups
        lookups += 1
        return stale if lookups == 1 else await held(model, alias, fresh=fresh)

    monkeypatch.setattr(routing, "deployment", first_lookup_is_stale)
    for stream in (False, True):
        lookups, reads = 0, routing.reads
        r = await inference.generate(model=model, prompt="hello", max_tokens=2, stream=stream, temperature=0.5)
        assert r.status_code == 200, r.text
        assert r.headers["X-Lmforge-Model-Version"] == f"{model}@v2"
        assert lookups == 2 and routing.reads == reads + 1, "the retry reads the database"
