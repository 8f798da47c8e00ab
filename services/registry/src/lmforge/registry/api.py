"""Models, versions, aliases (promotion and one-step rollback), lineage and the audit log."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from .models import aliases, audit_log, model_versions
from .store import VersionNotFound, get_version, lineage_view, move_alias, version_view

router = APIRouter()


class AliasMove(BaseModel):
    version: int = Field(ge=1)
    reason: str = Field(default="manual", max_length=500)
    actor: str = Field(default="api", max_length=200)


def _not_found(exc: Exception) -> HTTPException:
    return HTTPException(404, {"code": "not_found", "message": str(exc)})


@router.get("/models")
async def list_models(request: Request) -> list[dict[str, Any]]:
    async with request.app.state.runtime.db.sessions() as session:
        versions = (
            await session.execute(
                select(model_versions).order_by(model_versions.c.model_name, model_versions.c.version)
            )
        ).all()
        alias_rows = (await session.execute(select(aliases))).all()
    models: dict[str, dict[str, Any]] = {}
    for v in versions:
        models.setdefault(v.model_name, {"name": v.model_name, "aliases": {}, "versions": []})["versions"].append(
            version_view(v)
        )
    for a in alias_rows:
        if a.model_name in models:
            models[a.model_name]["aliases"][a.alias] = a.version
    return list(models.values())


@router.get("/models/{name}/versions/{version}")
async def read_version(request: Request, name: str, version: int) -> dict[str, Any]:
    async with request.app.state.runtime.db.sessions() as session:
        try:
            return version_view(await get_version(session, name, version))
        except VersionNotFound as exc:
            raise _not_found(exc) from exc


@router.get("/models/{name}/versions/{version}/lineage")
async def read_lineage(request: Request, name: str, version: int) -> dict[str, Any]:
    async with request.app.state.runtime.db.sessions() as session:
        try:
            return lineage_view(await get_version(session, name, version))
        except VersionNotFound as exc:
            raise _not_found(exc) from exc


@router.put("/models/{name}/aliases/{alias}")
async def put_alias(request: Request, name: str, alias: str, body: AliasMove) -> dict[str, Any]:
    """Move an alias to a version: promotion, canary, and rollback are all this one operation."""
    runtime = request.app.state.runtime
    async with runtime.db.sessions.begin() as session:
        try:
            event = await move_alias(session, name, alias, body.version, actor=body.actor, reason=body.reason)
        except VersionNotFound as exc:
            raise _not_found(exc) from exc
    runtime.relay.wake()
    return event.model_dump()


@router.get("/models/{name}/audit")
async def read_audit(request: Request, name: str) -> list[dict[str, Any]]:
    async with request.app.state.runtime.db.sessions() as session:
        rows = (
            await session.execute(select(audit_log).where(audit_log.c.model_name == name).order_by(audit_log.c.id))
        ).all()
    return [{"at": r.at.isoformat(), "actor": r.actor, "action": r.action, "details": r.details} for r in rows]
