"""The devstack's extra real servers answer as the tests that use them expect."""

from __future__ import annotations

import coredis

from lmforge.devstack.servers import RedisServer


async def test_redis_server_answers_and_keeps_nothing_on_disk(redis_server: RedisServer) -> None:
    client = coredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert await client.ping() == "PONG"
        await client.set("lmforge:probe", "1")
        assert await client.get("lmforge:probe") == "1"
        config = await client.config_get(["save", "appendonly", "dir"])
        assert config == {"save": "", "appendonly": "no", "dir": str(redis_server.workdir)}
    finally:
        client.connection_pool.disconnect()
