"""The response cache on its own: keys, the in-process LRU's bounds and expiry, and Redis (the
real ``redis-server``), shared by replicas and expiring with the TTL; a Redis that is away makes
lookups misses instead of failures."""

from __future__ import annotations

import asyncio

import pytest

from lmforge.devstack.servers import RedisServer, free_port
from lmforge.inference.cache import CachedAnswer, MemoryCache, NoCache, RedisCache, build_cache, cache_key
from lmforge.inference.settings import InferenceSettings
from lmforge.inference.triton import GenerationRequest

ANSWER = CachedAnswer(text="hi there", finish_reason="stop", prompt_tokens=3, completion_tokens=2)


def test_only_greedy_requests_have_a_key_and_every_answer_deciding_field_is_in_it() -> None:
    base = GenerationRequest(prompt="hello", max_tokens=8)
    key = cache_key("m-v1", base)
    assert key is not None and "m-v1" in key
    assert cache_key("m-v1", GenerationRequest(prompt="hello", max_tokens=8, temperature=0.7)) is None
    # The seed and streaming do not change a greedy answer.
    assert cache_key("m-v1", GenerationRequest(prompt="hello", max_tokens=8, seed=5, stream=True)) == key
    others = [
        cache_key("m-v2", base),  # another version: a promotion never finds v1's answers
        cache_key("m-v1", GenerationRequest(prompt="hello!", max_tokens=8)),
        cache_key("m-v1", GenerationRequest(prompt="hello", max_tokens=9)),
        cache_key("m-v1", GenerationRequest(prompt="hello", max_tokens=8, top_p=0.9)),
        cache_key("m-v1", GenerationRequest(prompt="hello", max_tokens=8, stop=["."])),
        cache_key("m-v1", GenerationRequest(messages=[{"role": "user", "content": "hello"}], max_tokens=8)),
    ]
    assert len({key, *others}) == 1 + len(others)


async def test_memory_cache_is_an_lru_bounded_by_entries_and_bytes() -> None:
    cache = MemoryCache(max_entries=2, max_bytes=10_000, ttl_s=60)
    for k in ("a", "b"):
        await cache.put(k, ANSWER)
    assert await cache.get("a") == ANSWER  # "a" is now the most recently used
    await cache.put("c", ANSWER)
    assert [await cache.get(k) for k in ("a", "b", "c")] == [ANSWER, None, ANSWER]

    big = CachedAnswer("x" * 400, "length", 1, 100)
    by_bytes = MemoryCache(max_entries=100, max_bytes=1000, ttl_s=60)
    for k in "abc":
        await by_bytes.put(k, big)
    assert len(by_bytes) == 2 and by_bytes.bytes <= 1000
    assert await by_bytes.get("a") is None
    await by_bytes.put("huge", CachedAnswer("x" * 2000, "length", 1, 500))  # larger than the whole cache
    assert await by_bytes.get("huge") is None and len(by_bytes) == 2


async def test_memory_cache_entries_expire() -> None:
    cache = MemoryCache(max_entries=10, max_bytes=10_000, ttl_s=0.05)
    await cache.put("a", ANSWER)
    assert await cache.get("a") == ANSWER
    await asyncio.sleep(0.1)
    assert await cache.get("a") is None and len(cache) == 0


async def test_redis_cache_is_shared_and_expires(redis_server: RedisServer) -> None:
    settings = InferenceSettings(cache_url=redis_server.url, cache_ttl_s=1)
    replica_a, replica_b = build_cache(settings), build_cache(settings)
    assert isinstance(replica_a, RedisCache)
    key = cache_key("shared-v1", GenerationRequest(prompt="hello", max_tokens=4))
    assert key is not None
    try:
        assert await replica_b.get(key) is None
        await replica_a.put(key, ANSWER)
        assert await replica_b.get(key) == ANSWER
        assert 0 < await replica_a.client.ttl(key) <= 1
        await asyncio.sleep(1.5)
        assert await replica_b.get(key) is None
    finally:
        await replica_a.close()
        await replica_b.close()


async def test_a_redis_that_is_away_is_a_miss_not_a_failure() -> None:
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", ttl_s=60, timeout_s=0.5)
    try:
        await cache.put("k", ANSWER)
        assert await cache.get("k") is None
    finally:
        await cache.close()


@pytest.mark.parametrize(("url", "kind"), [("memory://", MemoryCache), ("off", NoCache)])
def test_the_setting_picks_the_store(url: str, kind: type) -> None:
    assert isinstance(build_cache(InferenceSettings(cache_url=url)), kind)


def test_unknown_cache_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="cache_url"):
        InferenceSettings(cache_url="memcached://x")
