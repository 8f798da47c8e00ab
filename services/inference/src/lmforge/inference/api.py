"""Internal API (called by the gateway): generate, and what is deployed where."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from lmforge.common.http import error_responses
from lmforge.common.names import AliasName, ModelName

from . import store
from .triton import TritonModels, TritonRejected, TritonUnavailable

router = APIRouter(responses=error_responses(422))


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelName
    alias: AliasName = "production"
    prompt: str = Field(max_length=20_000)
    max_tokens: int = Field(default=32, ge=1, le=4096, description="at most the max_new_tokens_limit setting")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    caller: str | None = Field(
        default=None, max_length=200, description="who asks; traffic splits are sticky per caller"
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Generation(BaseModel):
    text: str
    model: str
    alias: str
    version: int
    triton_model: str
    usage: Usage


class DeploymentState(BaseModel):
    model_name: str
    alias: str
    desired_version: int
    desired_artifact_uri: str
    serving_version: int | None
    triton_model: str | None
    state: str
    failed_version: int | None
    error: str | None
    updated_at: datetime


@router.post("/generate", response_model=Generation, responses=error_responses(404, 502, 503))
async def generate(request: Request, body: GenerateRequest) -> Generation:
    settings = request.app.state.settings
    if body.max_tokens > settings.max_new_tokens_limit:
        raise HTTPException(
            422, {"code": "invalid_request", "message": f"max_tokens: at most {settings.max_new_tokens_limit}"}
        )
    row = await store.get_deployment(request.app.state.runtime.db, body.model, body.alias)
    if row is None:
        raise HTTPException(404, {"code": "model_not_found", "message": f"no model {body.model}@{body.alias}"})
    if row.serving_version is None or row.triton_model is None:
        raise HTTPException(
            503,
            {"code": "model_not_deployed", "message": f"{body.model}@{body.alias} is not serving yet ({row.state})"},
            headers={"Retry-After": "5"},
        )
    triton: TritonModels = request.app.state.triton
    try:
        gen = await triton.generate(row.triton_model, body.prompt, body.max_tokens, body.temperature)
    except TritonUnavailable as exc:
        raise HTTPException(
            503, {"code": "triton_unavailable", "message": str(exc)}, headers={"Retry-After": "5"}
        ) from exc
    except TritonRejected as exc:
        raise HTTPException(502, {"code": "triton_error", "message": str(exc)}) from exc
    return Generation(
        text=gen.text,
        model=body.model,
        alias=body.alias,
        version=row.serving_version,
        triton_model=row.triton_model,
        usage=Usage(
            prompt_tokens=gen.prompt_tokens,
            completion_tokens=gen.completion_tokens,
            total_tokens=gen.prompt_tokens + gen.completion_tokens,
        ),
    )


@router.get("/deployments", response_model=list[DeploymentState])
async def list_deployments(request: Request) -> list[DeploymentState]:
    rows = await store.list_deployments(request.app.state.runtime.db)
    return [DeploymentState.model_validate(r, from_attributes=True) for r in rows]
