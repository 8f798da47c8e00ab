"""Reading training jobs, for the HTTP routes (the executor and the handler write them)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from lmforge.common.db import Database

from .models import training_jobs, training_metrics


async def list_jobs(db: Database, limit: int) -> list[Any]:
    """The newest ``limit`` jobs, newest first."""
    query = select(training_jobs).order_by(training_jobs.c.created_at.desc()).limit(limit)
    async with db.sessions() as session:
        return list((await session.execute(query)).all())


async def get_job(db: Database, job_id: str) -> Any | None:
    async with db.sessions() as session:
        return (await session.execute(select(training_jobs).where(training_jobs.c.job_id == job_id))).first()


async def metric_history(db: Database, job_id: str) -> list[Any]:
    """Every progress line of the job, in order: loss, learning rate and eval metrics by step."""
    query = select(training_metrics).where(training_metrics.c.job_id == job_id).order_by(training_metrics.c.id)
    async with db.sessions() as session:
        return list((await session.execute(query)).all())
