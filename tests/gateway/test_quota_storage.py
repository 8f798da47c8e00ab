"""The in-memory rate-limit storage (``quotas.SweptMemoryStorage``): limits' own, with its sweep of
expired entries run at most once a second instead of after every hit. The limits it enforces are
the same; expired entries still leave memory."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from lmforge.gateway.quotas import SweptMemoryStorage, open_storage


def test_memory_is_the_swept_storage_and_the_hook_it_overrides_exists() -> None:
    assert isinstance(open_storage("memory://"), SweptMemoryStorage)
    assert not isinstance(open_storage("redis://127.0.0.1:1/0"), SweptMemoryStorage)
    # The private hook the subclass overrides: a limits release that renames it must be noticed.
    assert callable(getattr(MemoryStorage, "_MemoryStorage__schedule_expiry", None))


async def test_a_hundred_hits_start_one_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    sweeps = 0
    schedule = MemoryStorage._MemoryStorage__schedule_expiry  # type: ignore[attr-defined]

    async def counting(self: Any) -> None:
        nonlocal sweeps
        sweeps += 1
        await schedule(self)

    monkeypatch.setattr(MemoryStorage, "_MemoryStorage__schedule_expiry", counting)
    limiter = MovingWindowRateLimiter(SweptMemoryStorage())
    for _ in range(100):
        assert await limiter.hit(RateLimitItemPerMinute(1000), "key")
    assert sweeps == 1


async def test_the_limits_are_the_same_and_expired_entries_leave_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SweptMemoryStorage, "SWEEP_INTERVAL_S", 0.2)
    storage = SweptMemoryStorage()
    moving, fixed = MovingWindowRateLimiter(storage), FixedWindowRateLimiter(storage)
    per_second = RateLimitItemPerSecond(3)
    assert [await moving.hit(per_second, "a") for _ in range(4)] == [True, True, True, False]
    stats = await moving.get_window_stats(per_second, "a")
    assert stats.remaining == 0
    assert await fixed.hit(RateLimitItemPerMinute(5), "b", cost=5)
    assert not await fixed.test(RateLimitItemPerMinute(5), "b", cost=1)
    await asyncio.sleep(1.1)  # the window moved on: the limit frees, and the next hit sweeps
    assert await moving.hit(per_second, "a")
    await asyncio.sleep(0.3)
    await moving.hit(per_second, "c")  # a hit after the interval starts a sweep
    await asyncio.sleep(0.1)
    assert len(storage.events.get(per_second.key_for("a"), [])) <= 1
