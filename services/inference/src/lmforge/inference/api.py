"""Internal API (called by the gateway): generate, and what is deployed where."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from .models import deployments
from .triton import TritonModels, TritonRejected, TritonUnavailable

router = APIRouter()


class GenerateRequest(BaseModel):
    model: str = Field(min_length=1, max_length=200, description="model name")
    alias: str = Field(default="production", max_length=64)
    prompt: str = Field(max_length=20_000)
    max_tokens: int = Field(default=32, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    caller: str | None = Field(default=None, description="who asks; traffic splits are sticky per caller")


@router.post("/generate")
async def generate(request: Request, body: GenerateRequest) -> dict[str, Any]:
    settings = request.app.state.settings
    if body.max_tokens > settings.max_new_tokens_limit:
        raise HTTPException(
            422, {"code": "invalid_request", "message": f"max_tokens: at most {settings.max_new_tokens_limit}"}
        )
    async with request.app.state.runtime.db.sessions() as session:
        row = (
            await session.execute(
                select(deployments).where(deployments.c.model_name == body.model, deployments.c.alias == body.alias)
            )
        ).first()
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
    return {
        "text": gen.text,
        "model": body.model,
        "alias": body.alias,
        "version": row.serving_version,
        "triton_model": row.triton_model,
        "usage": {
            "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens,
        },
    }


@router.get("/deployments")
async def list_deployments(request: Request) -> list[dict[str, Any]]:
    async with request.app.state.runtime.db.sessions() as session:
        rows = (await session.execute(select(deployments))).mappings().all()
    return [dict(r) | {"updated_at": r["updated_at"].isoformat()} for r in rows]
