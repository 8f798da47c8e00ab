"""Training jobs: status, list, cancel."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from lmforge.common.events import JobState
from lmforge.common.http import error_responses
from lmforge.common.names import JobId

from . import store

router = APIRouter(responses=error_responses(422))


class TrainingJob(BaseModel):
    job_id: str
    run_id: str
    model_name: str
    dataset: str
    dataset_version: int
    base_model: str
    dataset_manifest_uri: str
    hyperparameters: dict[str, Any]
    state: JobState
    step: int
    metrics: dict[str, float]
    artifact_uri: str | None
    evaluation: dict[str, Any] | None = Field(
        default=None,
        description="The test-split evaluation: eval set, tokenizer, metrics and the report's URI (docs/training.md).",
    )
    error: str | None
    search: dict[str, Any] | None = Field(
        default=None, description="A search job: its spec. A trial: the parameters it tries."
    )
    parent_job_id: str | None = Field(default=None, description="A trial's search job.")
    trial: int | None = Field(default=None, description="A trial's number in its search, from 0.")
    created_at: datetime
    updated_at: datetime


class MetricPoint(BaseModel):
    step: int
    metrics: dict[str, float]
    at: datetime


class MetricHistory(BaseModel):
    job_id: str
    history: list[MetricPoint] = Field(description="Progress lines in order: loss, learning_rate, eval_loss, ...")


class CancelResult(BaseModel):
    job_id: str
    state: JobState


def _view(row: Any) -> TrainingJob:
    return TrainingJob.model_validate(row, from_attributes=True)


def _not_found(job_id: str) -> HTTPException:
    return HTTPException(404, {"code": "job_not_found", "message": f"no training job {job_id}"})


@router.get("/jobs", response_model=list[TrainingJob])
async def list_jobs(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[TrainingJob]:
    return [_view(r) for r in await store.list_jobs(request.app.state.runtime.db, limit)]


@router.get("/jobs/{job_id}", response_model=TrainingJob, responses=error_responses(404))
async def get_job(request: Request, job_id: JobId) -> TrainingJob:
    row = await store.get_job(request.app.state.runtime.db, job_id)
    if row is None:
        raise _not_found(job_id)
    return _view(row)


@router.get("/jobs/{job_id}/metrics", response_model=MetricHistory, responses=error_responses(404))
async def get_metrics(request: Request, job_id: JobId) -> MetricHistory:
    """The job's metric history (for curves): every logged step's training and evaluation metrics."""
    db = request.app.state.runtime.db
    if await store.get_job(db, job_id) is None:
        raise _not_found(job_id)
    rows = await store.metric_history(db, job_id)
    return MetricHistory(job_id=job_id, history=[MetricPoint(step=r.step, metrics=r.metrics, at=r.at) for r in rows])


@router.post("/jobs/{job_id}/cancel", response_model=CancelResult, responses=error_responses(404))
async def cancel_job(request: Request, job_id: JobId) -> CancelResult:
    state = await request.app.state.executor.cancel(job_id)
    if state is None:
        raise _not_found(job_id)
    return CancelResult(job_id=job_id, state=state)
