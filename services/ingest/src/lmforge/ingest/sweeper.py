"""The sweeper: publishes raw records that were stored but never acknowledged by the broker.

``POST /records`` stores records, then publishes them and answers 202 only after the broker's ack.
When the broker is away the client gets 503 and the rows stay unpublished; if the client never
retries, or the process dies between commit and ack, only this sweeper publishes them. It takes
the oldest first (in id order), with their fixed event ids, so downstream inboxes absorb a
record published twice. ``lmforge_ingest_unpublished_oldest_seconds`` says how long the oldest
has waited; the supervisor reports the sweeper stalled while rows wait and none gets out.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Gauge

from lmforge.common.kafka import BrokerUnavailable
from lmforge.common.supervisor import Progress
from lmforge.common.telemetry import get_logger

from .settings import IngestSettings
from .store import RawRecordStore

log = get_logger(__name__)

unpublished_oldest_seconds = Gauge(
    "lmforge_ingest_unpublished_oldest_seconds", "Age of the oldest stored raw record not yet published."
)


class UnpublishedSweeper:
    def __init__(self, settings: IngestSettings, store: RawRecordStore) -> None:
        self.settings = settings
        self.store = store
        self.progress = Progress()

    async def sweep_once(self) -> int:
        """One pass: publish up to a batch of stranded rows. Returns how many got out."""
        s = self.settings
        try:
            published, oldest_age = await self.store.publish_stranded(s.sweep_grace_s, s.sweep_batch_size)
        except BrokerUnavailable as exc:
            log.warning("sweeper: broker unavailable, will retry", error=str(exc))
            published, oldest_age = 0, await self.store.oldest_unpublished_age_s()
        unpublished_oldest_seconds.set(oldest_age)
        if published:
            log.info("sweeper published stranded records", count=published)
            self.progress.advanced()
        # Work waits when a row older than the grace period is still unpublished.
        self.progress.backlog(1 if oldest_age > s.sweep_grace_s else 0)
        return published

    async def run(self) -> None:
        while True:
            published = await self.sweep_once()
            if published < self.settings.sweep_batch_size:
                await asyncio.sleep(self.settings.sweep_interval_s)
