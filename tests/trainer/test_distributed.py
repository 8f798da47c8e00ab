"""Data-parallel training: the same job spec on two CPU processes (torchrun, gloo)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import select

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import JobState
from lmforge.common.kafka import EventProducer
from lmforge.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings
from lmforge.trainer.executor import JobExecutor
from lmforge.trainer.handlers import TrainingRequestHandler
from lmforge.trainer.models import metadata, outbox, training_jobs, training_metrics
from lmforge.trainer.settings import TrainerSettings

from ..helpers import wait_until
from .corpus import write_dataset
from .test_jobs import request


async def test_a_job_trains_data_parallel_on_two_processes(tmp_path: Path) -> None:
    settings = TrainerSettings(
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/trainer.db"),
        artifacts=ArtifactSettings(url=str(tmp_path / "artifacts")),
        work_dir=str(tmp_path / "work"),
        poll_interval_s=0.1,
        processes_per_job=2,
    )
    db = Database.from_settings(settings.database)
    await db.create_all(metadata)
    store = ArtifactStore.from_settings(settings.artifacts)
    texts = [f"Customer: question {i % 4}? Agent: answer {i % 4}." for i in range(32)]
    manifest = write_dataset(store, "plain", {"train": texts, "val": texts[:4], "test": texts[:4]})
    executor = JobExecutor(settings, db, store, OutboxRelay(outbox, db.sessions, EventProducer(KafkaSettings(), "t")))
    hp = {"max_steps": 24, "eval_every": 12, "log_every": 4, "batch_size": 4, "max_seq_len": 32}
    hp |= {"response_template": " Agent:", "eval_max_samples": 4}  # plain-text LM, answers scored too
    await TrainingRequestHandler(db, "g", executor)(request("job-0000000000f1", manifest, **hp))
    runner = asyncio.create_task(executor.run())

    async def done() -> bool:
        async with db.sessions() as s:
            return (await s.execute(select(training_jobs.c.state))).scalar_one() in (
                JobState.SUCCEEDED,
                JobState.FAILED,
            )

    try:
        await wait_until(done, timeout=240, interval=0.2)
    finally:
        runner.cancel()
    async with db.sessions() as s:
        job = (await s.execute(select(training_jobs))).one()
        history = [
            (r.step, r.metrics)
            for r in (await s.execute(select(training_metrics).order_by(training_metrics.c.id))).all()
        ]
    await db.dispose()
    assert job.state == JobState.SUCCEEDED, job.error
    m = job.metrics
    assert m["world_size"] == 2 and m["steps"] == 24
    assert m["train_loss"] < m["train_loss_first"] / 2, m
    # Each step takes a batch of 4 on each process: 32 records are an epoch every 4 steps.
    epochs = {step: values["epoch"] for step, values in history if "loss" in values}
    assert epochs[4] == 1.0 and epochs[24] == 6.0
    assert job.evaluation["metrics"]["test_answered"] == 4  # the first process evaluated and wrote
    assert store.exists(f"models/m/{job.run_id}/model.safetensors")
