"""The gate's comparison, measured where it is fair: each run also measures the version production
points at on the run's own test records, and the registry compares the two."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import uvicorn
from fastapi import FastAPI
from sqlalchemy import select

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import EvaluationSummary, Hyperparameters, JobState, ModelReadyV1
from lmforge.common.kafka import EventProducer
from lmforge.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings
from lmforge.devstack.servers import free_port
from lmforge.registry import api as registry_api
from lmforge.registry.models import metadata as registry_metadata
from lmforge.registry.settings import GateRule, RegistrySettings
from lmforge.registry.store import register
from lmforge.trainer.executor import JobExecutor
from lmforge.trainer.handlers import TrainingRequestHandler
from lmforge.trainer.models import metadata as trainer_metadata
from lmforge.trainer.models import outbox, training_jobs
from lmforge.trainer.settings import TrainerSettings
from lmforge.trainer.train import train

from ..helpers import INTERNAL_AUTH, wait_until
from .corpus import pair, spec, write_dataset
from .test_jobs import request

QA = [
    ("What colour is the sky?", "The sky is blue."),
    ("Where do fish live?", "Fish live in water."),
    ("What do cows eat?", "Cows eat grass."),
]


def ready(result: dict[str, Any], run: str) -> ModelReadyV1:
    return ModelReadyV1(
        model_name="support",
        run_id=run,
        job_id=f"job-{run}",
        artifact_uri=result["artifact_uri"],
        base_model="builtin:tiny-gpt2",
        dataset="qa",
        dataset_version=1,
        dataset_manifest_uri="file:///m.json",
        hyperparameters=Hyperparameters(),
        metrics=result["metrics"],
        evaluation=EvaluationSummary.model_validate(result["evaluation"]),
    )


async def test_a_run_measures_production_on_its_own_test_records_and_the_gate_uses_that(
    tmp_path: Path, database: Database
) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    records = [pair(q, a) for q, a in QA]
    first = write_dataset(store, "qa", {"train": records * 8, "val": records, "test": records})
    hp = {"task": "sft", "batch_size": 8, "max_seq_len": 40, "learning_rate": 5e-3, "eval_every": 10}
    # v1: a LoRA adapter with its base/ (the baseline loader merges it, as serving does).
    v1 = await asyncio.to_thread(train, spec(store, first, "models/s/r1", **hp, max_steps=10, method="lora"))
    # A newer dataset version: the same records plus one more in test, so another evaluation set.
    more = [*records, pair("What do bees make?", "Bees make honey.")]
    second = write_dataset(store, "qa", {"train": records * 8, "val": records, "test": more}, version=2)
    baseline = {"alias": "production", "version": 1, "artifact_uri": v1["artifact_uri"]}
    v2 = await asyncio.to_thread(train, spec(store, second, "models/s/r2", **hp, max_steps=60) | {"baseline": baseline})
    measured = v2["evaluation"]["baseline"]
    assert measured["version"] == 1 and measured["alias"] == "production"
    assert measured["metrics"]["test_answered"] == 4  # production answered the same four test prompts
    assert measured["metrics"]["test_loss"] > v2["evaluation"]["metrics"]["test_loss"]
    assert v2["evaluation"]["eval_set"] != v1["evaluation"]["eval_set"]

    await database.create_all(registry_metadata)
    settings = RegistrySettings(gates={"support": GateRule(metric="test_bits_per_byte", direction="min")})
    async with database.sessions.begin() as s:
        assert (await register(s, ready(v1, "r1"), settings) or {})["gate"]["passed"]
        gate = (await register(s, ready(v2, "r2"), settings) or {})["gate"]
    assert gate["passed"], gate["reasons"]
    assert gate["compared_on"] == "measured by this version's run on the same records"
    assert gate["compared_value"] == measured["metrics"]["test_bits_per_byte"]


@contextlib.asynccontextmanager
async def registry_api_server(db: Database) -> AsyncIterator[str]:
    app = FastAPI()
    app.include_router(registry_api.router)
    app.state.runtime = SimpleNamespace(db=db)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_the_executor_finds_versions_by_alias_or_number_in_the_registry(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    await db.create_all(registry_metadata)
    event = ModelReadyV1(
        model_name="support",
        run_id="r1",
        job_id="job-r1",
        artifact_uri="file:///a/r1",
        base_model="b",
        dataset="qa",
        dataset_version=1,
        dataset_manifest_uri="file:///m.json",
        hyperparameters=Hyperparameters(),
        metrics={"val_perplexity": 2.0},
    )
    async with db.sessions.begin() as s:
        await register(s, event, RegistrySettings())
    trainer_db = Database(f"sqlite+aiosqlite:///{tmp_path}/trainer.db")
    await trainer_db.create_all(trainer_metadata)
    async with registry_api_server(db) as url:
        settings = TrainerSettings(
            database=DatabaseSettings(url=trainer_db.url),
            artifacts=ArtifactSettings(url=str(tmp_path / "artifacts")),
            registry_url=url,
            internal=INTERNAL_AUTH,
        )
        relay = OutboxRelay(outbox, trainer_db.sessions, EventProducer(KafkaSettings(), "t"))
        executor = JobExecutor(settings, trainer_db, ArtifactStore(str(tmp_path / "artifacts")), relay)
        by_alias = await executor.registry_version("support", "production")
        by_number = await executor.registry_version("support", "v1")
        assert by_alias is not None and by_alias == by_number and by_alias["artifact_uri"] == "file:///a/r1"
        assert await executor.registry_version("support", "canary") is None
        assert await executor.registry_version("nobody", "production") is None
        assert await executor.registry_version("support", "v7") is None
        job = SimpleNamespace(job_id="job-1", model_name="support")
        assert await executor._baseline(job) == {"alias": "production", "version": 1, "artifact_uri": "file:///a/r1"}
    await db.dispose()
    await trainer_db.dispose()


async def test_continual_fine_tuning_starts_from_the_registered_production_version(tmp_path: Path) -> None:
    """``model:support@production``: retraining on new data starts from production's weights and
    tokenizer (a LoRA version's adapter merged into its base), not from scratch."""
    store = ArtifactStore(str(tmp_path / "artifacts"))
    records = [pair(q, a) for q, a in QA]
    first = write_dataset(store, "qa", {"train": records * 8, "val": records, "test": records})
    hp = {"task": "sft", "batch_size": 8, "max_seq_len": 40, "learning_rate": 5e-3, "eval_every": 40}
    v1 = await asyncio.to_thread(train, spec(store, first, "models/support/r1", **hp, max_steps=80))
    registry_db = Database(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    await registry_db.create_all(registry_metadata)
    async with registry_db.sessions.begin() as s:
        await register(s, ready(v1, "r1"), RegistrySettings())
    # New data: the old pairs and a new one.
    newer = [*records, pair("What do bees make?", "Bees make honey.")]
    second = write_dataset(store, "qa", {"train": newer * 6, "val": newer, "test": newer}, version=2)
    trainer_db = Database(f"sqlite+aiosqlite:///{tmp_path}/trainer.db")
    await trainer_db.create_all(trainer_metadata)
    async with registry_api_server(registry_db) as url:
        settings = TrainerSettings(
            database=DatabaseSettings(url=trainer_db.url),
            artifacts=ArtifactSettings(url=str(tmp_path / "artifacts")),
            work_dir=str(tmp_path / "work"),
            registry_url=url,
            internal=INTERNAL_AUTH,
            poll_interval_s=0.1,
        )
        relay = OutboxRelay(outbox, trainer_db.sessions, EventProducer(KafkaSettings(), "t"))
        executor = JobExecutor(settings, trainer_db, store, relay)
        handle = TrainingRequestHandler(trainer_db, "g", executor)
        continual = {"task": "sft", "max_steps": 20, "eval_every": 20, "batch_size": 8, "max_seq_len": 40}
        await handle(request("job-0000000000e1", second, base="model:support@production", **continual))
        await handle(request("job-0000000000e2", second, base="builtin:tiny-gpt2", **continual))
        await handle(request("job-0000000000e3", second, base="model:support@canary", **continual))
        runner = asyncio.create_task(executor.run())

        async def done() -> bool:
            async with trainer_db.sessions() as s:
                states = (await s.execute(select(training_jobs.c.state))).scalars().all()
            return all(st in (JobState.SUCCEEDED, JobState.FAILED) for st in states)

        try:
            await wait_until(done, timeout=180, interval=0.2)
        finally:
            runner.cancel()
    async with trainer_db.sessions() as s:
        jobs = {r.job_id: r for r in (await s.execute(select(training_jobs))).all()}
    await registry_db.dispose()
    await trainer_db.dispose()
    warm, cold, missing = jobs["job-0000000000e1"], jobs["job-0000000000e2"], jobs["job-0000000000e3"]
    assert warm.state == cold.state == JobState.SUCCEEDED, (warm.error, cold.error)
    assert warm.metrics["base_version"] == 1
    # Production's tokenizer came along (the builtin one would be trained anew on the new data)...
    assert warm.evaluation["tokenizer"] == v1["evaluation"]["tokenizer"]
    # ...and its weights: it starts knowing the old answers, where a fresh model starts from nothing,
    # and after the same 20 steps it is far ahead.
    assert warm.metrics["train_loss_first"] < cold.metrics["train_loss_first"] * 0.6
    assert warm.metrics["test_loss"] < cold.metrics["test_loss"] / 2
    assert missing.state == JobState.FAILED and "no such registered version" in missing.error
