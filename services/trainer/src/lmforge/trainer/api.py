"""Training jobs: status, list, cancel."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy import select

from .models import training_jobs

router = APIRouter()


def _public(row: Any) -> dict[str, Any]:
    return {
        "job_id": row.job_id,
        "run_id": row.run_id,
        "model_name": row.model_name,
        "dataset": row.dataset,
        "dataset_version": row.dataset_version,
        "base_model": row.base_model,
        "dataset_manifest_uri": row.dataset_manifest_uri,
        "hyperparameters": row.hyperparameters,
        "state": row.state,
        "step": row.step,
        "metrics": row.metrics,
        "artifact_uri": row.artifact_uri,
        "error": row.error,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


@router.get("/jobs")
async def list_jobs(request: Request, limit: int = 50) -> list[dict[str, Any]]:
    async with request.app.state.runtime.db.sessions() as session:
        rows = (
            await session.execute(select(training_jobs).order_by(training_jobs.c.created_at.desc()).limit(limit))
        ).all()
    return [_public(r) for r in rows]


@router.get("/jobs/{job_id}")
async def get_job(request: Request, job_id: str) -> dict[str, Any]:
    async with request.app.state.runtime.db.sessions() as session:
        row = (await session.execute(select(training_jobs).where(training_jobs.c.job_id == job_id))).first()
    if row is None:
        raise HTTPException(404, {"code": "job_not_found", "message": f"no training job {job_id}"})
    return _public(row)


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    state = await request.app.state.executor.cancel(job_id)
    if state is None:
        raise HTTPException(404, {"code": "job_not_found", "message": f"no training job {job_id}"})
    return {"job_id": job_id, "state": state}
