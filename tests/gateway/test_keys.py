"""API key lifecycle at the gateway, on SQLite and PostgreSQL, through the public API: list (no
secrets), revoke (refused from the next request on), rotate (the old secret stops working),
expiry, and the bootstrap admin key following its setting across restarts."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from lmforge.common.settings import KafkaSettings
from lmforge.gateway.settings import GatewaySettings

from .apps import ADMIN, bearer, gateway_settings, new_key, running


@pytest.fixture
async def gateway(kafka_settings: KafkaSettings, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running(gateway_settings(kafka_settings, database_url)) as (_, client):
        yield client


async def listed(client: httpx.AsyncClient) -> dict[str, dict[str, object]]:
    r = await client.get("/v1/api-keys", headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    return {k["key_id"]: k for k in r.json()}


async def test_the_list_shows_every_key_and_no_secret(gateway: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    made = await new_key(gateway, ["models:read", "completions"], expires_in_s=3600, requests_per_minute=7)
    r = await gateway.get("/v1/api-keys", headers=bearer(ADMIN))
    keys = {k["key_id"]: k for k in r.json()}
    key = keys[made["key_id"]]
    assert key["name"] == "test" and key["scopes"] == ["completions", "models:read"] and key["state"] == "active"
    assert key["requests_per_minute"] == 7 and key["completion_tokens_per_day"] == 1_000_000
    assert key["bootstrap"] is False and key["revoked_at"] is None and key["rotated_at"] is None
    expires = datetime.fromisoformat(key["expires_at"])
    assert before + timedelta(seconds=3590) < expires < datetime.now(UTC) + timedelta(seconds=3610)
    assert keys["admin"]["bootstrap"] is True and keys["admin"]["scopes"] == ["admin"]
    assert keys["admin"]["last_used_at"] is not None  # this very request
    assert key["last_used_at"] is None
    for secret in (made["key"].split("_", 2)[2], ADMIN.split("_", 2)[2]):
        assert secret not in r.text and hashlib.sha256(secret.encode()).hexdigest() not in r.text
    assert not [field for field in key if "secret" in field or "hash" in field]
    await gateway.get("/v1/api-keys", headers=bearer(made["key"]))  # 403, but authenticated: a use
    assert (await listed(gateway))[made["key_id"]]["last_used_at"] is not None


async def test_a_revoked_key_is_refused_from_its_very_next_request(gateway: httpx.AsyncClient) -> None:
    admin = await new_key(gateway, ["admin"])
    reader = await new_key(gateway, ["models:read"])
    assert (await gateway.get("/v1/api-keys", headers=bearer(admin["key"]))).status_code == 200
    assert (await gateway.get("/v1/registry/models", headers=bearer(reader["key"]))).status_code == 503  # got past auth
    for key in (admin, reader):
        r = await gateway.delete(f"/v1/api-keys/{key['key_id']}", headers=bearer(ADMIN))
        assert r.status_code == 200 and r.json()["state"] == "revoked", r.text
    r = await gateway.get("/v1/api-keys", headers=bearer(admin["key"]))
    assert r.status_code == 401 and r.json()["error"]["message"] == "this API key was revoked"
    assert r.headers["www-authenticate"] == "Bearer"
    assert (await gateway.get("/v1/registry/models", headers=bearer(reader["key"]))).status_code == 401
    # Without the right secret, a caller learns nothing about the key.
    wrong = f"lmf_{admin['key_id']}_not-its-secret"
    assert (await gateway.get("/v1/registry/models", headers=bearer(wrong))).json()["error"][
        "message"
    ] == "invalid API key"
    first = (await listed(gateway))[admin["key_id"]]
    again = await gateway.delete(f"/v1/api-keys/{admin['key_id']}", headers=bearer(ADMIN))
    assert again.status_code == 200 and again.json()["revoked_at"] == first["revoked_at"]  # revoked once
    r = await gateway.post(f"/v1/api-keys/{admin['key_id']}/rotate", headers=bearer(ADMIN))
    assert r.status_code == 409 and r.json()["error"]["code"] == "api_key_revoked"
    r = await gateway.delete("/v1/api-keys/0123456789ab", headers=bearer(ADMIN))
    assert r.status_code == 404 and r.json()["error"]["code"] == "api_key_not_found"


async def test_rotation_gives_the_same_key_a_new_secret(gateway: httpx.AsyncClient) -> None:
    old = await new_key(gateway, ["admin"], expires_in_s=3600, completion_tokens_per_day=50)
    r = await gateway.post(f"/v1/api-keys/{old['key_id']}/rotate", headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["key"] != old["key"] and new["key"].startswith(f"lmf_{old['key_id']}_")
    assert {k: new[k] for k in ("key_id", "name", "scopes", "expires_at")} == {
        k: old[k] for k in ("key_id", "name", "scopes", "expires_at")
    }
    r = await gateway.get("/v1/api-keys", headers=bearer(old["key"]))
    assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"
    assert (await gateway.get("/v1/api-keys", headers=bearer(new["key"]))).status_code == 200
    key = (await listed(gateway))[old["key_id"]]
    assert key["rotated_at"] is not None and key["completion_tokens_per_day"] == 50 and key["state"] == "active"
    r = await gateway.post("/v1/api-keys/0123456789ab/rotate", headers=bearer(ADMIN))
    assert r.status_code == 404


async def test_an_expired_key_is_refused_with_a_clear_message(gateway: httpx.AsyncClient) -> None:
    key = await new_key(gateway, ["admin"], expires_in_s=1)
    assert (await gateway.get("/v1/api-keys", headers=bearer(key["key"]))).status_code == 200
    expires_at = datetime.fromisoformat(key["expires_at"])
    await asyncio.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 0.2)
    r = await gateway.get("/v1/api-keys", headers=bearer(key["key"]))
    assert r.status_code == 401
    assert r.json()["error"]["message"] == f"this API key expired at {expires_at.isoformat(timespec='seconds')}"
    assert (await listed(gateway))[key["key_id"]]["state"] == "expired"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"expires_in_s": 0}, "expires_in_s"),
        ({"expires_in_s": 10**10}, "expires_in_s"),
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"completion_tokens_per_day": -1}, "completion_tokens_per_day"),
        ({"completion_tokens_per_day": True}, "completion_tokens_per_day"),
        ({"requests_per_minute": "5"}, "requests_per_minute"),
        ({"expires_in_s": 3600.5}, "expires_in_s"),
        ({"expires_in_s": False}, "expires_in_s"),
        ({"expires_at": "2030-01-01T00:00:00Z"}, "expires_at"),
    ],
)
async def test_bad_key_requests_are_422(gateway: httpx.AsyncClient, body: dict[str, object], field: str) -> None:
    r = await gateway.post("/v1/api-keys", json={"name": "k", "scopes": []} | body, headers=bearer(ADMIN))
    assert r.status_code == 422 and r.json()["error"]["message"].startswith(field), r.text


async def test_key_ids_in_paths_are_checked(gateway: httpx.AsyncClient) -> None:
    for key_id in ("a_b", "a" * 33, "a%2Fb"):
        r = await gateway.delete(f"/v1/api-keys/{key_id}", headers=bearer(ADMIN))
        assert r.status_code in (404, 422), (key_id, r.text)  # an escaped slash matches no route
        assert r.status_code == 404 or r.json()["error"]["message"].startswith("path.key_id:")


async def test_the_bootstrap_key_follows_its_setting_across_restarts(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    rotated = "lmf_admin_the-rotated-bootstrap-secret-0123456789"
    other_id = "lmf_root_another-bootstrap-key-0123456789abcdef"

    def settings(key: str | None) -> GatewaySettings:
        return gateway_settings(kafka_settings, database_url, bootstrap_admin_key=key)

    async with running(settings(ADMIN)) as (_, client):
        assert (await client.get("/v1/api-keys", headers=bearer(ADMIN))).status_code == 200
        for method, path in (("DELETE", "/v1/api-keys/admin"), ("POST", "/v1/api-keys/admin/rotate")):
            r = await client.request(method, path, headers=bearer(ADMIN))
            assert r.status_code == 409 and r.json()["error"]["code"] == "bootstrap_key", r.text
            assert "LMFORGE_GATEWAY_BOOTSTRAP_ADMIN_KEY" in r.json()["error"]["message"]
        ordinary = await new_key(client, ["admin"])
    async with running(settings(rotated)) as (_, client):
        assert (await client.get("/v1/api-keys", headers=bearer(ADMIN))).status_code == 401
        keys = await _keys(client, rotated)
        assert keys["admin"]["rotated_at"] is not None and keys["admin"]["state"] == "active"
        assert keys[ordinary["key_id"]]["state"] == "active"  # other keys are not the setting's
    async with running(settings(other_id)) as (_, client):
        r = await client.get("/v1/api-keys", headers=bearer(rotated))
        assert r.status_code == 401 and r.json()["error"]["message"] == "this API key was revoked"
        assert {k: v["state"] for k, v in (await _keys(client, other_id)).items() if v["bootstrap"]} == {
            "admin": "revoked",
            "root": "active",
        }
    async with running(settings(None)) as (_, client):
        assert (await client.get("/v1/api-keys", headers=bearer(other_id))).status_code == 401
        assert (await client.get("/v1/api-keys", headers=bearer(ordinary["key"]))).status_code == 200
    async with running(settings(other_id)) as (_, client):
        assert (await client.get("/v1/api-keys", headers=bearer(other_id))).status_code == 200  # restored
    taken = f"lmf_{ordinary['key_id']}_a-secret-for-an-id-the-api-made-0123456789"
    with pytest.raises(ValueError, match="belongs to a key created through the API"):
        async with running(settings(taken)):
            pass


async def _keys(client: httpx.AsyncClient, admin: str) -> dict[str, dict[str, object]]:
    r = await client.get("/v1/api-keys", headers=bearer(admin))
    assert r.status_code == 200, r.text
    return {k["key_id"]: k for k in r.json()}
