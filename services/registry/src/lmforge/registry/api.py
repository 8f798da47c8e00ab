"""Models, versions, aliases (promotion and one-step rollback), lineage and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from lmforge.common.events import AliasMovedV1
from lmforge.common.http import CallerPrincipal, caller_principal, error_responses
from lmforge.common.names import NO_NUL_PATTERN, AliasName, ModelName, VersionNumber

from .store import VersionNotFound, audit_view, get_version, lineage_view, models_view, move_alias, version_view

router = APIRouter(responses=error_responses(422))


class AliasMove(BaseModel):
    """Who moves the alias is not the body's to say: it is the caller's ``X-Lmforge-Principal``."""

    model_config = ConfigDict(extra="forbid")

    version: VersionNumber
    reason: str = Field(default="manual", max_length=500, pattern=NO_NUL_PATTERN)


class ModelVersion(BaseModel):
    model_name: str
    version: int
    run_id: str
    job_id: str
    artifact_uri: str
    metrics: dict[str, float]
    evaluation: dict[str, Any] | None = Field(
        default=None, description="The test-split evaluation: eval set, tokenizer, metrics, the report's URI."
    )
    gate: dict[str, Any]
    deployment: dict[str, Any]
    created_at: datetime


class Model(BaseModel):
    name: str
    aliases: dict[str, int]
    versions: list[ModelVersion]


class LineageDataset(BaseModel):
    name: str
    version: int
    manifest_uri: str


class Lineage(ModelVersion):
    base_model: str
    hyperparameters: dict[str, Any]
    dataset: LineageDataset


class AuditEntry(BaseModel):
    at: datetime
    actor: str = Field(
        description="An API key's name, `internal` or the registry itself (`registry`, `registry-gate`)."
    )
    actor_key_id: str | None = Field(description="The API key's id, for moves made through the gateway.")
    action: str
    details: dict[str, Any]


# A call with the internal credential but no principal: an operator or a service acting for itself.
INTERNAL_ACTOR = "internal"


def _not_found(exc: Exception) -> HTTPException:
    return HTTPException(404, {"code": "not_found", "message": str(exc)})


@router.get("/models", response_model=list[Model])
async def list_models(request: Request) -> Any:
    async with request.app.state.runtime.db.sessions() as session:
        return await models_view(session)


@router.get("/models/{name}/versions/{version}", response_model=ModelVersion, responses=error_responses(404))
async def read_version(request: Request, name: ModelName, version: VersionNumber) -> Any:
    async with request.app.state.runtime.db.sessions() as session:
        try:
            return version_view(await get_version(session, name, version))
        except VersionNotFound as exc:
            raise _not_found(exc) from exc


@router.get("/models/{name}/versions/{version}/lineage", response_model=Lineage, responses=error_responses(404))
async def read_lineage(request: Request, name: ModelName, version: VersionNumber) -> Any:
    async with request.app.state.runtime.db.sessions() as session:
        try:
            return lineage_view(await get_version(session, name, version))
        except VersionNotFound as exc:
            raise _not_found(exc) from exc


@router.put("/models/{name}/aliases/{alias}", response_model=AliasMovedV1, responses=error_responses(400, 404))
async def put_alias(
    request: Request,
    name: ModelName,
    alias: AliasName,
    body: AliasMove,
    who: Annotated[CallerPrincipal | None, Depends(caller_principal)],
) -> AliasMovedV1:
    """Move an alias to a version: promotion, canary, and rollback are all this one operation.

    The audit log names the principal the gateway authenticated (``X-Lmforge-Principal``).
    """
    runtime = request.app.state.runtime
    actor, actor_key_id = (who.name, who.key_id) if who is not None else (INTERNAL_ACTOR, None)
    async with runtime.db.sessions.begin() as session:
        try:
            event = await move_alias(
                session, name, alias, body.version, actor=actor, actor_key_id=actor_key_id, reason=body.reason
            )
        except VersionNotFound as exc:
            raise _not_found(exc) from exc
    runtime.relay.wake()
    return event


@router.get("/models/{name}/audit", response_model=list[AuditEntry])
async def read_audit(request: Request, name: ModelName) -> Any:
    async with request.app.state.runtime.db.sessions() as session:
        return await audit_view(session, name)
