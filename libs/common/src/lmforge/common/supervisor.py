"""Supervision of a service's long-running loops: restart with backoff, count failures, report.

Every long-running coroutine of a service (consumer runners, the outbox relay, the ingest
sweeper, the trainer's executor, the inference reconciler) runs under a ``Supervisor``:

- a loop that raises is logged, counted in ``lmforge_loop_failures_total{service,loop}`` and
  restarted after an exponential backoff; a loop that returns while the service is running is
  restarted the same way (a loop is meant to run until shutdown);
- ``/readyz`` reports not-ready while a loop is down (between a failure and its restart) or
  stalled: it has work waiting (lag, unpublished rows) and has made no progress for
  ``stall_timeout_s``. ``/healthz`` stays a liveness probe and ignores loops.

A loop reports progress through its ``Progress`` (``advanced()`` when work got done,
``backlog(n)`` with the work still waiting).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from . import metrics
from .redaction import describe_error
from .telemetry import get_logger

log = get_logger(__name__)

LoopFactory = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class Progress:
    """What a loop tells its supervisor: when it last got work done, and how much waits."""

    last_advanced: float = field(default_factory=time.monotonic)
    waiting: int = 0

    def advanced(self) -> None:
        self.last_advanced = time.monotonic()

    def backlog(self, waiting: int) -> None:
        if waiting <= 0 < self.waiting:
            self.last_advanced = time.monotonic()  # caught up counts as progress
        self.waiting = max(0, waiting)

    def stalled_for(self) -> float:
        """Seconds without progress while work was waiting (0 when nothing waits)."""
        return time.monotonic() - self.last_advanced if self.waiting > 0 else 0.0


@dataclass
class SupervisedLoop:
    name: str
    factory: LoopFactory
    progress: Progress
    # Extra stall detection for loops that track progress in finer pieces (e.g. per partition).
    stalled_check: Callable[[float], bool] | None = None
    running: bool = False
    failures: int = 0
    last_error: str | None = None
    task: asyncio.Task[None] | None = None

    def stalled(self, timeout_s: float) -> bool:
        if self.progress.stalled_for() > timeout_s:
            return True
        return self.stalled_check is not None and self.stalled_check(timeout_s)


class Supervisor:
    def __init__(
        self,
        service: str,
        *,
        stall_timeout_s: float = 120.0,
        restart_backoff_initial_s: float = 0.5,
        restart_backoff_max_s: float = 30.0,
    ) -> None:
        self.service = service
        self.stall_timeout_s = stall_timeout_s
        self.backoff_initial_s = restart_backoff_initial_s
        self.backoff_max_s = restart_backoff_max_s
        self.loops: dict[str, SupervisedLoop] = {}
        self._stopping = False

    def add(
        self,
        name: str,
        factory: LoopFactory,
        *,
        progress: Progress | None = None,
        stalled_check: Callable[[float], bool] | None = None,
    ) -> SupervisedLoop:
        if name in self.loops:
            raise ValueError(f"a loop named {name!r} is already supervised")
        loop = SupervisedLoop(name, factory, progress or Progress(), stalled_check)
        self.loops[name] = loop
        return loop

    def start(self) -> None:
        self._stopping = False
        for loop in self.loops.values():
            if loop.task is None or loop.task.done():
                loop.task = asyncio.create_task(self._supervise(loop), name=f"{self.service}:{loop.name}")

    def begin_shutdown(self) -> None:
        """From now on a loop that returns has finished: it is not restarted."""
        self._stopping = True

    async def stop(self) -> None:
        """Cancel every loop and wait for them (their own clean-up runs on cancellation)."""
        self._stopping = True
        tasks = [loop.task for loop in self.loops.values() if loop.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _supervise(self, loop: SupervisedLoop) -> None:
        failures_metric = metrics.loop_failures.labels(self.service, loop.name)
        up_metric = metrics.loop_up.labels(self.service, loop.name)
        delay = self.backoff_initial_s
        while not self._stopping:
            loop.running = True
            up_metric.set(1)
            started = time.monotonic()
            try:
                await loop.factory()
            except asyncio.CancelledError:
                loop.running = False
                up_metric.set(0)
                raise
            except Exception as exc:  # the point of a supervisor: log, count, restart
                loop.last_error = describe_error(exc, limit=500)
                log.exception("supervised loop failed; restarting", loop=loop.name, retry_in_s=delay)
            else:
                if self._stopping:
                    break
                loop.last_error = "returned while the service was running"
                log.error("supervised loop returned; restarting", loop=loop.name, retry_in_s=delay)
            loop.running = False
            up_metric.set(0)
            loop.failures += 1
            failures_metric.inc()
            # A loop that ran well for a while starts its backoff afresh.
            if time.monotonic() - started > self.backoff_max_s:
                delay = self.backoff_initial_s
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)
        loop.running = False
        up_metric.set(0)

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            loop.name: {
                "running": loop.running,
                "stalled": loop.stalled(self.stall_timeout_s),
                "failures": loop.failures,
                "last_error": loop.last_error,
            }
            for loop in self.loops.values()
        }

    def ready(self) -> bool:
        """Every loop is up and none is stalled."""
        return all(loop.running and not loop.stalled(self.stall_timeout_s) for loop in self.loops.values())
