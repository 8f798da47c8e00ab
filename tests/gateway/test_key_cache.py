"""The API key cache (``auth.KeyCache``): accepted keys are remembered for ``api_key_cache_ttl_s``.

What it must not change: a revoke or a rotation holds at once on the gateway that made it, and on
another replica (a second gateway app on the same database) within the TTL; a rotated key's new
secret works at once everywhere; expiry is exact; a refusal is never answered from memory.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmforge.common.settings import KafkaSettings
from lmforge.gateway import store
from lmforge.gateway.auth import KeyCache
from lmforge.gateway.settings import GatewaySettings

from .apps import ADMIN, bearer, gateway_settings, new_key, running

TTL_S = 1.0


def _row(key_id: str = "abc", **changes: Any) -> store.ApiKeyRow:
    values: dict[str, Any] = {
        "key_id": key_id,
        "name": "k",
        "secret_sha256": "0" * 64,
        "scopes": ("admin",),
        "created_at": datetime.now(UTC),
        "expires_at": None,
        "revoked_at": None,
        "rotated_at": None,
        "last_used_at": None,
        "bootstrap": False,
        "requests_per_minute": None,
        "completion_tokens_per_day": None,
    }
    return store.ApiKeyRow(**values | changes)


def test_a_row_is_kept_for_its_ttl_from_the_read() -> None:
    cache = KeyCache(ttl_s=0.2)
    cache.put(_row(), cache.epoch())
    assert cache.get("abc") is not None
    cache.update(_row(last_used_at=datetime.now(UTC)))  # a touch does not extend the TTL
    time.sleep(0.25)
    assert cache.get("abc") is None and len(cache) == 0


def test_a_read_that_began_before_a_forget_is_not_kept() -> None:
    """A revoke that commits while a request reads the old row: the old row never comes back."""
    cache = KeyCache(ttl_s=60)
    epoch = cache.epoch()  # the request starts its database read
    cache.forget("abc")  # a revoke commits and forgets the key
    cache.put(_row(), epoch)  # the read ends with the row as it was before the revoke
    assert cache.get("abc") is None
    cache.put(_row(), cache.epoch())
    assert cache.get("abc") is not None


def test_ttl_zero_keeps_nothing_and_the_size_is_bounded() -> None:
    off = KeyCache(ttl_s=0)
    off.put(_row(), off.epoch())
    assert off.get("abc") is None
    small = KeyCache(ttl_s=60, max_entries=3)
    for i in range(5):
        small.put(_row(f"k{i}"), small.epoch())
    assert len(small) == 3 and small.get("k0") is None and small.get("k4") is not None


def _settings(kafka_settings: KafkaSettings, tmp_path: Path, ttl_s: float = TTL_S) -> GatewaySettings:
    """One database for every app made from these settings: what replicas behind a load balancer share."""
    return gateway_settings(kafka_settings, f"sqlite+aiosqlite:///{tmp_path}/g.db", api_key_cache_ttl_s=ttl_s)


async def _status(client: httpx.AsyncClient, key: str) -> int:
    return (await client.get("/v1/api-keys", headers=bearer(key))).status_code


async def test_a_request_with_a_remembered_key_reads_no_database(
    kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = gateway_settings(kafka_settings, f"sqlite+aiosqlite:///{tmp_path}/g.db")
    assert settings.api_key_cache_ttl_s == 5.0  # the default the docs give
    reads: list[str] = []
    get_key = store.get_key

    async def counting(db: Any, key_id: str) -> store.ApiKeyRow | None:
        reads.append(key_id)
        return await get_key(db, key_id)

    monkeypatch.setattr(store, "get_key", counting)
    async with running(settings) as (_, client):
        for _ in range(5):
            assert await _status(client, ADMIN) == 200
        assert reads == ["admin"]
        # A wrong secret for a remembered key is refused, and only after a database read.
        assert await _status(client, "lmf_admin_not-the-secret") == 401
        assert reads == ["admin", "admin"]
        assert await _status(client, ADMIN) == 200 and reads == ["admin", "admin"]


async def test_revocation_holds_at_once_here_and_within_the_ttl_on_another_replica(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    settings = _settings(kafka_settings, tmp_path)
    async with running(settings) as (_, a), running(settings) as (_, b):
        key = (await new_key(a, ["admin"]))["key"]
        assert await _status(a, key) == 200 and await _status(b, key) == 200  # both remember it now
        r = await a.delete(f"/v1/api-keys/{key.split('_')[1]}", headers=bearer(ADMIN))
        assert r.status_code == 200, r.text
        revoked_at = time.monotonic()
        r = await a.get("/v1/api-keys", headers=bearer(key))
        assert r.status_code == 401 and r.json()["error"]["message"] == "this API key was revoked"
        # The other replica may still accept it, for at most the TTL after its read ...
        while await _status(b, key) == 200:
            assert time.monotonic() - revoked_at < TTL_S + 0.5
            await asyncio.sleep(0.05)
        # ... and then refuses it, for good.
        assert time.monotonic() - revoked_at <= TTL_S + 0.5
        for client in (a, b):
            r = await client.get("/v1/api-keys", headers=bearer(key))
            assert r.status_code == 401 and r.json()["error"]["message"] == "this API key was revoked"


async def test_a_rotated_secret_works_at_once_on_every_replica(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    settings = _settings(kafka_settings, tmp_path)
    async with running(settings) as (_, a), running(settings) as (_, b):
        made = await new_key(a, ["admin"])
        old = made["key"]
        assert await _status(a, old) == 200 and await _status(b, old) == 200
        r = await a.post(f"/v1/api-keys/{made['key_id']}/rotate", headers=bearer(ADMIN))
        assert r.status_code == 200, r.text
        new = r.json()["key"]
        assert await _status(a, old) == 401  # the replica that rotated it
        assert await _status(a, new) == 200 and await _status(b, new) == 200  # b remembered the old row
        await asyncio.sleep(TTL_S + 0.1)
        assert await _status(b, old) == 401


async def test_expiry_is_exact_for_a_remembered_key(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    settings = _settings(kafka_settings, tmp_path, ttl_s=60)
    async with running(settings) as (app, client):
        made = await new_key(client, ["admin"], expires_in_s=1)
        assert await _status(client, made["key"]) == 200
        remembered = app.state.key_cache.get(made["key_id"])
        assert remembered is not None and remembered.expires_at is not None
        await asyncio.sleep(max(0.0, (remembered.expires_at - datetime.now(UTC)).total_seconds()) + 0.05)
        r = await client.get("/v1/api-keys", headers=bearer(made["key"]))
        assert r.status_code == 401 and r.json()["error"]["message"].startswith("this API key expired at")


async def test_last_use_is_still_written_once_a_minute(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    settings = _settings(kafka_settings, tmp_path, ttl_s=60)
    async with running(settings) as (app, client):
        made = await new_key(client, ["admin"])
        assert await _status(client, made["key"]) == 200
        remembered = app.state.key_cache.get(made["key_id"])
        assert remembered is not None and remembered.last_used_at is not None  # no write on the next request
        stored = await store.get_key(app.state.runtime.db, made["key_id"])
        assert stored is not None and stored.last_used_at is not None
        assert abs(stored.last_used_at - remembered.last_used_at) < timedelta(seconds=1)
