"""Reading serving state, for the HTTP routes (the reconciler writes it; ``routing.py`` holds it)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from lmforge.common.db import Database

from .models import deployments


async def get_deployment(db: Database, model: str, alias: str) -> Any | None:
    async with db.sessions() as session:
        return (
            await session.execute(
                select(deployments).where(deployments.c.model_name == model, deployments.c.alias == alias)
            )
        ).first()


async def list_deployments(db: Database) -> list[Any]:
    async with db.sessions() as session:
        return list(
            (await session.execute(select(deployments).order_by(deployments.c.model_name, deployments.c.alias))).all()
        )


async def list_serving(db: Database) -> list[Any]:
    """Rows that serve a version now."""
    async with db.sessions() as session:
        return list(
            (
                await session.execute(
                    select(deployments)
                    .where(deployments.c.serving_version.is_not(None), deployments.c.triton_model.is_not(None))
                    .order_by(deployments.c.model_name, deployments.c.alias)
                )
            ).all()
        )
