"""Hyperparameter search: trials are training jobs, the search's state is their rows (a restarted
trainer carries on), and the best trial becomes the search's model version."""

from __future__ import annotations

import asyncio
import json
import math
import re
from pathlib import Path
from typing import Any

from sqlalchemy import select

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import Event, Hyperparameters, JobState, ModelReadyV1, SearchSpec, TrainingRequestedV1
from lmforge.common.kafka import EventProducer, InboundMessage
from lmforge.common.names import JOB_ID_PATTERN
from lmforge.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings
from lmforge.trainer import search
from lmforge.trainer.executor import JobExecutor
from lmforge.trainer.handlers import TrainingRequestHandler
from lmforge.trainer.models import metadata, outbox, training_jobs
from lmforge.trainer.settings import TrainerSettings

from ..helpers import wait_until
from .corpus import write_dataset

SPACE = {"learning_rate": {"low": 1e-5, "high": 3e-2, "log": True}, "lora.r": {"values": [4, 8]}}


def test_samplers_pick_within_the_space_and_repeat_themselves() -> None:
    grid = SearchSpec.model_validate(
        {"method": "grid", "parameters": {"lora.r": {"values": [4, 8]}, "seed": {"values": [1, 2, 3]}}, "trials": 50}
    )
    assert search.trial_count(grid) == 6
    assert [search.next_parameters(grid, i, []) for i in (0, 5)] == [{"lora.r": 4, "seed": 1}, {"lora.r": 8, "seed": 3}]
    rnd = SearchSpec.model_validate({"method": "random", "parameters": SPACE, "seed": 3})
    draws = [search.next_parameters(rnd, i, []) for i in range(8)]
    assert draws == [search.next_parameters(rnd, i, []) for i in range(8)]  # a restart draws the same
    assert all(1e-5 <= d["learning_rate"] <= 3e-2 and d["lora.r"] in (4, 8) for d in draws)
    assert len({d["learning_rate"] for d in draws}) == 8
    tpe = SearchSpec.model_validate({"method": "tpe", "parameters": SPACE, "trials": 6})
    history = [(d, math.log10(d["learning_rate"]) ** 2) for d in draws[:5]]
    nxt = search.next_parameters(tpe, 5, history)
    assert 1e-5 <= nxt["learning_rate"] <= 3e-2 and nxt["lora.r"] in (4, 8)
    hp = search.apply(Hyperparameters(method="lora").model_dump(mode="json"), {"learning_rate": 0.01, "lora.r": 4})
    assert hp.learning_rate == 0.01 and hp.lora.r == 4 and hp.lora.alpha == 32
    assert re.match(JOB_ID_PATTERN, search.trial_job_id("job-000000000001", 3))


def search_request(job_id: str, manifest_uri: str, spec: dict[str, Any]) -> InboundMessage:
    value, headers = Event(
        data=TrainingRequestedV1(
            job_id=job_id,
            model_name="m",
            dataset="plain",
            dataset_version=1,
            dataset_manifest_uri=manifest_uri,
            hyperparameters=Hyperparameters(
                max_steps=10, eval_every=10, batch_size=8, max_seq_len=32, eval_max_samples=0
            ),
            search=SearchSpec.model_validate(spec),
        ),
        source="tests",
    ).to_kafka()
    return InboundMessage("training-requests", 0, 0, None, value, tuple(headers), 0)


async def test_a_search_survives_a_restart_and_registers_its_best_trial(tmp_path: Path) -> None:
    settings = TrainerSettings(
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/trainer.db"),
        artifacts=ArtifactSettings(url=str(tmp_path / "artifacts")),
        work_dir=str(tmp_path / "work"),
        poll_interval_s=0.1,
    )
    db = Database.from_settings(settings.database)
    await db.create_all(metadata)
    store = ArtifactStore.from_settings(settings.artifacts)
    texts = [f"Customer: question {i % 4}? Agent: answer {i % 4}." for i in range(32)]
    manifest = write_dataset(store, "plain", {"train": texts, "val": texts[:4], "test": texts[:4]})
    relay = OutboxRelay(outbox, db.sessions, EventProducer(KafkaSettings(), "t"))
    spec = {"method": "random", "parameters": {"learning_rate": {"low": 1e-5, "high": 3e-2, "log": True}}, "trials": 3}
    first = JobExecutor(settings, db, store, relay)
    await TrainingRequestHandler(db, "g", first)(search_request("job-0000000000b0", manifest, spec))

    async def rows() -> list[Any]:
        async with db.sessions() as s:
            return list((await s.execute(select(training_jobs).order_by(training_jobs.c.created_at))).all())

    async def trials_done(n: int) -> bool:
        return sum(r.state == JobState.SUCCEEDED for r in await rows() if r.parent_job_id) >= n

    runner = asyncio.create_task(first.run())
    try:
        await wait_until(lambda: trials_done(1), timeout=120, interval=0.1)
    finally:
        runner.cancel()
    # A new trainer (the old one is gone) carries the search on from its rows.
    second = JobExecutor(settings, db, store, relay)
    runner = asyncio.create_task(second.run())

    async def search_done() -> bool:
        parent = next(r for r in await rows() if r.job_id == "job-0000000000b0")
        return parent.state in (JobState.SUCCEEDED, JobState.FAILED)

    try:
        await wait_until(search_done, timeout=240, interval=0.2)
    finally:
        runner.cancel()
    jobs = await rows()
    async with db.sessions() as s:
        ready = [
            json.loads(r.value)
            for r in (await s.execute(select(outbox.table))).all()
            if r.event_type == ModelReadyV1.event_type
        ]
    await db.dispose()
    parent = next(r for r in jobs if r.job_id == "job-0000000000b0")
    trials = sorted((r for r in jobs if r.parent_job_id == parent.job_id), key=lambda r: r.trial)
    assert parent.state == JobState.SUCCEEDED, parent.error
    assert [t.trial for t in trials] == [0, 1, 2] and all(t.state == JobState.SUCCEEDED for t in trials)
    rates = [t.hyperparameters["learning_rate"] for t in trials]
    assert rates == [t.search["learning_rate"] for t in trials] and len(set(rates)) == 3
    winner = min(trials, key=lambda t: t.metrics["val_loss"])
    # One version for the search: the best trial's model, recipe and scores.
    assert len(ready) == 1 and ready[0]["job_id"] == parent.job_id and ready[0]["run_id"] == parent.run_id
    assert ready[0]["artifact_uri"] == winner.artifact_uri == parent.artifact_uri
    assert ready[0]["hyperparameters"]["learning_rate"] == winner.hyperparameters["learning_rate"]
    assert ready[0]["metrics"]["search_best_trial"] == winner.trial and ready[0]["metrics"]["search_trials"] == 3
    assert ready[0]["metrics"]["val_loss"] == min(t.metrics["val_loss"] for t in trials)
