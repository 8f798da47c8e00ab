"""The gateway's edge, in process, on a real broker and database: who is asked first, what a bad
path or body gets, and what a client may never read.

The services behind it are not running here (their ports are closed), so a request that gets
past the checks at the edge is answered 503; the whole loop is in ``test_auth_matrix``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from lmforge.common.settings import DatabaseSettings, KafkaSettings
from lmforge.devstack.servers import free_port
from lmforge.gateway.app import build_app
from lmforge.gateway.auth import Scope
from lmforge.gateway.settings import GatewaySettings

from ..helpers import INTERNAL_AUTH
from .routes import PublicRoute, all_scopes_but, public_routes

ADMIN = "lmf_admin_0123456789abcdef0123456789abcdef"
PATH_VALUES = {
    "name": "support",
    "alias": "production",
    "version": "1",
    "job_id": "job-0123456789ab",
    "key_id": "0123456789ab",
    "model": "support@v1",
    "erasure_id": "0b9e6c1a-4f7d-4c3e-9a2b-5d8e7f6a1b2c",
}
# The OpenAI-compatible routes answer a body that fails validation with 400 (OpenAI's BadRequest).
OPENAI_ROUTES = {"POST /v1/completions", "POST /v1/chat/completions", "GET /v1/models", "GET /v1/models/{model}"}
# Routes that call no service: what they answer here once the caller may call them (no such key: 404).
LOCAL_ANSWERS = {"GET /v1/api-keys": 200, "DELETE /v1/api-keys/{key_id}": 404, "POST /v1/api-keys/{key_id}/rotate": 404}
# Routes with a required query parameter: refused at the gateway without it.
LOCAL_ANSWERS |= {"POST /v1/records/label-studio": 422}
ROUTES = public_routes()


def url(route: PublicRoute, **values: str) -> str:
    return route.path.format(**(PATH_VALUES | values))


@pytest.fixture
async def gateway(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: every service is "unavailable"
    settings = GatewaySettings(
        kafka=kafka_settings,
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/gateway.db"),
        bootstrap_admin_key=ADMIN,
        internal=INTERNAL_AUTH,
        connect_timeout_s=0.5,
        **{f"{s}_url": closed for s in ("ingest", "preprocess", "trainer", "registry", "inference")},
    )
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


async def key_with(client: httpx.AsyncClient, scopes: list[str]) -> dict[str, str]:
    r = await client.post(
        "/v1/api-keys", json={"name": "test", "scopes": scopes}, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


async def test_authentication_comes_before_the_body(gateway: httpx.AsyncClient) -> None:
    """On every route: 401 without a key, 403 without the scope, only then 422 (400) for a bad body."""
    garbage = {"content": b"\xff{not json", "headers": {"content-type": "application/json"}}
    for route in ROUTES:
        for auth in ({}, {"Authorization": "Bearer lmf_nope_nope"}, {"Authorization": "Basic x"}):
            r = await gateway.request(route.method, url(route), **garbage | {"headers": garbage["headers"] | auth})
            assert r.status_code == 401, (str(route), auth, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
        wrong = await key_with(gateway, all_scopes_but(route.scope))
        r = await gateway.request(route.method, url(route), **garbage | {"headers": garbage["headers"] | wrong})
        assert r.status_code == 403, (str(route), r.text)
        assert r.json()["error"]["code"] == "forbidden"
        right = await key_with(gateway, [route.scope.value])
        r = await gateway.request(route.method, url(route), **garbage | {"headers": garbage["headers"] | right})
        if route.parses_body:
            assert r.status_code == (400 if str(route) in OPENAI_ROUTES else 422), (str(route), r.text)
        elif str(route) in LOCAL_ANSWERS:
            assert r.status_code == LOCAL_ANSWERS[str(route)], (str(route), r.text)
        else:  # nothing the gateway refuses: the request goes on, to a service that is not there
            assert r.status_code == 503, (str(route), r.text)


async def test_every_route_declares_its_answers_and_the_bearer_scheme(gateway: httpx.AsyncClient) -> None:
    spec = (await gateway.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "lmf_<key id>_<secret>",
        "description": "An lmforge API key.",
    }
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for route in ROUTES:
        op = spec["paths"][route.path][route.method.lower()]
        assert op["security"] == [{"bearer": []}], route
        success = [s for s in op["responses"] if s.startswith("2")]
        assert len(success) == 1 and op["responses"][success[0]]["content"]["application/json"]["schema"], route
        invalid = "400" if str(route) in OPENAI_ROUTES else "422"
        for status in ("401", "403", invalid, "429"):
            assert op["responses"][status]["content"]["application/json"]["schema"] == error, (route, status)
        if "{" in route.path:
            assert "404" in op["responses"], route
        if not route.path.startswith("/v1/api-keys"):  # the routes that call no service
            assert {"502", "503", "504"} <= set(op["responses"]), route
            assert "Retry-After" in op["responses"]["503"]["headers"], route


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/datasets/a%00b/versions/1", "name"),
        ("/v1/datasets/a%0Ab/versions/1", "name"),
        ("/v1/datasets/Tickets/versions/1", "name"),
        ("/v1/datasets/t/versions/1380715308765197893632", "version"),
        ("/v1/datasets/t/versions/0", "version"),
        ("/v1/models/m/versions/2147483648/lineage", "version"),
        ("/v1/training-jobs/job-%7F", "job_id"),
    ],
)
async def test_bad_path_parameters_are_422_at_the_edge(gateway: httpx.AsyncClient, path: str, field: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    r = await gateway.get(path, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith(f"path.{field}:")


async def test_an_escaped_slash_in_a_name_matches_no_route(gateway: httpx.AsyncClient) -> None:
    r = await gateway.get("/v1/datasets/..%2Fstats%3Fx%3D/versions/1", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 404, r.text  # 503 would mean a service was called


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/training-jobs", {"model_name": "m", "dataset": "../stats?x=", "dataset_version": 1}, "dataset"),
        ("/v1/training-jobs", {"model_name": "m", "dataset": "t/versions?x=", "dataset_version": 1}, "dataset"),
        ("/v1/training-jobs", {"model_name": "m", "dataset": "t", "dataset_version": 2**70}, "dataset_version"),
        (
            "/v1/training-jobs",
            {"model_name": "m", "dataset": "t", "dataset_version": 1, "base_model": "/etc"},
            "base_model",
        ),
        (
            "/v1/training-jobs",
            {"model_name": "m", "dataset": "t", "dataset_version": 1, "base_model": "model:m@../x"},
            "base_model",
        ),
        (
            "/v1/training-jobs",
            {"model_name": "m", "dataset": "t", "dataset_version": 1, "hyperparameters": {"seed": 2**64}},
            "hyperparameters.seed",
        ),
        (
            "/v1/training-jobs",
            {"model_name": "m", "dataset": "t", "dataset_version": 1, "search": {"parameters": {}, "trials": 0}},
            "search.parameters",
        ),
        ("/v1/datasets/t/versions", {"sources": ["CRM"]}, "sources.0"),
        ("/v1/api-keys", {"name": "a\x00b", "scopes": []}, "name"),
    ],
)
async def test_bad_bodies_are_422_naming_the_field(
    gateway: httpx.AsyncClient, path: str, body: dict[str, object], field: str
) -> None:
    r = await gateway.post(path, json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith(f"{field}"), r.json()


async def test_alias_names_are_checked(gateway: httpx.AsyncClient) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    for alias in ("Prod", "a" * 33, "-x", "x y"):
        r = await gateway.put(f"/v1/models/m/aliases/{alias}", json={"version": 1}, headers=headers)
        assert r.status_code == 422 and r.json()["error"]["message"].startswith("path.alias:"), (alias, r.text)
    r = await gateway.put("/v1/models/m/aliases/canary", json={"version": 1, "actor": "me"}, headers=headers)
    assert r.status_code == 422, "the audit log's actor is the caller's key, never the body"


async def test_a_body_that_is_not_utf8_is_a_clear_422(gateway: httpx.AsyncClient) -> None:
    r = await gateway.post(
        "/v1/training-jobs",
        content=b'{"model_name": "m", "dataset": "\xff"}',
        headers={"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
    )
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "body: not valid UTF-8 (byte 32: invalid start byte)"
    # On the OpenAI-compatible routes, the same is OpenAI's 400.
    r = await gateway.post(
        "/v1/completions",
        content=b'{"model": "m", "prompt": "\xff"}',
        headers={"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "body: not valid UTF-8 (byte 26: invalid start byte)"
    assert r.json()["error"]["type"] == "invalid_request_error"


async def test_unreachable_services_name_no_host(gateway: httpx.AsyncClient) -> None:
    for path in ("/v1/registry/models", "/v1/models"):
        r = await gateway.get(path, headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert r.json()["error"]["code"] == "upstream_unavailable" and r.json()["error"]["type"] == "api_error"
        assert "127.0.0.1" not in r.text and "registry" not in r.text and "inference" not in r.text


def test_the_route_table_is_what_the_tests_cover() -> None:
    """Guards the enumeration itself: every /v1 route is found, with the scope it declares."""
    found = {str(r): r.scope for r in ROUTES}
    assert found["POST /v1/api-keys"] == Scope.ADMIN
    assert found["POST /v1/records"] == Scope.RECORDS_WRITE
    assert found["GET /v1/registry/models"] == Scope.MODELS_READ
    for route in OPENAI_ROUTES:
        assert found[route] == Scope.COMPLETIONS
    for route in ("GET /v1/api-keys", "DELETE /v1/api-keys/{key_id}", "POST /v1/api-keys/{key_id}/rotate"):
        assert found[route] == Scope.ADMIN
    assert found["GET /v1/training-jobs/{job_id}/metrics"] == Scope.TRAINING_READ
    assert found["GET /v1/pipeline/dropped"] == found["GET /v1/pipeline/stats"] == Scope.DATASETS_READ
    assert found["POST /v1/erasures"] == found["GET /v1/erasures/{erasure_id}"] == Scope.RECORDS_ERASE
    assert found["POST /v1/records/label-studio"] == Scope.RECORDS_WRITE
    assert found["GET /v1/datasets/{name}/versions/{version}/label-studio"] == Scope.DATASETS_READ
    assert len(found) == 24


async def test_a_405_names_every_method_of_its_path(gateway: httpx.AsyncClient) -> None:
    """GET and POST /v1/api-keys are two routes; Allow must name both, not the first one only."""
    r = await gateway.request("OPTIONS", "/v1/api-keys", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    r = await gateway.request("PATCH", "/v1/api-keys/0123456789ab", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 405 and r.headers["allow"] == "DELETE"
