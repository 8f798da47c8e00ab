"""The response cache: answers of deterministic requests, replayed without calling Triton.

Only greedy requests (temperature 0) are cached: everything else samples. The key is an exact
match on what decides a greedy answer: the Triton model (``<name>-v<version>``, so a promotion or
a rollback never finds another version's answer), chat or not, the prompt or messages,
``max_tokens``, ``top_p`` and ``stop``. The seed and ``stream`` do not change a greedy answer.

Two stores behind one interface (setting ``cache_url``):

- ``memory://``: this process only, an LRU bounded by entries and by bytes, entries expire after
  ``cache_ttl_s``.
- ``redis://host:port/db``: shared by every replica, entries expire after ``cache_ttl_s``. The
  cache only saves work: while Redis is away a lookup is a miss and a store is skipped, and the
  request is served by Triton.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from lmforge.common.telemetry import get_logger

from .settings import InferenceSettings
from .triton import GenerationRequest

log = get_logger(__name__)

KEY_PREFIX = "lmforge:inference:cache:"


@dataclass(frozen=True)
class CachedAnswer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def encode(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer:
        return cls(**json.loads(raw))


def cache_key(triton_model: str, request: GenerationRequest) -> str | None:
    """The key of a cacheable request, or None when its answer may differ from call to call."""
    if request.temperature != 0.0:
        return None
    what = {
        "chat": request.chat,
        "prompt": [dict(m) for m in request.messages] if request.messages is not None else request.prompt,
        "max_tokens": request.max_tokens,
        "top_p": request.top_p,
        "stop": list(request.stop),
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return f"{KEY_PREFIX}{triton_model}:{digest}"


class ResponseCache(Protocol):
    async def get(self, key: str) -> CachedAnswer | None: ...

    async def put(self, key: str, answer: CachedAnswer) -> None: ...

    async def close(self) -> None: ...


class NoCache:
    async def get(self, key: str) -> CachedAnswer | None:
        return None

    async def put(self, key: str, answer: CachedAnswer) -> None:
        return None

    async def close(self) -> None:
        return None


class MemoryCache:
    """An in-process LRU: at most ``max_entries`` answers and ``max_bytes`` of them, each for ``ttl_s``."""

    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, raw = entry
        if expires <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return CachedAnswer.decode(raw)

    async def put(self, key: str, answer: CachedAnswer) -> None:
        raw = answer.encode()
        size = len(raw) + len(key)
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (time.monotonic() + self.ttl_s, raw)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, raw = self._entries.pop(key)
        self.bytes -= len(raw) + len(key)

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0


class RedisCache:
    """Answers in Redis with a TTL; Redis failures read as misses (and are logged)."""

    def __init__(self, url: str, ttl_s: int, timeout_s: float = 1.0) -> None:
        import coredis

        self.ttl_s = ttl_s
        self.client: Any = coredis.Redis.from_url(url, stream_timeout=timeout_s, connect_timeout=timeout_s)

    async def get(self, key: str) -> CachedAnswer | None:
        try:
            raw = await self.client.get(key)
        except Exception as exc:  # noqa: BLE001 - the cache only saves work; Triton answers instead
            log.warning("response cache unavailable; lookup skipped", error=type(exc).__name__)
            return None
        return None if raw is None else CachedAnswer.decode(raw)

    async def put(self, key: str, answer: CachedAnswer) -> None:
        try:
            await self.client.set(key, answer.encode(), ex=self.ttl_s)
        except Exception as exc:  # noqa: BLE001 - see get
            log.warning("response cache unavailable; answer not stored", error=type(exc).__name__)

    async def close(self) -> None:
        self.client.connection_pool.disconnect()


def build_cache(settings: InferenceSettings) -> ResponseCache:
    if settings.cache_url == "off":
        return NoCache()
    if settings.cache_url == "memory://":
        return MemoryCache(settings.cache_max_entries, settings.cache_max_bytes, settings.cache_ttl_s)
    return RedisCache(settings.cache_url, settings.cache_ttl_s)
