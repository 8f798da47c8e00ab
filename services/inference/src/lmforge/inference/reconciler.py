"""The reconciler: make Triton serve what the registry's aliases point at.

Runs on every lifecycle event, at start-up (desired state from the registry), and every
``reconcile_interval_s`` (a restarted Triton forgets what it had loaded). A failed deployment
is reported and leaves the previously serving version in place.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import DeploymentResultV1, DeploymentState, Topic
from lmforge.common.http import internal_headers
from lmforge.common.telemetry import get_logger, tracer

from . import metrics
from .model_repository import ModelRepository, triton_model_name
from .models import deployments, outbox
from .routing import Routing
from .settings import InferenceSettings
from .triton import GenerationRequest, TritonModels, TritonRejected, TritonUnavailable

log = get_logger(__name__)

# Where a Hugging Face config states the context window (prompt + new tokens), by model family.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")
SMOKE = GenerationRequest(prompt="Hello", max_tokens=1)


def context_length(model_folder: Path) -> int | None:
    """The context window from the weights' ``config.json`` (None when it states none)."""
    for config in sorted(model_folder.rglob("config.json")):
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        for source in (data, data.get("text_config") or {}):
            for key in CONTEXT_KEYS:
                value = source.get(key) if isinstance(source, dict) else None
                if isinstance(value, int) and value > 0:
                    return value
    return None


async def set_desired(session: AsyncSession, model: str, alias: str, version: int, artifact_uri: str) -> None:
    """Record which version an alias should serve, in the caller's transaction."""
    now = datetime.now(UTC)
    where = (deployments.c.model_name == model, deployments.c.alias == alias)
    exists = (await session.execute(select(deployments.c.model_name).where(*where))).first()
    if exists:
        await session.execute(
            update(deployments)
            .where(*where)
            .values(desired_version=version, desired_artifact_uri=artifact_uri, updated_at=now)
        )
    else:
        await session.execute(
            deployments.insert().values(
                model_name=model,
                alias=alias,
                desired_version=version,
                desired_artifact_uri=artifact_uri,
                state="pending",
                updated_at=now,
            )
        )


class Reconciler:
    def __init__(
        self,
        settings: InferenceSettings,
        db: Database,
        repository: ModelRepository,
        triton: TritonModels,
        relay: OutboxRelay,
    ) -> None:
        self.settings = settings
        self.db = db
        self.repository = repository
        self.triton = triton
        self.relay = relay
        self._lock = asyncio.Lock()
        self.passes = 0
        # What /generate routes by; every write to the deployments table below invalidates it.
        self.routing = Routing(db, settings.routing_cache_ttl_s)

    async def set_desired(self, model: str, alias: str, version: int, artifact_uri: str) -> None:
        async with self.db.sessions.begin() as session:
            await set_desired(session, model, alias, version, artifact_uri)
        self.routing.invalidate()

    async def reconcile(self) -> None:
        """Deploy every alias whose desired version is not the one Triton serves (or is not loaded)."""
        async with self._lock:
            async with self.db.sessions() as session:
                rows = (await session.execute(select(deployments))).all()
            for row in rows:
                name = triton_model_name(row.model_name, row.desired_version)
                if row.serving_version == row.desired_version and await self.triton.is_ready(name):
                    continue
                if row.failed_version == row.desired_version:
                    continue  # this version already failed; wait for a new desired version
                await self._deploy(row)

    async def _deploy(self, row: Any) -> None:
        model, alias, version = row.model_name, row.alias, row.desired_version
        name = triton_model_name(model, version)
        with tracer().start_as_current_span(
            "inference deploy", attributes={"lmforge.model": model, "lmforge.alias": alias, "lmforge.version": version}
        ) as span:
            try:
                folder = await asyncio.to_thread(self.repository.write_version, name, row.desired_artifact_uri)
                context = await asyncio.to_thread(context_length, folder)
                await self.triton.load(name)
                smoke = await self.triton.complete(name, SMOKE)
                log.info(
                    "deployed",
                    model=model,
                    alias=alias,
                    version=version,
                    triton_model=name,
                    smoke_tokens=smoke.completion_tokens,
                )
                state, error = DeploymentState.DEPLOYED, None
                span.set_attribute("lmforge.context_length", context or 0)
            except TritonUnavailable as exc:
                # Triton itself is away: nothing to report yet; the periodic reconcile retries.
                span.record_exception(exc)
                log.warning("triton unavailable, deployment postponed", model=model, version=version, error=str(exc))
                return
            except (TritonRejected, OSError, ValueError) as exc:
                span.record_exception(exc)
                state, error = DeploymentState.FAILED, str(exc)
                log.error(
                    "deployment failed; previous version keeps serving", model=model, version=version, error=str(exc)
                )
            previous = row.triton_model if state == DeploymentState.DEPLOYED else None
            async with self.db.sessions.begin() as session:
                now = datetime.now(UTC)
                values: dict[str, Any] = {"state": state, "error": error, "updated_at": now}
                if state == DeploymentState.DEPLOYED:
                    values |= {
                        "serving_version": version,
                        "triton_model": name,
                        "failed_version": None,
                        "context_length": context,
                        "deployed_at": now,
                    }
                else:
                    values |= {"failed_version": version}
                await session.execute(
                    update(deployments)
                    .where(deployments.c.model_name == model, deployments.c.alias == alias)
                    .values(**values)
                )
                await outbox.add(
                    session,
                    Topic.DEPLOYMENT_EVENTS,
                    DeploymentResultV1(
                        model_name=model,
                        alias=alias,
                        version=version,
                        state=state,
                        triton_model=name,
                        error=error,
                    ),
                    key=model,
                )
            # Before the replaced version is unloaded below: no request is routed to it after this.
            self.routing.invalidate()
            self.relay.wake()
            # A failed version is unloaded again; a replaced one once no other alias serves it.
            retired = name if state == DeploymentState.FAILED else previous if previous != name else None
            if retired and not await self._referenced(retired):
                await self._retire(retired)

    async def _referenced(self, triton_model: str) -> bool:
        """Some alias serves this Triton model (or is being deployed to it)."""
        async with self.db.sessions() as session:
            rows = (await session.execute(select(deployments))).all()
        return any(
            r.triton_model == triton_model
            or (
                triton_model_name(r.model_name, r.desired_version) == triton_model
                and r.failed_version != r.desired_version
            )
            for r in rows
        )

    async def _retire(self, name: str) -> None:
        """Unload a Triton model no alias serves, then delete its folder from the repository.

        The folder stays while the unload fails (Triton away): the periodic pass retries.
        """
        try:
            await self.triton.unload(name)
        except (TritonRejected, TritonUnavailable) as exc:
            log.warning("unload failed; model folder kept", triton_model=name, error=str(exc))
            return
        await asyncio.to_thread(self.repository.remove, name)
        log.info("retired", triton_model=name)

    async def collect_garbage(self) -> None:
        """Retire the repository folders of managed models that no alias serves or wants.

        Managed: a folder named ``<model>-v<n>`` for a model this service has deployment rows of
        (a retirement that failed earlier, or a version left behind by a crash between a
        deployment and its clean-up). Other folders in the repository are left alone.
        """
        async with self._lock:
            async with self.db.sessions() as session:
                rows = (await session.execute(select(deployments))).all()
            keep = {r.triton_model for r in rows if r.triton_model}
            keep |= {triton_model_name(r.model_name, r.desired_version) for r in rows}
            managed = {triton_model_name(r.model_name, 0).removesuffix("0") for r in rows}
            if not self.repository.root.is_dir():
                return
            for folder in sorted(self.repository.root.iterdir()):
                name = folder.name
                stem = re.sub(r"\d+$", "", name)
                if folder.is_dir() and name not in keep and stem in managed and re.search(r"-v\d+$", name):
                    await self._retire(name)

    async def refresh_statistics(self) -> None:
        """Triton's per-model counters (queue time, executions) for ``/metrics``."""
        try:
            stats = await self.triton.statistics()
        except (TritonRejected, TritonUnavailable) as exc:
            log.warning("triton statistics unavailable", error=str(exc))
            metrics.triton_statistics.update(())
            return
        metrics.triton_statistics.update(stats)

    async def run_statistics(self) -> None:
        """``refresh_statistics`` every ``statistics_interval_s``, for ever."""
        while True:
            await self.refresh_statistics()
            await asyncio.sleep(self.settings.statistics_interval_s)

    async def sync_from_registry(self) -> bool:
        """Desired state from the registry's aliases (start-up); False if the registry is away."""
        headers = internal_headers("inference", self.settings.internal)  # the registry is internal too
        try:
            async with httpx.AsyncClient(base_url=self.settings.registry_url, headers=headers, timeout=10) as client:
                resp = await client.get("/models")
                resp.raise_for_status()
                models = resp.json()
        except httpx.HTTPError as exc:
            log.warning("registry unavailable; reconciling from local state", error=str(exc))
            return False
        for m in models:
            by_version = {v["version"]: v for v in m["versions"]}
            for alias, version in m["aliases"].items():
                if version in by_version:
                    await self.set_desired(m["name"], alias, version, by_version[version]["artifact_uri"])
        return True

    async def run_periodically(self) -> None:
        """Resync desired state from the registry and reconcile, every interval, for ever.

        The resync keeps running after its first success: an alias moved while this service was
        away (its event consumed by nobody yet, or dead-lettered) is still picked up.
        """
        while True:
            await self.sync_from_registry()
            await self.reconcile()
            await self.collect_garbage()
            self.passes += 1
            await asyncio.sleep(self.settings.reconcile_interval_s)
