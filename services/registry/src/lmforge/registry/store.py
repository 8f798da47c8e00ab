"""Version registration, the promotion gate and alias moves: each one transaction with its events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from lmforge.common.events import AliasMovedV1, ModelReadyV1, ModelVersionRegisteredV1, Topic

from .gate import decide
from .models import aliases, audit_log, model_versions, outbox
from .settings import RegistrySettings


class VersionNotFound(LookupError):
    pass


async def audit(
    session: AsyncSession, actor: str, action: str, model: str, *, actor_key_id: str | None = None, **details: Any
) -> None:
    await session.execute(
        audit_log.insert().values(
            at=datetime.now(UTC),
            actor=actor,
            actor_key_id=actor_key_id,
            action=action,
            model_name=model,
            details=details,
        )
    )


async def current_alias(session: AsyncSession, model: str, alias: str) -> int | None:
    return (
        await session.execute(select(aliases.c.version).where(aliases.c.model_name == model, aliases.c.alias == alias))
    ).scalar_one_or_none()


async def get_version(session: AsyncSession, model: str, version: int) -> Any:
    row = (
        await session.execute(
            select(model_versions).where(model_versions.c.model_name == model, model_versions.c.version == version)
        )
    ).first()
    if row is None:
        raise VersionNotFound(f"model {model} has no version {version}")
    return row


async def move_alias(
    session: AsyncSession,
    model: str,
    alias: str,
    version: int,
    *,
    actor: str,
    reason: str,
    actor_key_id: str | None = None,
) -> AliasMovedV1:
    """Point ``alias`` at ``version`` and announce it (inference deploys on the event).

    ``actor``/``actor_key_id``: who asked, for the audit log; an API key's name and id when the
    move came through the gateway."""
    row = await get_version(session, model, version)
    previous = await current_alias(session, model, alias)
    now = datetime.now(UTC)
    if previous is None:
        await session.execute(aliases.insert().values(model_name=model, alias=alias, version=version, updated_at=now))
    else:
        await session.execute(
            update(aliases)
            .where(aliases.c.model_name == model, aliases.c.alias == alias)
            .values(version=version, updated_at=now)
        )
    event = AliasMovedV1(
        model_name=model,
        alias=alias,
        version=version,
        previous_version=previous,
        artifact_uri=row.artifact_uri,
        reason=reason,
    )
    await outbox.add(session, Topic.MODEL_EVENTS, event, key=model)
    await audit(
        session,
        actor,
        "alias_moved",
        model,
        actor_key_id=actor_key_id,
        alias=alias,
        version=version,
        previous=previous,
        reason=reason,
    )
    return event


async def register(session: AsyncSession, ready: ModelReadyV1, settings: RegistrySettings) -> dict[str, Any] | None:
    """Register a trained model once (by run id) and promote it if it passes the gate."""
    exists = (
        await session.execute(select(model_versions.c.version).where(model_versions.c.run_id == ready.run_id))
    ).first()
    if exists:
        return None
    version = (
        await session.execute(
            select(func.coalesce(func.max(model_versions.c.version), 0)).where(
                model_versions.c.model_name == ready.model_name
            )
        )
    ).scalar_one() + 1
    alias = settings.gate_alias
    current = await current_alias(session, ready.model_name, alias)
    current_row = await get_version(session, ready.model_name, current) if current is not None else None
    gate = decide(settings.gate_rule(ready.model_name), alias, ready, current_row)
    await session.execute(
        model_versions.insert().values(
            model_name=ready.model_name,
            version=version,
            run_id=ready.run_id,
            job_id=ready.job_id,
            artifact_uri=ready.artifact_uri,
            base_model=ready.base_model,
            dataset=ready.dataset,
            dataset_version=ready.dataset_version,
            dataset_manifest_uri=ready.dataset_manifest_uri,
            hyperparameters=ready.hyperparameters.model_dump(),
            metrics=ready.metrics,
            evaluation=ready.evaluation.model_dump(mode="json") if ready.evaluation else None,
            gate=gate,
            deployment={},
            created_at=datetime.now(UTC),
        )
    )
    await outbox.add(
        session,
        Topic.MODEL_EVENTS,
        ModelVersionRegisteredV1(
            model_name=ready.model_name,
            version=version,
            run_id=ready.run_id,
            artifact_uri=ready.artifact_uri,
            metrics=ready.metrics,
        ),
        key=ready.model_name,
    )
    await audit(
        session, "registry", "version_registered", ready.model_name, version=version, run_id=ready.run_id, gate=gate
    )
    if gate["passed"]:
        await move_alias(
            session,
            ready.model_name,
            alias,
            version,
            actor="registry-gate",
            reason=f"passed gate: {gate['metric']} {gate['value']:.6g}",
        )
    return {"version": version, "gate": gate}


def version_view(row: Any) -> dict[str, Any]:
    return {
        "model_name": row.model_name,
        "version": row.version,
        "run_id": row.run_id,
        "job_id": row.job_id,
        "artifact_uri": row.artifact_uri,
        "metrics": row.metrics,
        "evaluation": row.evaluation,
        "gate": row.gate,
        "deployment": row.deployment,
        "created_at": row.created_at.isoformat(),
    }


def lineage_view(row: Any) -> dict[str, Any]:
    return version_view(row) | {
        "base_model": row.base_model,
        "hyperparameters": row.hyperparameters,
        "dataset": {"name": row.dataset, "version": row.dataset_version, "manifest_uri": row.dataset_manifest_uri},
    }


async def models_view(session: AsyncSession) -> list[dict[str, Any]]:
    """Every model with its versions (oldest first) and its aliases."""
    versions = (
        await session.execute(select(model_versions).order_by(model_versions.c.model_name, model_versions.c.version))
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


async def audit_view(session: AsyncSession, model: str) -> list[dict[str, Any]]:
    rows = (
        await session.execute(select(audit_log).where(audit_log.c.model_name == model).order_by(audit_log.c.id))
    ).all()
    return [
        {"at": r.at, "actor": r.actor, "actor_key_id": r.actor_key_id, "action": r.action, "details": r.details}
        for r in rows
    ]
