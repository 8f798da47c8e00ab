"""Rate limits and quotas per API key (``quotas.py``, on the ``limits`` library).

- Requests per minute on every /v1 route: in memory (one gateway), and in a real ``redis-server``
  shared by two gateway apps, which then see one budget.
- Completion tokens per key, model and UTC day: the accounting, driven directly, in memory and in
  Redis (the whole gateway-to-inference path is in ``test_auth_matrix``).
- An unreachable limit storage: 503 with Retry-After, and the gateway reports itself not ready.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import HTTPException

from lmforge.common.settings import KafkaSettings
from lmforge.devstack.servers import RedisServer, free_port
from lmforge.gateway.auth import Principal
from lmforge.gateway.quotas import Quotas
from lmforge.gateway.settings import GatewaySettings

from .apps import ADMIN, bearer, gateway_settings, new_key, running


def assert_rate_limited(r: httpx.Response, code: str = "rate_limited", most_s: int = 60) -> int:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["trace_id"]
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= most_s
    return retry_after


async def test_requests_per_minute_per_key_in_memory(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    settings = gateway_settings(kafka_settings, f"sqlite+aiosqlite:///{tmp_path}/g.db", requests_per_minute=5)
    async with running(settings) as (_, client):
        admin = await new_key(client, ["admin"])
        reader = await new_key(client, ["models:read"])
        own = await new_key(client, ["admin"], requests_per_minute=2)
        statuses = [(await client.get("/v1/api-keys", headers=bearer(admin["key"]))).status_code for _ in range(5)]
        assert statuses == [200] * 5
        r = await client.get("/v1/api-keys", headers=bearer(admin["key"]))
        assert_rate_limited(r)
        assert "5 requests" in r.json()["error"]["message"]
        # Every route counts, those that call a service too (here they answer 503: nothing runs).
        statuses = [
            (await client.get("/v1/registry/models", headers=bearer(reader["key"]))).status_code for _ in range(6)
        ]
        assert statuses == [503] * 5 + [429]
        # A key's own limit, and each key its own budget: the bootstrap key made 4 requests.
        statuses = [(await client.get("/v1/api-keys", headers=bearer(own["key"]))).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert (await client.get("/v1/api-keys", headers=bearer(ADMIN))).status_code == 200
        # A request refused for its scope spends nothing: counting comes after 401 and 403.
        fresh = await new_key(client, ["models:read"], requests_per_minute=2)
        for _ in range(3):
            assert (await client.get("/v1/api-keys", headers=bearer(fresh["key"]))).status_code == 403
        statuses = [
            (await client.get("/v1/registry/models", headers=bearer(fresh["key"]))).status_code for _ in range(3)
        ]
        assert statuses == [503, 503, 429]


async def test_two_gateways_sharing_redis_see_one_budget(
    kafka_settings: KafkaSettings, tmp_path: Path, redis_server: RedisServer
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path}/g.db"  # replicas share their database too
    settings = gateway_settings(
        kafka_settings, database, requests_per_minute=5, rate_limit_storage_url=redis_server.url
    )
    async with running(settings) as (_, a), running(settings) as (_, b):
        key = bearer((await new_key(a, ["admin"]))["key"])
        assert [(await a.get("/v1/api-keys", headers=key)).status_code for _ in range(3)] == [200] * 3
        assert [(await b.get("/v1/api-keys", headers=key)).status_code for _ in range(2)] == [200] * 2
        assert_rate_limited(await b.get("/v1/api-keys", headers=key))
        assert_rate_limited(await a.get("/v1/api-keys", headers=key))
        assert (await a.get("/readyz")).json()["checks"]["rate_limits"] is True


async def test_each_gateway_counts_alone_in_memory(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """What Redis is for: two replicas with memory:// storage would each allow the whole budget."""
    settings = gateway_settings(kafka_settings, f"sqlite+aiosqlite:///{tmp_path}/g.db", requests_per_minute=5)
    async with running(settings) as (_, a), running(settings) as (_, b):
        key = bearer((await new_key(a, ["admin"]))["key"])
        assert [(await a.get("/v1/api-keys", headers=key)).status_code for _ in range(3)] == [200] * 3
        assert [(await b.get("/v1/api-keys", headers=key)).status_code for _ in range(3)] == [200] * 3


async def test_an_unreachable_limit_storage_is_503_and_not_ready(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    settings = gateway_settings(
        kafka_settings,
        f"sqlite+aiosqlite:///{tmp_path}/g.db",
        rate_limit_storage_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
    )
    async with running(settings) as (_, client):
        r = await client.get("/v1/api-keys", headers=bearer(ADMIN))
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert r.json()["error"]["code"] == "rate_limiter_unavailable"
        assert "127.0.0.1" not in r.text
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["rate_limits"] is False


def test_a_storage_url_that_is_not_memory_or_redis_is_refused() -> None:
    with pytest.raises(ValueError, match="LMFORGE_GATEWAY_RATE_LIMIT_STORAGE_URL") as err:
        Quotas(GatewaySettings(rate_limit_storage_url="memcached://user:hunter2@cache:11211"))
    assert "hunter2" not in str(err.value)


# --- completion tokens per key, model and UTC day ---------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def storage_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


def principal(key_id: str, **limits: int) -> Principal:
    return Principal(key_id=key_id, name="alice", scopes=frozenset({"completions"}), **limits)  # type: ignore[arg-type]


async def test_a_completion_that_could_exceed_the_days_budget_is_refused(storage_url: str, unique: str) -> None:
    quotas = Quotas(GatewaySettings(rate_limit_storage_url=storage_url, completion_tokens_per_day=100))
    alice = principal(f"a{unique}")
    await quotas.check_completion(alice, "support", 60)
    await quotas.count_completion(alice, "support", 60)
    await quotas.check_completion(alice, "support", 40)  # exactly what is left
    with pytest.raises(HTTPException) as err:
        await quotas.check_completion(alice, "support", 41)
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    assert err.value.status_code == 429 and err.value.detail["code"] == "token_quota_exceeded"
    assert abs(int(err.value.headers["Retry-After"]) - math.ceil((midnight - now).total_seconds())) <= 2
    assert "40 of its 100" in err.value.detail["message"] and "support" in err.value.detail["message"]
    # Per model and per key: another model, and another key, have their own budgets.
    await quotas.check_completion(alice, "billing", 100)
    await quotas.check_completion(principal(f"b{unique}"), "support", 100)
    # What an answer used is counted even past the budget; then nothing more is allowed today.
    await quotas.count_completion(alice, "support", 50)
    assert await quotas.tokens_used(alice, "support") == 110
    with pytest.raises(HTTPException, match="0 of its 100"):
        await quotas.check_completion(alice, "support", 1)


async def test_a_keys_own_token_budget(storage_url: str, unique: str) -> None:
    quotas = Quotas(GatewaySettings(rate_limit_storage_url=storage_url, completion_tokens_per_day=1000))
    small = principal(f"s{unique}", completion_tokens_per_day=10)
    await quotas.check_completion(small, "support", 10)
    with pytest.raises(HTTPException):
        await quotas.check_completion(small, "support", 11)
