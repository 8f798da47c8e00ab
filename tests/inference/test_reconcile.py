"""Deployments into the real Triton: a good version serves; a broken one fails and changes nothing."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from sqlalchemy import select
from transformers import GPT2LMHeadModel

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import DeploymentResultV1
from lmforge.common.kafka import EventProducer
from lmforge.common.settings import KafkaSettings
from lmforge.devstack.servers import TritonServer
from lmforge.inference.model_repository import ModelRepository
from lmforge.inference.models import deployments, metadata, outbox
from lmforge.inference.reconciler import Reconciler
from lmforge.inference.settings import InferenceSettings
from lmforge.inference.triton import GenerationRequest, TritonModels

from .runtime_helpers import build_tokenizer, tiny_gpt2_config


def grpc_url(triton: TritonServer) -> str:
    return f"127.0.0.1:{triton.grpc_port}"


def save_tiny_model(store: ArtifactStore, key: str) -> str:
    """A one-layer GPT-2 with random weights and a 32-token context (deploys in seconds)."""
    tok = build_tokenizer(["Customer: hello Agent: hi there"] * 20, vocab_size=300)
    config = tiny_gpt2_config(tok, n_positions=32)
    with tempfile.TemporaryDirectory() as tmp:
        GPT2LMHeadModel(config).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        return store.put_dir(Path(tmp), key)


async def test_failed_deployment_keeps_the_previous_version_serving(
    triton: TritonServer, tmp_path: Path, unique: str
) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    good = save_tiny_model(store, "models/m/run-good")
    broken = store.write_bytes("models/m/run-broken/config.json", json.dumps({"model_type": "not-a-model"}).encode())
    broken = broken.rsplit("/", 1)[0]
    model = f"m{unique}"
    settings = InferenceSettings(triton_grpc_url=grpc_url(triton), model_repository=str(triton.model_repository))
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/inference.db")
    await db.create_all(metadata)
    triton_models = TritonModels(settings)
    relay = OutboxRelay(outbox, db.sessions, EventProducer(KafkaSettings(), source="tests"))  # only woken here
    reconciler = Reconciler(settings, db, ModelRepository(settings, store), triton_models, relay)
    try:
        await reconciler.set_desired(model, "production", 1, good)
        await reconciler.reconcile()
        served = await triton_models.complete(
            f"{model}-v1", GenerationRequest(prompt="Customer: hello Agent:", max_tokens=3)
        )
        assert served.completion_tokens >= 1

        await reconciler.set_desired(model, "production", 2, broken)
        await reconciler.reconcile()
        async with db.sessions() as s:
            row = (await s.execute(select(deployments))).one()
            results = [
                json.loads(r.value)
                for r in (await s.execute(select(outbox.table.c.value).order_by(outbox.table.c.id))).all()
            ]
        assert (row.desired_version, row.serving_version, row.state) == (2, 1, "failed")
        assert row.triton_model == f"{model}-v1"
        assert [(r["version"], r["state"]) for r in results] == [(1, "deployed"), (2, "failed")]
        assert DeploymentResultV1.model_validate(results[1]).error
        # v1 still answers, v2 was unloaded again, and a second pass does not retry the same failure.
        assert await triton_models.is_ready(f"{model}-v1")
        assert not await triton_models.is_ready(f"{model}-v2")
        await reconciler.reconcile()
        async with db.sessions() as s:
            assert len((await s.execute(select(outbox.table.c.id))).all()) == 2
    finally:
        await triton_models.close()
        await db.dispose()
