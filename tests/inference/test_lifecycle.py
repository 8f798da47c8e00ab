"""Inference keeps the inbox contract, and keeps resyncing desired state from the registry.

- The inbox claim of an alias move commits with the desired state: when writing the desired
  state fails, the claim rolls back too, and the redelivered event is handled.
- The periodic resync with the registry keeps running after its first success, so an alias
  moved while the event was missed is still picked up. It calls the registry with the internal
  credential (the stand-in registry below refuses calls without it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import select, text

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import AliasMovedV1, Event
from lmforge.common.http import create_app
from lmforge.common.kafka import EventProducer, InboundMessage
from lmforge.common.settings import KafkaSettings
from lmforge.devstack.servers import free_port
from lmforge.inference.handlers import LifecycleHandler
from lmforge.inference.model_repository import ModelRepository
from lmforge.inference.models import deployments, inbox, metadata, outbox
from lmforge.inference.reconciler import Reconciler
from lmforge.inference.settings import InferenceSettings
from lmforge.inference.triton import TritonModels

from ..helpers import INTERNAL_AUTH, wait_until


def alias_moved(version: int) -> InboundMessage:
    value, headers = Event(
        data=AliasMovedV1(
            model_name="m",
            alias="production",
            version=version,
            previous_version=None,
            artifact_uri=f"file:///models/m/v{version}",
            reason="promote",
        ),
        source="tests",
    ).to_kafka()
    return InboundMessage("model-events", 0, version, b"m", value, tuple(headers), 0)


@pytest.fixture
async def reconciler(tmp_path: Path) -> Any:
    # Triton is never reached here (nothing listens on this port): deployments are postponed.
    settings = InferenceSettings(
        triton_grpc_url=f"127.0.0.1:{free_port()}",
        model_repository=str(tmp_path / "repo"),
        reconcile_interval_s=0.1,
        internal=INTERNAL_AUTH,
    )
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/inference.db")
    await db.create_all(metadata)
    store = ArtifactStore(str(tmp_path / "artifacts"))
    relay = OutboxRelay(outbox, db.sessions, EventProducer(KafkaSettings(), source="tests"))
    yield Reconciler(settings, db, ModelRepository(settings, store), TritonModels(settings), relay)
    await db.dispose()


async def test_a_failed_desired_state_write_rolls_back_the_claim(reconciler: Reconciler) -> None:
    db = reconciler.db
    handler = LifecycleHandler(db, "lmforge-inference", reconciler)
    event = alias_moved(3)
    async with db.engine.begin() as conn:  # the desired-state table is away: the write fails
        await conn.execute(text("ALTER TABLE deployments RENAME TO deployments_away"))
    with pytest.raises(Exception, match="deployments"):
        await handler(event)
    async with db.sessions() as s:
        assert (await s.execute(select(inbox.table))).all() == [], "no claim without the side effect"
    async with db.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE deployments_away RENAME TO deployments"))
    await handler(event)  # the redelivery
    await handler(event)  # and a duplicate, absorbed
    async with db.sessions() as s:
        rows = (await s.execute(select(deployments))).all()
        claims = (await s.execute(select(inbox.table))).all()
    assert [(r.model_name, r.alias, r.desired_version) for r in rows] == [("m", "production", 3)]
    assert len(claims) == 1


async def test_the_registry_resync_keeps_running_after_its_first_success(reconciler: Reconciler) -> None:
    registry = create_app("registry", internal=INTERNAL_AUTH)  # 401 without the internal credential
    state = {"production": 1}

    @registry.get("/models")
    async def models() -> list[dict[str, Any]]:
        versions = [{"version": v, "artifact_uri": f"file:///models/m/v{v}"} for v in (1, 2)]
        return [{"name": "m", "aliases": dict(state), "versions": versions}]

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(registry, host="127.0.0.1", port=port, log_config=None))
    serving = asyncio.create_task(server.serve())
    reconciler.settings.registry_url = f"http://127.0.0.1:{port}"
    loop = asyncio.create_task(reconciler.run_periodically())
    try:
        await wait_until(lambda: _desired(reconciler, 1))
        state["production"] = 2  # moved while its event never reached this service
        await wait_until(lambda: _desired(reconciler, 2))
    finally:
        loop.cancel()
        server.should_exit = True
        await asyncio.gather(loop, serving, return_exceptions=True)


async def _desired(reconciler: Reconciler, version: int) -> bool:
    async with reconciler.db.sessions() as s:
        row = (await s.execute(select(deployments.c.desired_version))).first()
    return row is not None and row.desired_version == version
