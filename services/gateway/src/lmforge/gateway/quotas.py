"""Rate limits and quotas per API key, counted by the ``limits`` library.

- **Requests**: ``requests_per_minute`` per key over every ``/v1`` route, a *moving window*: never
  more than N requests in any 60 seconds, with no double burst at a window's edge as a fixed
  window allows. It keeps one timestamp per request (at most N per key), which is cheap for
  request counts.
- **Completion tokens**: ``completion_tokens_per_day`` per key *and model*, per UTC day, a *fixed
  window* (one counter per key, model and day, the day being part of the counter's name, so the
  budget renews at midnight UTC). A moving window would keep one timestamp per token. A completion
  is refused up front when it could spend more than is left (its ``max_tokens`` times its
  prompts); what it did spend (``usage.completion_tokens``) is counted after each answer.

Over a limit: ``429`` with ``Retry-After`` (seconds until the window frees, or until midnight UTC
for tokens). The counters live in ``memory://`` (this process: the embedded default, one gateway)
or in Redis (``redis://``), shared by every replica. Limits fail closed: while the storage is
unreachable, requests get ``503`` and the gateway reports itself not ready.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from fastapi import HTTPException
from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from lmforge.common.redaction import describe_error
from lmforge.common.telemetry import get_logger

from .auth import Principal
from .settings import GatewaySettings

log = get_logger(__name__)

STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+unix", "redis+sentinel", "redis+cluster")
REQUESTS = "lmforge-requests"
COMPLETION_TOKENS = "lmforge-completion-tokens"


class SweptMemoryStorage(MemoryStorage):
    """limits' in-process storage, sweeping expired entries at most once a second.

    limits starts a sweep task after every hit, and the sweep hands each key's list of moving-window
    entries to a worker thread (``asyncio.to_thread``): a task and a thread hop per request, about
    a tenth of the gateway's CPU per completion. Expired entries never decide a limit (the moving
    window looks at the entry ``limit`` places back and compares its time; a fixed-window counter
    expires when it is read), so sweeping less often only keeps them in memory a second longer.
    """

    SWEEP_INTERVAL_S = 1.0
    _last_sweep = 0.0

    # limits' private hook (``MemoryStorage.__schedule_expiry``), called before every hit;
    # tests/gateway/test_quota_storage.py fails if a limits release renames it.
    async def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < self.SWEEP_INTERVAL_S:
            return
        self._last_sweep = now
        await super()._MemoryStorage__schedule_expiry()  # type: ignore[misc]


def open_storage(url: str) -> Storage:
    """The limits storage for ``memory://`` or ``redis://...`` (``async+`` is added here)."""
    url = url.removeprefix("async+")
    if url.partition("://")[0] not in STORAGE_SCHEMES:
        # The URL itself may hold a password: it is not repeated here.
        raise ValueError(f"LMFORGE_GATEWAY_RATE_LIMIT_STORAGE_URL: use one of {', '.join(STORAGE_SCHEMES)} (://)")
    if url == "memory://":
        return SweptMemoryStorage(wrap_exceptions=True)
    storage = storage_from_string(f"async+{url}", wrap_exceptions=True)
    assert isinstance(storage, Storage)
    return storage


def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def _seconds_to_utc_midnight(now: datetime) -> float:
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    return (midnight - now).total_seconds()


def _too_many(code: str, message: str, retry_after_s: float) -> HTTPException:
    return HTTPException(429, {"code": code, "message": message}, headers={"Retry-After": _retry_after(retry_after_s)})


class Quotas:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.storage = open_storage(settings.rate_limit_storage_url)
        self._requests = MovingWindowRateLimiter(self.storage)
        self._tokens = FixedWindowRateLimiter(self.storage)

    @asynccontextmanager
    async def _counting(self) -> AsyncIterator[None]:
        try:
            yield
        except StorageError as exc:
            log.error("rate limit storage unavailable", error=describe_error(exc))
            raise HTTPException(
                503,
                {"code": "rate_limiter_unavailable", "message": "rate limits cannot be counted right now; retry"},
                headers={"Retry-After": "5"},
            ) from exc

    async def ready(self) -> bool:
        """The storage answers (Redis: a PING); the gateway is not ready while it does not."""
        return bool(await self.storage.check())

    def limits_for(self, requests_per_minute: int | None, completion_tokens_per_day: int | None) -> tuple[int, int]:
        """The limits that apply to a key: its own where it has them, else the gateway's."""
        return (
            requests_per_minute or self.settings.requests_per_minute,
            completion_tokens_per_day or self.settings.completion_tokens_per_day,
        )

    def request_limit(self, principal: Principal) -> RateLimitItem:
        rpm, _ = self.limits_for(principal.requests_per_minute, principal.completion_tokens_per_day)
        return RateLimitItemPerMinute(rpm, namespace=REQUESTS)

    def token_budget(self, principal: Principal) -> RateLimitItem:
        _, tpd = self.limits_for(principal.requests_per_minute, principal.completion_tokens_per_day)
        return RateLimitItemPerDay(tpd, namespace=COMPLETION_TOKENS)

    async def count_request(self, principal: Principal) -> None:
        """Count one request of this key; ``429`` when it had its requests for the last minute."""
        limit = self.request_limit(principal)
        async with self._counting():
            if await self._requests.hit(limit, principal.key_id):
                return
            window = await self._requests.get_window_stats(limit, principal.key_id)
        raise _too_many(
            "rate_limited",
            f"this API key made its {limit.amount} requests of the last minute; retry after Retry-After seconds",
            window.reset_time - time.time(),
        )

    async def check_completion(self, principal: Principal, model: str, most_tokens: int) -> None:
        """``429`` when a completion that may spend ``most_tokens`` could exceed today's budget."""
        budget, now = self.token_budget(principal), datetime.now(UTC)
        counter = (principal.key_id, model, now.date().isoformat())
        async with self._counting():
            if await self._tokens.test(budget, *counter, cost=most_tokens):
                return
            left = (await self._tokens.get_window_stats(budget, *counter)).remaining
        raise _too_many(
            "token_quota_exceeded",
            f"this API key has {left} of its {budget.amount} completion tokens for model {model} left today (UTC); "
            f"this request may use up to {most_tokens}",
            _seconds_to_utc_midnight(now),
        )

    async def count_completion(self, principal: Principal, model: str, tokens: int) -> None:
        """Count the completion tokens an answer used (even past the budget: they were spent)."""
        if tokens <= 0:
            return
        counter = (principal.key_id, model, datetime.now(UTC).date().isoformat())
        async with self._counting():
            await self._tokens.hit(self.token_budget(principal), *counter, cost=tokens)

    async def tokens_used(self, principal: Principal, model: str) -> int:
        """Completion tokens this key spent on ``model`` today (UTC)."""
        counter = (principal.key_id, model, datetime.now(UTC).date().isoformat())
        async with self._counting():
            return await self.storage.get(self.token_budget(principal).key_for(*counter))
