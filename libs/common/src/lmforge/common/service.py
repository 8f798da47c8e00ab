"""The runtime every service is wired from: one start-up and shutdown order for all six.

Start: telemetry, database migrations, the producer (waiting for the broker), the consumer
runners, the outbox relay, then the service's own background loops. Every long-running loop runs
under one ``Supervisor``: restarted with backoff when it fails, counted, and reported by
``/readyz`` while it is down or stalled. Stop, in reverse: consumers drain and commit (SIGTERM
reaches this through uvicorn's lifespan shutdown), the relay publishes what is committed,
background loops are cancelled, the producer flushes, spans are exported.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from .artifacts import ArtifactStore
from .db import Database, Outbox, OutboxRelay, upgrade_database
from .kafka import BatchHandler, BrokerUnavailable, ConsumerRunner, EventProducer, Handler
from .kafka.admin import ensure_topics
from .settings import ServiceSettings
from .supervisor import Progress, Supervisor
from .telemetry import get_logger, setup_telemetry, shutdown_tracing

log = get_logger(__name__)


class ServiceRuntime:
    def __init__(
        self,
        settings: ServiceSettings,
        *,
        migrations: Path | None = None,
        outbox: Outbox | None = None,
        produces: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        self.name = settings.service_name
        # Shut tracing down at stop only if this runtime installed it (tests install their own).
        self._owns_tracing = not isinstance(trace.get_tracer_provider(), TracerProvider)
        setup_telemetry(self.name, settings.log_level)
        self.db = Database.from_settings(settings.database)
        self.producer = EventProducer(settings.kafka, source=f"lmforge/{self.name}")
        self.artifacts = ArtifactStore.from_settings(settings.artifacts)
        self.outbox = outbox
        self.relay = OutboxRelay(outbox, self.db.sessions, self.producer) if outbox is not None else None
        self._migrations = migrations
        self._produces = list(produces)
        self._consumers: list[ConsumerRunner] = []
        self._preparations: list[Callable[[], Awaitable[Any]]] = []
        sup = settings.supervision
        self.supervisor = Supervisor(
            self.name,
            stall_timeout_s=sup.stall_timeout_s,
            restart_backoff_initial_s=sup.restart_backoff_initial_s,
            restart_backoff_max_s=sup.restart_backoff_max_s,
        )
        if self.relay is not None:
            self.supervisor.add("outbox-relay", self.relay.run, progress=self.relay.progress)
        self.started = False

    def consume(
        self, group_id: str, topics: Sequence[str], handler: Handler, batch_handler: BatchHandler | None = None
    ) -> ConsumerRunner:
        """Run ``handler`` for each record of ``topics`` (``batch_handler``, where given, for a
        partition's queued records together; ``handler`` is then the one-at-a-time fallback)."""
        runner = ConsumerRunner(
            self.settings.kafka,
            group_id=group_id,
            topics=topics,
            handler=handler,
            batch_handler=batch_handler,
            producer=self.producer,
            artifacts=self.artifacts,
        )
        self._consumers.append(runner)
        self.supervisor.add(f"consumer:{group_id}", runner.run, stalled_check=runner.stalled)
        return runner

    def prepare(self, step: Callable[[], Awaitable[Any]]) -> None:
        """A step of start-up that must be over before any consumer starts (after the migrations):
        a rebuild of an index that handlers read, for example."""
        self._preparations.append(step)

    def background(
        self, name: str, loop: Callable[[], Coroutine[Any, Any, None]], *, progress: Progress | None = None
    ) -> None:
        """A long-running coroutine of the service's own: supervised, cancelled at shutdown.

        ``progress`` lets the loop say when it has work waiting and when it got some done, so a
        loop that is alive but stuck makes the service not ready."""
        self.supervisor.add(name, loop, progress=progress)

    async def start(self) -> None:
        if self._migrations is not None:
            await upgrade_database(self.db.url, self._migrations)
        await self._start_producer()
        if self.settings.kafka.create_topics and self._produces:
            await ensure_topics(self.settings.kafka, self._produces)
        for step in self._preparations:
            await step()
        for runner in self._consumers:
            await runner.start()
        self.supervisor.start()
        self.started = True
        log.info("service started", service=self.name)

    async def _start_producer(self, timeout_s: float = 60.0) -> None:
        """Wait for the broker: services may start before it in docker-compose or Kubernetes."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        delay = 0.2
        while True:
            try:
                await self.producer.start()
                return
            except BrokerUnavailable as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                log.warning("broker not reachable yet, retrying", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        self.supervisor.begin_shutdown()
        for runner in self._consumers:
            runner.request_stop()
        for runner in self._consumers:
            with contextlib.suppress(Exception):
                await runner.stop()
        if self.relay is not None:
            self.relay.stop()
            with contextlib.suppress(Exception):
                await self.relay.publish_pending()
        await self.supervisor.stop()
        await self.producer.stop()
        await self.db.dispose()
        if self._owns_tracing:
            shutdown_tracing()
        else:
            provider = trace.get_tracer_provider()
            if isinstance(provider, TracerProvider):
                provider.force_flush()
        log.info("service stopped", service=self.name)

    @contextlib.asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    def readiness(self) -> dict[str, Callable[[], Awaitable[bool]]]:
        async def broker() -> bool:
            return self.producer.started

        async def started() -> bool:
            return self.started

        async def loops() -> bool:
            return self.supervisor.ready()

        return {"database": self.db.ping, "broker": broker, "started": started, "loops": loops}
