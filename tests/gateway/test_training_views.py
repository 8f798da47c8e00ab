"""Searches, registered base models, evaluations, metric histories and gate verdicts through the
public API: the gateway app in process, on the real broker, with the trainer, registry and
preprocess answering as their own view models make them (``httpx.MockTransport``).

What a client reads keeps the fields the services added and never an internal location: no
report URI, artifact URI, manifest URI or ``file://`` path.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from lmforge.common.events import (
    BaselineEvaluation,
    EvaluationSummary,
    Hyperparameters,
    ModelReadyV1,
    SearchSpec,
    Topic,
    TrainingRequestedV1,
)
from lmforge.common.settings import KafkaSettings
from lmforge.registry.gate import decide
from lmforge.registry.settings import GateRule
from lmforge.trainer.api import MetricHistory as TrainerMetricHistory
from lmforge.trainer.api import MetricPoint as TrainerMetricPoint
from lmforge.trainer.api import TrainingJob as TrainerJob

from .apps import ADMIN, bearer, gateway_settings, new_key, running

NOW = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
INTERNAL = ["file://", "report_uri", "artifact_uri", "manifest_uri", "/srv/artifacts"]
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
async def gateway(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = gateway_settings(kafka_settings, f"sqlite+aiosqlite:///{tmp_path}/gateway.db")
    async with running(settings) as (app, client):
        yield app, client


def serve(app: FastAPI, service: str, handler: Handler) -> list[httpx.Request]:
    """``service`` answers with ``handler``; the requests it got are returned, as they come."""
    seen: list[httpx.Request] = []

    def recording(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    down = app.state.downstream
    old = down.clients[service]
    down.clients[service] = httpx.AsyncClient(
        base_url=f"http://{service}", transport=httpx.MockTransport(recording), headers=old.headers
    )
    return seen


def evaluation(baseline: bool = True) -> EvaluationSummary:
    return EvaluationSummary(
        split="test",
        eval_set="sha256:" + "a" * 64,
        tokenizer="sha256:" + "b" * 64,
        records=12,
        metrics={"test_rouge_l": 0.61, "test_bits_per_byte": 1.9},
        report_uri="file:///srv/artifacts/reports/support/run-2/",
        baseline=BaselineEvaluation(
            alias="production", version=1, tokenizer="sha256:" + "c" * 64, metrics={"test_rouge_l": 0.52}
        )
        if baseline
        else None,
    )


def trainer_job(job_id: str, **fields: Any) -> dict[str, Any]:
    """A job as the trainer's ``GET /jobs/{id}`` answers it."""
    values: dict[str, Any] = {
        "job_id": job_id,
        "run_id": "run-2",
        "model_name": "support",
        "dataset": "tickets",
        "dataset_version": 1,
        "base_model": "model:support@production",
        "dataset_manifest_uri": "file:///srv/artifacts/datasets/tickets/v1/manifest.json",
        "hyperparameters": Hyperparameters().model_dump(mode="json"),
        "state": "succeeded",
        "step": 200,
        "metrics": {"val_loss": 1.2, "test_rouge_l": 0.61},
        "artifact_uri": "file:///srv/artifacts/models/support/run-2",
        "evaluation": evaluation().model_dump(mode="json"),
        "error": None,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return TrainerJob.model_validate(values | fields).model_dump(mode="json")


def assert_nothing_internal(text: str) -> None:
    leaked = [s for s in INTERNAL if s in text]
    assert not leaked, (leaked, text[:500])


SEARCH = {
    "method": "tpe",
    "trials": 4,
    "metric": "val_loss",
    "direction": "min",
    "seed": 7,
    "parameters": {
        "learning_rate": {"low": 1e-5, "high": 1e-2, "log": True},
        "lora.r": {"values": [8, 16, 32]},
        "lr_scheduler": {"values": ["linear", "cosine"]},
    },
}


def versions_of_tickets(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/datasets/tickets/versions":
        return httpx.Response(
            200, json=[{"version": 1, "manifest_uri": "file:///srv/artifacts/datasets/tickets/v1/manifest.json"}]
        )
    return httpx.Response(404, json={"error": {"code": "not_found", "message": "no such dataset"}})


async def test_a_search_and_a_registered_base_are_published_with_the_request(
    gateway: tuple[FastAPI, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client = gateway
    serve(app, "preprocess", versions_of_tickets)
    producer = app.state.runtime.producer
    published: list[tuple[str, Any]] = []
    original = producer.publish

    async def recording(topic: str, payload: Any, *, key: str) -> Any:
        published.append((topic, payload))
        return await original(topic, payload, key=key)

    monkeypatch.setattr(producer, "publish", recording)
    key = await new_key(client, ["training:write"])
    body = {
        "model_name": "support",
        "dataset": "tickets",
        "dataset_version": 1,
        "base_model": "model:support@production",
        "hyperparameters": {"task": "sft", "method": "lora", "max_steps": 20},
        "search": SEARCH,
    }
    r = await client.post("/v1/training-jobs", json=body, headers=bearer(key["key"]))
    assert r.status_code == 202, r.text
    ((topic, event),) = published
    assert topic == Topic.TRAINING_REQUESTS and isinstance(event, TrainingRequestedV1)
    assert event.job_id == r.json()["job_id"] and event.base_model == "model:support@production"
    assert event.search == SearchSpec.model_validate(SEARCH)
    assert event.search.parameters["lora.r"].values == [8, 16, 32]
    assert event.hyperparameters.method == "lora"

    # A version number names a base too; a request without a search publishes none.
    body = body | {"base_model": "model:support@v3", "search": None}
    r = await client.post("/v1/training-jobs", json=body, headers=bearer(key["key"]))
    assert r.status_code == 202, r.text
    assert published[-1][1].base_model == "model:support@v3" and published[-1][1].search is None


@pytest.mark.parametrize(
    ("base_model", "status"),
    [
        ("builtin:smollm2-135m-instruct", 202),
        ("model:support@production", 202),
        ("model:support@v12", 202),
        ("model:support", 422),
        ("model:Support@production", 422),
        ("model:support@prod/../x", 422),
        ("model:support@" + "a" * 33, 422),
        ("/srv/models/llama", 422),
        ("file:///srv/models/llama", 422),
        ("builtin:", 422),
    ],
)
async def test_base_models_a_client_may_name(
    gateway: tuple[FastAPI, httpx.AsyncClient], base_model: str, status: int
) -> None:
    app, client = gateway
    serve(app, "preprocess", versions_of_tickets)
    body = {"model_name": "support", "dataset": "tickets", "dataset_version": 1, "base_model": base_model}
    r = await client.post("/v1/training-jobs", json=body, headers=bearer(ADMIN))
    assert r.status_code == status, r.text
    if status == 422:
        assert r.json()["error"]["message"].startswith("base_model"), r.text


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"learning_rate": {"low": 0.1, "high": 0.01}}, "search.parameters.learning_rate: a range needs low <= high"),
        ({"learning_rate": {"low": 0, "high": 0.01, "log": True}}, "search.parameters.learning_rate: a log range"),
        ({"lora.depth": {"values": [1]}, "optimizer": {"values": ["sgd"]}}, "search.parameters: not a hyperparameter"),
        ({"task": {"values": ["sft", "translation"]}}, 'search.parameters.task: "translation" is refused'),
        ({"lora.r": {"low": 4, "high": 1024, "integer": True}}, "search.parameters.lora.r: 1024 is refused"),
        ({"max_steps": {"low": 10, "high": 100}}, "search.parameters.max_steps: takes whole numbers"),
        ({"lora.r": {"low": 0.5, "high": 8, "integer": True, "log": True}}, "search.parameters.lora.r: a log range"),
    ],
)
async def test_a_search_the_trainer_would_refuse_is_422_after_the_dataset_check(
    gateway: tuple[FastAPI, httpx.AsyncClient], parameters: dict[str, Any], message: str
) -> None:
    """The spec's shape is in the schema (422 at the edge); what the schema cannot say (the order of
    a range's ends, names and bounds of the recipe) is checked once the dataset version is known to
    exist."""
    app, client = gateway
    serve(app, "preprocess", versions_of_tickets)
    body = {"model_name": "support", "dataset": "tickets", "dataset_version": 1, "search": {"parameters": parameters}}
    r = await client.post("/v1/training-jobs", json=body, headers=bearer(ADMIN))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_search" and error["message"].startswith(message), error
    r = await client.post("/v1/training-jobs", json=body | {"dataset": "other"}, headers=bearer(ADMIN))
    assert r.status_code == 404, r.text


async def test_a_grid_search_needs_lists_of_values(gateway: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = gateway
    serve(app, "preprocess", versions_of_tickets)
    search = {"method": "grid", "parameters": {"lora.r": {"values": [8, 16]}, "warmup_ratio": {"low": 0, "high": 0.1}}}
    body = {"model_name": "support", "dataset": "tickets", "dataset_version": 1, "search": search}
    r = await client.post("/v1/training-jobs", json=body, headers=bearer(ADMIN))
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_search", r.text
    assert r.json()["error"]["message"] == "search.parameters.warmup_ratio: a grid search needs a list of values"


@pytest.mark.parametrize(
    ("search", "field"),
    [
        ({"parameters": {}}, "search.parameters"),
        ({"parameters": {"Learning_Rate": {"values": [1]}}}, "search.parameters"),
        ({"parameters": {"learning_rate": {"values": [1], "low": 0.1, "high": 1}}}, "search.parameters"),
        ({"parameters": {"learning_rate": {"low": 0.1}}}, "search.parameters"),
        ({"parameters": {"response_template": {"values": ["a\x00b"]}}}, "search.parameters"),
        ({"parameters": {"learning_rate": {"values": []}}}, "search.parameters"),
        ({"parameters": {"seed": {"values": [2**60]}}}, "search.parameters"),
        ({"parameters": {"seed": {"values": [1]}}, "trials": 101}, "search.trials"),
        ({"parameters": {"seed": {"values": [1]}}, "method": "bayes"}, "search.method"),
        ({"parameters": {"seed": {"values": [1]}}, "metric": "val loss"}, "search.metric"),
        ({"parameters": {"seed": {"values": [1]}}, "pruner": "median"}, "search.pruner"),
    ],
)
async def test_a_malformed_search_is_422_at_the_edge(
    gateway: tuple[FastAPI, httpx.AsyncClient], search: dict[str, Any], field: str
) -> None:
    app, client = gateway
    calls = serve(app, "preprocess", versions_of_tickets)
    body = {"model_name": "support", "dataset": "tickets", "dataset_version": 1, "search": search}
    r = await client.post("/v1/training-jobs", json=body, headers=bearer(ADMIN))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith(field), r.json()
    assert not calls, "refused before any service is asked"


async def test_a_job_shows_its_evaluation_search_and_trial_and_nothing_internal(
    gateway: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = gateway
    search_id, trial_id = "job-0123456789ab", "job-ba9876543210"
    jobs = {
        search_id: trainer_job(search_id, search=SEARCH, metrics={"val_loss": 1.2, "search_trials": 4.0}),
        trial_id: trainer_job(
            trial_id,
            state="running",
            evaluation=None,
            artifact_uri=None,
            parent_job_id=search_id,
            trial=2,
            search={"learning_rate": 0.0004, "lora.r": 16, "lr_scheduler": "cosine"},
        ),
    }

    def trainer(request: httpx.Request) -> httpx.Response:
        job_id = request.url.path.removeprefix("/jobs/")
        if job_id in jobs:
            return httpx.Response(200, json=jobs[job_id])
        return httpx.Response(404, json={"error": {"code": "job_not_found", "message": f"no training job {job_id}"}})

    calls = serve(app, "trainer", trainer)
    key = await new_key(client, ["training:read"])
    r = await client.get(f"/v1/training-jobs/{search_id}", headers=bearer(key["key"]))
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["search"] == SEARCH and job["parent_job_id"] is None and job["trial"] is None
    assert job["base_model"] == "model:support@production"
    expected = evaluation().model_dump(mode="json")
    del expected["report_uri"]
    assert job["evaluation"] == expected
    assert job["evaluation"]["baseline"] == {
        "alias": "production",
        "version": 1,
        "tokenizer": "sha256:" + "c" * 64,
        "metrics": {"test_rouge_l": 0.52},
    }
    assert_nothing_internal(r.text)

    r = await client.get(f"/v1/training-jobs/{trial_id}", headers=bearer(key["key"]))
    assert r.status_code == 200, r.text
    trial = r.json()
    assert (trial["parent_job_id"], trial["trial"], trial["evaluation"]) == (search_id, 2, None)
    assert trial["search"] == {"learning_rate": 0.0004, "lora.r": 16, "lr_scheduler": "cosine"}
    assert_nothing_internal(r.text)
    assert [c.url.path for c in calls] == [f"/jobs/{search_id}", f"/jobs/{trial_id}"]

    r = await client.get("/v1/training-jobs/job-ffffffffffff", headers=bearer(key["key"]))
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"


async def test_the_metric_history_is_the_trainers(gateway: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = gateway
    job_id = "job-0123456789ab"
    history = TrainerMetricHistory(
        job_id=job_id,
        history=[
            TrainerMetricPoint(step=10, metrics={"loss": 2.5, "learning_rate": 0.003, "grad_norm": 1.1}, at=NOW),
            TrainerMetricPoint(step=20, metrics={"loss": 1.9, "learning_rate": 0.0027}, at=NOW),
            TrainerMetricPoint(step=20, metrics={"eval_loss": 2.0, "eval_perplexity": 7.39}, at=NOW),
        ],
    ).model_dump(mode="json")

    def trainer(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/jobs/{job_id}/metrics":
            return httpx.Response(200, json=history)
        return httpx.Response(404, json={"error": {"code": "job_not_found", "message": "no training job"}})

    calls = serve(app, "trainer", trainer)
    key = await new_key(client, ["training:read"])
    r = await client.get(f"/v1/training-jobs/{job_id}/metrics", headers=bearer(key["key"]))
    assert r.status_code == 200, r.text
    assert r.json() == history
    assert [p["step"] for p in r.json()["history"]] == [10, 20, 20]
    principal = json.loads(calls[0].headers["x-lmforge-principal"])
    assert principal["key_id"] == key["key_id"], principal

    r = await client.get("/v1/training-jobs/job-ffffffffffff/metrics", headers=bearer(key["key"]))
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    r = await client.get(f"/v1/training-jobs/{job_id}/metrics", headers=bearer((await new_key(client, []))["key"]))
    assert r.status_code == 403
    r = await client.get("/v1/training-jobs/job-XYZ/metrics", headers=bearer(key["key"]))
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("path.job_id:")


def registry_version(version: int, gate: dict[str, Any], with_evaluation: bool = True) -> dict[str, Any]:
    """A version as the registry's views answer it (``store.version_view``)."""
    return {
        "model_name": "support",
        "version": version,
        "run_id": f"run-{version}",
        "job_id": "job-0123456789ab",
        "artifact_uri": f"file:///srv/artifacts/models/support/run-{version}",
        "metrics": {"test_rouge_l": 0.61, "val_loss": 1.2},
        "evaluation": evaluation().model_dump(mode="json") if with_evaluation else None,
        "gate": gate,
        "deployment": {},
        "created_at": NOW.isoformat(),
    }


def gate_verdicts() -> tuple[dict[str, Any], dict[str, Any]]:
    """The registry's own verdicts: v1 before any production, v2 against v1 by v2's own run."""
    rule = GateRule(metric="test_rouge_l", direction="max", threshold=0.4, min_gain=0.01)
    ready = ModelReadyV1(
        model_name="support",
        run_id="run-2",
        job_id="job-0123456789ab",
        artifact_uri="file:///srv/artifacts/models/support/run-2",
        base_model="builtin:tiny-gpt2",
        dataset="tickets",
        dataset_version=1,
        dataset_manifest_uri="file:///srv/artifacts/datasets/tickets/v1/manifest.json",
        hyperparameters=Hyperparameters(),
        metrics={"test_rouge_l": 0.61},
        evaluation=evaluation(),
    )
    first = decide(rule, "production", ready, None)
    production = SimpleNamespace(
        version=1, metrics={"test_rouge_l": 0.5}, evaluation=None, dataset="tickets", dataset_version=1
    )
    return first, decide(rule, "production", ready, production)


async def test_registry_views_show_the_gate_and_the_evaluation_and_nothing_internal(
    gateway: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = gateway
    first, second = gate_verdicts()
    old_gate = {"passed": True, "reasons": [], "ceiling": 500.0, "compared_to": None, "compared_perplexity": None}
    versions = [registry_version(1, first), registry_version(2, second), registry_version(3, old_gate, False)]

    def registry(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/models":
            return httpx.Response(200, json=[{"name": "support", "aliases": {"production": 2}, "versions": versions}])
        if request.url.path == "/models/support/versions/2/lineage":
            lineage = versions[1] | {
                "base_model": "model:support@v1",
                "hyperparameters": Hyperparameters().model_dump(mode="json"),
                "dataset": {
                    "name": "tickets",
                    "version": 1,
                    "manifest_uri": "file:///srv/artifacts/datasets/tickets/v1/manifest.json",
                },
            }
            return httpx.Response(200, json=lineage)
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no such version"}})

    def preprocess(request: httpx.Request) -> httpx.Response:
        manifest = {
            "record_count": 2,
            "split_counts": {"train": 1, "test": 1},
            "config_hash": "h",
            "source_offsets": {"records": {"0": 2}},
            "records": [{"record_id": "crm:1"}, {"record_id": "crm:2"}],
        }
        return httpx.Response(200, json=manifest)

    serve(app, "registry", registry)
    serve(app, "preprocess", preprocess)
    key = await new_key(client, ["models:read"])

    r = await client.get("/v1/registry/models", headers=bearer(key["key"]))
    assert r.status_code == 200, r.text
    assert_nothing_internal(r.text)
    v1, v2, v3 = r.json()[0]["versions"]
    assert v2["gate"] == {
        "passed": True,
        "reasons": [],
        "metric": "test_rouge_l",
        "direction": "max",
        "threshold": 0.4,
        "min_gain": 0.01,
        "value": 0.61,
        "eval_set": "sha256:" + "a" * 64,
        "compared_to": 1,
        "compared_value": 0.52,
        "compared_on": "measured by this version's run on the same records",
        "ceiling": None,
        "compared_perplexity": None,
    }
    assert v1["gate"]["compared_to"] is None and v1["gate"]["compared_value"] is None and v1["gate"]["passed"]
    assert v2["evaluation"]["eval_set"] == "sha256:" + "a" * 64 and "report_uri" not in v2["evaluation"]
    assert v2["evaluation"]["metrics"] == {"test_rouge_l": 0.61, "test_bits_per_byte": 1.9}
    # A version registered before these fields: the old gate fields, the new ones empty.
    assert v3["evaluation"] is None
    assert v3["gate"]["ceiling"] == 500.0 and v3["gate"]["metric"] is None and v3["gate"]["value"] is None

    r = await client.get("/v1/models/support/versions/2/lineage", headers=bearer(key["key"]))
    assert r.status_code == 200, r.text
    assert_nothing_internal(r.text)
    lineage = r.json()
    assert lineage["base_model"] == "model:support@v1" and lineage["gate"] == v2["gate"]
    assert lineage["evaluation"] == v2["evaluation"]
    assert lineage["dataset"]["record_ids"] == ["crm:1", "crm:2"]
