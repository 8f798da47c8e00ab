"""``training-requests`` -> a queued job (inbox + row in one transaction); ``executor.py`` runs it.

The consumer only records the job, so its offset commits at once and a long training never holds
a partition.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import select

from lmforge.common.db import Database
from lmforge.common.events import JobState, TrainingRequestedV1
from lmforge.common.kafka import InboundMessage
from lmforge.common.telemetry import inject_context

from .executor import JobExecutor
from .models import inbox, training_jobs


class TrainingRequestHandler:
    def __init__(self, db: Database, group: str, executor: JobExecutor) -> None:
        self.db = db
        self.group = group
        self.executor = executor

    async def __call__(self, msg: InboundMessage) -> None:
        event = msg.event(TrainingRequestedV1)
        req: TrainingRequestedV1 = event.data
        now = datetime.now(UTC)
        traceparent = dict(inject_context([])).get("traceparent", b"").decode() or None
        async with self.db.sessions.begin() as session:
            if not await inbox.claim(session, self.group, event.id):
                return
            exists = (
                await session.execute(select(training_jobs.c.job_id).where(training_jobs.c.job_id == req.job_id))
            ).first()
            if exists:
                return
            await session.execute(
                training_jobs.insert().values(
                    job_id=req.job_id,
                    run_id=f"run-{uuid.uuid4().hex[:12]}",
                    model_name=req.model_name,
                    dataset=req.dataset,
                    dataset_version=req.dataset_version,
                    base_model=req.base_model,
                    dataset_manifest_uri=req.dataset_manifest_uri,
                    hyperparameters=req.hyperparameters.model_dump(mode="json"),
                    # A search runs no training of its own: it is running while its trials run.
                    state=JobState.RUNNING if req.search else JobState.QUEUED,
                    search=req.search.model_dump(mode="json") if req.search else None,
                    step=0,
                    metrics={},
                    traceparent=traceparent,
                    created_at=now,
                    updated_at=now,
                )
            )
        self.executor.wake()
