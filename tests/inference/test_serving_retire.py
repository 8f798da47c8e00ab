"""Versions no alias serves any more leave Triton and the model repository: unloaded, then their
folder deleted (a promotion's previous version, a failed version); a folder left behind (an
unload that failed) is collected by the periodic pass; folders of other models are left alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.kafka import EventProducer
from lmforge.common.settings import KafkaSettings
from lmforge.devstack.servers import TritonServer
from lmforge.inference.model_repository import ModelRepository
from lmforge.inference.models import metadata, outbox
from lmforge.inference.reconciler import Reconciler
from lmforge.inference.settings import InferenceSettings
from lmforge.inference.triton import GenerationRequest, TritonModels

from .test_reconcile import grpc_url, save_tiny_model


async def test_retired_versions_are_unloaded_and_their_folders_removed(
    triton: TritonServer, tmp_path: Path, unique: str
) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    v1, v2 = save_tiny_model(store, "models/m/run-1"), save_tiny_model(store, "models/m/run-2")
    broken = store.write_bytes("models/m/run-broken/config.json", json.dumps({"model_type": "nope"}).encode())
    broken = broken.rsplit("/", 1)[0]
    model = f"r{unique}"
    settings = InferenceSettings(triton_grpc_url=grpc_url(triton), model_repository=str(triton.model_repository))
    repo = triton.model_repository
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/inference.db")
    await db.create_all(metadata)
    models = TritonModels(settings)
    relay = OutboxRelay(outbox, db.sessions, EventProducer(KafkaSettings(), source="tests"))  # only woken
    reconciler = Reconciler(settings, db, ModelRepository(settings, store), models, relay)
    try:
        await reconciler.set_desired(model, "production", 1, v1)
        await reconciler.set_desired(model, "staging", 1, v1)
        await reconciler.reconcile()
        assert (repo / f"{model}-v1").is_dir()

        # production moves on; staging still serves v1: it stays loaded, its folder stays.
        await reconciler.set_desired(model, "production", 2, v2)
        await reconciler.reconcile()
        assert await models.is_ready(f"{model}-v1") and (repo / f"{model}-v1").is_dir()
        # staging moves too: v1 is served by nobody now.
        await reconciler.set_desired(model, "staging", 2, v2)
        await reconciler.reconcile()
        assert not await models.is_ready(f"{model}-v1")
        assert not (repo / f"{model}-v1").exists()
        assert await models.is_ready(f"{model}-v2") and (repo / f"{model}-v2").is_dir()
        served = await models.complete(f"{model}-v2", GenerationRequest(prompt="hello", max_tokens=2))
        assert served.completion_tokens >= 1

        # A failed version is unloaded and removed as well; v2 keeps serving.
        await reconciler.set_desired(model, "production", 3, broken)
        await reconciler.reconcile()
        assert not (repo / f"{model}-v3").exists()
        assert await models.is_ready(f"{model}-v2")

        # Left behind (say an unload failed while Triton was away): collected by the periodic pass.
        (repo / f"{model}-v7" / "1").mkdir(parents=True)
        (repo / f"other{unique}-v1" / "1").mkdir(parents=True)  # not a model of this service
        await reconciler.collect_garbage()
        assert not (repo / f"{model}-v7").exists()
        assert (repo / f"other{unique}-v1").is_dir() and (repo / f"{model}-v2").is_dir()
    finally:
        shutil.rmtree(repo / f"other{unique}-v1", ignore_errors=True)
        await models.close()
        await db.dispose()
