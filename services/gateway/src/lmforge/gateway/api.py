"""The public API, ``/v1``: every route names the scope it needs."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from lmforge.common.events import Hyperparameters, Topic, TrainingRequestedV1
from lmforge.common.http import payload_too_large
from lmforge.common.kafka import EventProducer

from .auth import Principal, Scope, create_key, require
from .downstream import Downstream

router = APIRouter(prefix="/v1")


def _downstream(request: Request) -> Downstream:
    return request.app.state.downstream  # type: ignore[no-any-return]


@router.post("/records", status_code=202)
async def post_records(request: Request, _: Annotated[Principal, Depends(require(Scope.RECORDS_WRITE))]) -> Response:
    """One record, a JSON array, JSONL, or a multipart JSONL upload; forwarded to ingest as is."""
    limit = request.app.state.settings.max_request_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise payload_too_large(f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise payload_too_large(f"request body over {limit} bytes")
    headers = {"content-type": request.headers.get("content-type", "application/json")}
    return await _downstream(request).forward("ingest", "POST", "/records", content=bytes(body), headers=headers)


class DatasetVersionRequest(BaseModel):
    sources: list[str] | None = None


@router.post("/datasets/{name}/versions", status_code=201)
async def create_dataset_version(
    request: Request,
    name: str,
    _: Annotated[Principal, Depends(require(Scope.DATASETS_WRITE))],
    body: DatasetVersionRequest | None = None,
) -> Response:
    return await _downstream(request).forward(
        "preprocess", "POST", f"/datasets/{name}/versions", json=(body or DatasetVersionRequest()).model_dump()
    )


@router.get("/datasets/{name}/versions/{version}")
async def get_dataset_version(
    request: Request, name: str, version: int, _: Annotated[Principal, Depends(require(Scope.DATASETS_READ))]
) -> Response:
    return await _downstream(request).forward("preprocess", "GET", f"/datasets/{name}/versions/{version}")


@router.get("/pipeline/stats")
async def pipeline_stats(request: Request, _: Annotated[Principal, Depends(require(Scope.DATASETS_READ))]) -> Response:
    """How many records preprocess has cleaned, and dropped (duplicates, empty after cleaning)."""
    return await _downstream(request).forward("preprocess", "GET", "/stats")


class TrainingJobRequest(BaseModel):
    model_name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,99}$")
    dataset: str
    dataset_version: int = Field(ge=1)
    base_model: str = "builtin:tiny-gpt2"
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


@router.post("/training-jobs", status_code=202)
async def create_training_job(
    request: Request, body: TrainingJobRequest, who: Annotated[Principal, Depends(require(Scope.TRAINING_WRITE))]
) -> dict[str, Any]:
    """Check the dataset version exists, then publish the request; 202 after the broker's ack."""
    versions = await _downstream(request).json("preprocess", "GET", f"/datasets/{body.dataset}/versions")
    match = next((v for v in versions if v["version"] == body.dataset_version), None)
    if match is None:
        raise HTTPException(
            404,
            {
                "code": "dataset_version_not_found",
                "message": f"dataset {body.dataset} has no version {body.dataset_version}",
            },
        )
    job_id = f"job-{uuid.uuid4().hex[:12]}"
    producer: EventProducer = request.app.state.runtime.producer
    await producer.publish(
        Topic.TRAINING_REQUESTS,
        TrainingRequestedV1(
            job_id=job_id,
            model_name=body.model_name,
            dataset=body.dataset,
            dataset_version=body.dataset_version,
            dataset_manifest_uri=match["manifest_uri"],
            base_model=body.base_model,
            hyperparameters=body.hyperparameters,
            requested_by=who.name,
        ),
        key=body.model_name,
    )
    return {"job_id": job_id, "state": "requested", "status_url": f"/v1/training-jobs/{job_id}"}


@router.get("/training-jobs/{job_id}")
async def get_training_job(
    request: Request, job_id: str, _: Annotated[Principal, Depends(require(Scope.TRAINING_READ))]
) -> Response:
    return await _downstream(request).forward("trainer", "GET", f"/jobs/{job_id}")


@router.post("/training-jobs/{job_id}/cancel")
async def cancel_training_job(
    request: Request, job_id: str, _: Annotated[Principal, Depends(require(Scope.TRAINING_WRITE))]
) -> Response:
    return await _downstream(request).forward("trainer", "POST", f"/jobs/{job_id}/cancel")


@router.get("/models")
async def list_models(request: Request, _: Annotated[Principal, Depends(require(Scope.MODELS_READ))]) -> Response:
    return await _downstream(request).forward("registry", "GET", "/models")


class AliasRequest(BaseModel):
    version: int = Field(ge=1)
    reason: str = Field(default="manual", max_length=500)


@router.put("/models/{name}/aliases/{alias}")
async def move_alias(
    request: Request,
    name: str,
    alias: str,
    body: AliasRequest,
    who: Annotated[Principal, Depends(require(Scope.MODELS_WRITE))],
) -> Response:
    """Promote or roll back: point an alias at a version (inference deploys it)."""
    return await _downstream(request).forward(
        "registry", "PUT", f"/models/{name}/aliases/{alias}", json=body.model_dump() | {"actor": who.name}
    )


@router.get("/models/{name}/versions/{version}/lineage")
async def lineage(
    request: Request, name: str, version: int, _: Annotated[Principal, Depends(require(Scope.MODELS_READ))]
) -> dict[str, Any]:
    """The version, its run and hyperparameters, and its dataset version down to the record ids."""
    down = _downstream(request)
    info = await down.json("registry", "GET", f"/models/{name}/versions/{version}/lineage")
    ds = info["dataset"]
    manifest = await down.json("preprocess", "GET", f"/datasets/{ds['name']}/versions/{ds['version']}")
    info["dataset"] |= {k: manifest[k] for k in ("record_count", "split_counts", "config_hash", "source_offsets")}
    info["dataset"]["record_ids"] = [r["record_id"] for r in manifest["records"]]
    return info


class CompletionRequest(BaseModel):
    """The OpenAI completions request (the fields lmforge honours)."""

    model: str = Field(description="model name, optionally name@alias (default alias: production)")
    prompt: str | list[str]
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    user: str | None = None


@router.post("/completions")
async def completions(
    request: Request, body: CompletionRequest, who: Annotated[Principal, Depends(require(Scope.COMPLETIONS))]
) -> dict[str, Any]:
    model, _, alias = body.model.partition("@")
    prompts = body.prompt if isinstance(body.prompt, list) else [body.prompt]
    if not prompts or len(prompts) > 16:
        raise HTTPException(422, {"code": "invalid_request", "message": "prompt: 1 to 16 prompts"})
    choices, usage, served = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, None
    down = _downstream(request)
    for i, prompt in enumerate(prompts):
        out = await down.json(
            "inference",
            "POST",
            "/generate",
            json={
                "model": model,
                "alias": alias or "production",
                "prompt": prompt,
                "max_tokens": body.max_tokens,
                "temperature": body.temperature,
                "caller": body.user or who.key_id,
            },
            timeout=down.settings.completion_timeout_s,
        )
        served = out
        choices.append(
            {
                "text": out["text"],
                "index": i,
                "logprobs": None,
                "finish_reason": "length" if out["usage"]["completion_tokens"] >= body.max_tokens else "stop",
            }
        )
        for k in usage:
            usage[k] += out["usage"][k]
    assert served is not None
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": f"{model}@v{served['version']}",
        "choices": choices,
        "usage": usage,
        "lmforge": {
            "model": model,
            "alias": served["alias"],
            "version": served["version"],
            "triton_model": served["triton_model"],
        },
    }


class ApiKeyRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope]


@router.post("/api-keys", status_code=201)
async def create_api_key(
    request: Request, body: ApiKeyRequest, _: Annotated[Principal, Depends(require(Scope.ADMIN))]
) -> dict[str, Any]:
    key = await create_key(request.app.state.runtime.db, body.name, [s.value for s in body.scopes])
    return {"name": body.name, "scopes": body.scopes, "key": key, "note": "shown once; only its hash is stored"}
