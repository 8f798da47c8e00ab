"""Every /v1 route, four callers: no key 401, a bad key 401, every scope but the one needed 403,
the right key 2xx. Against the whole stack as processes, with a trained and served model, so
that every 2xx is a real answer; every 2xx body is also checked for internal paths and hosts.

The routes come from the app (``routes.public_routes``): a route without an example request
below fails this test until it gets one.

On the same stack: a key's completion token budget, spent through the real gateway-to-inference
path, ends in 429; and the services behind the gateway refuse calls without the stack's internal
credential.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from lmforge.devstack.servers import make_workdir
from lmforge.devstack.stack import Stack
from lmforge.devstack.support_corpus import make_corpus

from .routes import PublicRoute, all_scopes_but, public_routes

pytestmark = pytest.mark.slow

MODEL, DATASET = "matrix-model", "matrix-tickets"
TINY = {"max_steps": 4, "eval_every": 2, "batch_size": 8, "max_seq_len": 32}


@dataclass
class World:
    """What the example requests refer to: built once, through the public API."""

    stack: Stack
    api: httpx.Client
    dataset_version: int
    job_id: str
    model_version: int
    revocable_key_id: str  # keys for the revoke and rotate examples
    rotatable_key_id: str
    erasure_id: str  # of a record never sent: erasing it changes nothing the other examples read


def _wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Any val perplexity passes the gate: a 4-step model must still be promoted and served.
    workdir = make_workdir("lmforge-matrix-")
    try:
        with Stack(workdir, extra_env={"LMFORGE_REGISTRY_GATE_MAX_VAL_PERPLEXITY": "1e12"}) as running:
            yield running
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def world(stack: Stack) -> Iterator[World]:
    auth = {"Authorization": f"Bearer {stack.admin_key}"}
    with httpx.Client(base_url=stack.gateway_url, headers=auth, timeout=60) as api:
        corpus = make_corpus(40)
        assert api.post("/v1/records", json=corpus).status_code == 202

        def cleaned() -> bool:
            stats = api.get("/v1/pipeline/stats").json()
            return bool(stats["cleaned"] + sum(stats["dropped"].values()) >= len(corpus))

        _wait("preprocessing", cleaned, 60)
        cut = api.post(f"/v1/datasets/{DATASET}/versions", json={})
        assert cut.status_code == 201, cut.text
        job = api.post(
            "/v1/training-jobs",
            json={
                "model_name": MODEL,
                "dataset": DATASET,
                "dataset_version": cut.json()["version"],
                "hyperparameters": TINY,
            },
        )
        assert job.status_code == 202, job.text

        def trained() -> bool:
            r = api.get(f"/v1/training-jobs/{job.json()['job_id']}")
            if r.status_code == 200 and r.json()["state"] == "failed":
                raise AssertionError(r.text)
            return r.status_code == 200 and r.json()["state"] == "succeeded"

        _wait("training", trained, 240)

        def served() -> bool:
            r = api.post("/v1/completions", json={"model": MODEL, "prompt": "Customer: hi", "max_tokens": 2})
            return r.status_code == 200

        _wait("deployment", served, 180)
        models = {m["name"]: m for m in api.get("/v1/registry/models").json()}
        spare = [api.post("/v1/api-keys", json={"name": f"spare-{i}", "scopes": ["models:read"]}) for i in range(2)]
        assert all(r.status_code == 201 for r in spare), [r.text for r in spare]
        erasure = api.post("/v1/erasures", json={"source": "crm", "source_id": "matrix-never-sent"})
        assert erasure.status_code == 202, erasure.text
        yield World(
            stack,
            api,
            cut.json()["version"],
            job.json()["job_id"],
            models[MODEL]["aliases"]["production"],
            spare[0].json()["key_id"],
            spare[1].json()["key_id"],
            erasure.json()["erasure_id"],
        )


def examples(w: World) -> dict[str, tuple[dict[str, str], dict[str, Any]]]:
    """A valid request per route: path parameters, then httpx keyword arguments.

    In the order the matrix runs them: the ones that change state (a new training run, an alias
    move) come last, so they cannot disturb the answers of the others.
    """
    return {
        "GET /v1/pipeline/stats": ({}, {}),
        "GET /v1/pipeline/dropped": ({}, {"params": {"reason": "duplicate", "limit": 10}}),
        "GET /v1/datasets/{name}/versions/{version}": ({"name": DATASET, "version": str(w.dataset_version)}, {}),
        "GET /v1/datasets/{name}/versions/{version}/label-studio": (
            {"name": DATASET, "version": str(w.dataset_version)},
            {},
        ),
        "GET /v1/training-jobs/{job_id}": ({"job_id": w.job_id}, {}),
        "GET /v1/training-jobs/{job_id}/metrics": ({"job_id": w.job_id}, {}),
        "GET /v1/registry/models": ({}, {}),
        "GET /v1/models": ({}, {}),
        "GET /v1/models/{model}": ({"model": f"{MODEL}@v{w.model_version}"}, {}),
        "GET /v1/models/{name}/versions/{version}/lineage": ({"name": MODEL, "version": str(w.model_version)}, {}),
        "POST /v1/completions": ({}, {"json": {"model": f"{MODEL}@production", "prompt": "Hi", "max_tokens": 2}}),
        "POST /v1/chat/completions": (
            {},
            {"json": {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}},
        ),
        "POST /v1/records": ({}, {"json": {"source": "crm", "source_id": "matrix-1", "text": "Customer: hello"}}),
        "POST /v1/erasures": ({}, {"json": {"source": "crm", "source_id": "matrix-never-sent"}}),
        "GET /v1/erasures/{erasure_id}": ({"erasure_id": w.erasure_id}, {}),
        "POST /v1/records/label-studio": (
            {},
            {
                "params": {"source": "crm"},
                "json": [{"id": "matrix-ls-1", "data": {"text": "Customer: hi from review"}}],
            },
        ),
        "POST /v1/datasets/{name}/versions": ({"name": DATASET}, {"json": {"sources": ["crm"]}}),
        "GET /v1/api-keys": ({}, {}),
        "POST /v1/api-keys": ({}, {"json": {"name": "matrix", "scopes": ["models:read"], "expires_in_s": 3600}}),
        "POST /v1/api-keys/{key_id}/rotate": ({"key_id": w.rotatable_key_id}, {}),
        "DELETE /v1/api-keys/{key_id}": ({"key_id": w.revocable_key_id}, {}),
        # The job has succeeded already: cancelling it answers its state.
        "POST /v1/training-jobs/{job_id}/cancel": ({"job_id": w.job_id}, {}),
        # One more step-1 run of the same model: worse than production, so the gate keeps v1 serving.
        "POST /v1/training-jobs": (
            {},
            {
                "json": {
                    "model_name": MODEL,
                    "dataset": DATASET,
                    "dataset_version": w.dataset_version,
                    "hyperparameters": TINY | {"max_steps": 1, "eval_every": 1},
                }
            },
        ),
        "PUT /v1/models/{name}/aliases/{alias}": (
            {"name": MODEL, "alias": "production"},
            {"json": {"version": w.model_version, "reason": "auth matrix: same version"}},
        ),
    }


def _key(api: httpx.Client, scopes: list[str]) -> str:
    r = api.post("/v1/api-keys", json={"name": "matrix", "scopes": scopes})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def test_every_route_answers_401_401_403_2xx(world: World) -> None:
    routes = {str(r): r for r in public_routes()}
    table = examples(world)
    assert set(table) == set(routes), f"routes without an example request: {sorted(set(routes) - set(table))}"
    internal = [str(world.stack.workdir), "file://", "manifest_uri", "artifact_uri", "127.0.0.1", "Traceback"]
    results: dict[str, list[int]] = {}
    for label, (params, kwargs) in table.items():
        route: PublicRoute = routes[label]
        url = route.path.format(**params)
        callers = {
            "none": {},
            "bad key": {"Authorization": "Bearer lmf_0123456789ab_not-a-real-secret"},
            "other scopes": {"Authorization": f"Bearer {_key(world.api, all_scopes_but(route.scope))}"},
            "right scope": {"Authorization": f"Bearer {_key(world.api, [route.scope.value])}"},
        }
        statuses = []
        for caller, headers in callers.items():
            r = httpx.request(route.method, world.stack.gateway_url + url, headers=headers, timeout=60, **kwargs)
            statuses.append(r.status_code)
            if caller == "right scope":
                assert 200 <= r.status_code < 300, (label, r.text)
                leaked = [s for s in internal if s in r.text]
                assert not leaked, (label, leaked, r.text[:500])
            else:
                assert "Traceback" not in r.text
        results[label] = statuses
    wrong = {label: s for label, s in results.items() if s[:3] != [401, 401, 403]}
    assert not wrong, wrong


def test_a_spent_completion_token_budget_is_429(world: World) -> None:
    """The tokens inference reports are counted per key and model; once a completion could take
    more than is left today, it is refused with 429 and Retry-After (seconds to midnight UTC)."""
    budget, max_tokens = 5, 2
    r = world.api.post(
        "/v1/api-keys", json={"name": "quota", "scopes": ["completions"], "completion_tokens_per_day": budget}
    )
    assert r.status_code == 201, r.text
    key = {"Authorization": f"Bearer {r.json()['key']}"}
    body = {"model": MODEL, "prompt": "Customer: my parcel", "max_tokens": max_tokens}
    used, answered = 0, 0
    for _ in range(budget + 1):
        r = world.api.post("/v1/completions", json=body, headers=key)
        if r.status_code != 200:
            break
        used += r.json()["usage"]["completion_tokens"]
        answered += 1
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "token_quota_exceeded"
    assert answered >= 1 and budget - max_tokens < used <= budget, (answered, used)
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    assert abs(int(r.headers["Retry-After"]) - math.ceil((midnight - now).total_seconds())) <= 5
    # What is left still buys a smaller completion, if anything is left.
    if used < budget:
        smaller = world.api.post("/v1/completions", json=body | {"max_tokens": budget - used}, headers=key)
        assert smaller.status_code == 200, smaller.text


def test_the_services_behind_the_gateway_need_the_internal_credential(world: World) -> None:
    calls = {
        "ingest": ("GET", "/openapi.json"),
        "preprocess": ("GET", "/stats"),
        "trainer": ("GET", "/jobs"),
        "registry": ("GET", "/models"),
        "inference": ("GET", "/deployments"),
    }
    internal = {"Authorization": f"Bearer {world.stack.internal_token}"}
    for service, (method, path) in calls.items():
        url = world.stack.url(service)
        assert httpx.request(method, url + path, timeout=30).status_code == 401, service
        assert (
            httpx.request(
                method, url + path, headers={"Authorization": f"Bearer {world.stack.admin_key}"}, timeout=30
            ).status_code
            == 401
        )
        assert httpx.request(method, url + path, headers=internal, timeout=30).status_code == 200, service
        assert httpx.get(url + "/healthz", timeout=30).status_code == 200, service
