"""Checkpoints, resume and leases: a run interrupted resumes from its last checkpoint and ends where
an uninterrupted one does; a trainer killed with kill -9 resumes its job when it comes back; two
replicas never hold or run the same job."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import select
from transformers import TrainerCallback

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import Hyperparameters, JobState, ModelReadyV1, Topic, TrainingRequestedV1
from lmforge.common.kafka import EventProducer
from lmforge.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings
from lmforge.devstack.stack import Stack
from lmforge.trainer.executor import JobExecutor
from lmforge.trainer.handlers import TrainingRequestHandler
from lmforge.trainer.models import metadata, outbox, training_jobs, training_metrics
from lmforge.trainer.settings import TrainerSettings
from lmforge.trainer.train import train

from ..helpers import wait_until
from .corpus import spec, write_dataset
from .test_jobs import request

TEXTS = [f"Customer: question {i % 5}? Agent: answer {i % 5}." for i in range(40)]


class CrashAt(TrainerCallback):  # type: ignore[misc]
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == self.step:
            raise RuntimeError(f"crash at step {self.step}")


def test_an_interrupted_run_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_one_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    manifest = write_dataset(store, "plain", {"train": TEXTS, "val": TEXTS[:4], "test": TEXTS[:3]})
    hp = {"max_steps": 40, "eval_every": 10, "batch_size": 4, "max_seq_len": 32, "log_every": 5, "eval_max_samples": 0}
    interrupted = spec(store, manifest, "models/m/a", **hp) | {"checkpoint_prefix": "checkpoints/m/a"}
    with pytest.raises(RuntimeError, match="crash at step 25"):
        train(interrupted | {"output_dir": str(tmp_path / "w1")}, on_trainer=lambda t: t.add_callback(CrashAt(25)))
    pointer = json.loads(store.read_bytes("checkpoints/m/a/latest.json"))
    assert pointer == {"checkpoint": "checkpoint-20", "step": 20, "best": "checkpoint-20"}
    capsys.readouterr()
    resumed = train(interrupted | {"output_dir": str(tmp_path / "w2")})  # a fresh work folder: all from the store
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"step"')]
    assert lines[0] == {"step": 20, "event": "resumed"}
    assert next(x["step"] for x in lines if "loss" in x) == 25  # continues after the checkpoint, not from 1
    uninterrupted = train(spec(store, manifest, "models/m/b", **hp))
    a, b = resumed["metrics"], uninterrupted["metrics"]
    assert a["resumed_from_step"] == 20 and a["steps"] == b["steps"] == 40
    # Optimizer, scheduler, data order and RNG came back with the weights: the same run, to the digit.
    for name in ("train_loss", "val_loss", "test_loss"):
        assert a[name] == pytest.approx(b[name], abs=1e-4), name
    assert store.list("checkpoints/m/a") == []  # the model is stored: its checkpoints are gone


def _settings(database_url: str, tmp_path: Path, replica: str, **extra: Any) -> TrainerSettings:
    return TrainerSettings(
        database=DatabaseSettings(url=database_url),
        artifacts=ArtifactSettings(url=str(tmp_path / "artifacts")),
        work_dir=str(tmp_path / f"work-{replica}"),
        poll_interval_s=0.1,
        replica_id=replica,
        **extra,
    )


async def test_one_replica_holds_a_job_and_another_takes_it_only_when_the_lease_runs_out(
    database: Database, tmp_path: Path
) -> None:
    await database.create_all(metadata)
    relay = OutboxRelay(outbox, database.sessions, EventProducer(KafkaSettings(), "t"))
    store = ArtifactStore(str(tmp_path / "artifacts"))
    a = JobExecutor(_settings(database.url, tmp_path, "a", lease_s=1.0), database, store, relay)
    b = JobExecutor(_settings(database.url, tmp_path, "b", lease_s=1.0), database, store, relay)
    await TrainingRequestHandler(database, "g", a)(request("job-0000000000c1", "file:///nowhere.json"))
    claims = await asyncio.gather(*(x.claim_next() for x in (a, b, a, b)))
    won = [c for c in claims if c is not None]
    assert len(won) == 1 and won[0].attempts == 1
    holder, other = (a, b) if won[0].lease_owner == "a" else (b, a)
    assert await holder._renew_lease("job-0000000000c1")
    assert await other.claim_next() is None  # held: nobody else gets it
    await asyncio.sleep(1.2)  # the holder stalls past its lease
    taken = await other.claim_next()
    assert taken is not None and taken.lease_owner == other.owner and taken.attempts == 2
    assert not await holder._renew_lease("job-0000000000c1")  # the stalled holder learns it lost the job
    async with database.sessions.begin() as s:
        assert not await holder._finish(s, "job-0000000000c1", state=JobState.SUCCEEDED)
        assert (await s.execute(select(training_jobs.c.state))).scalar_one() == JobState.RUNNING


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # row locks decide between replicas
async def test_two_replicas_run_every_job_exactly_once(database: Database, tmp_path: Path) -> None:
    await database.create_all(metadata)
    store = ArtifactStore(str(tmp_path / "artifacts"))
    manifest = write_dataset(store, "plain", {"train": TEXTS[:16], "val": TEXTS[:4], "test": TEXTS[:2]})
    relay = OutboxRelay(outbox, database.sessions, EventProducer(KafkaSettings(), "t"))
    replicas = [JobExecutor(_settings(database.url, tmp_path, r), database, store, relay) for r in ("a", "b")]
    jobs = [f"job-00000000000{i}" for i in range(4)]
    for job in jobs:
        await TrainingRequestHandler(database, "g", replicas[0])(
            request(job, manifest, max_steps=2, eval_every=2, eval_max_samples=0)
        )
    runners = [asyncio.create_task(r.run()) for r in replicas]

    async def all_done() -> bool:
        async with database.sessions() as s:
            states = (await s.execute(select(training_jobs.c.state))).scalars().all()
        return all(st in (JobState.SUCCEEDED, JobState.FAILED) for st in states)

    try:
        await wait_until(all_done, timeout=240, interval=0.3)
    finally:
        for runner in runners:
            runner.cancel()
    async with database.sessions() as s:
        rows = (await s.execute(select(training_jobs))).all()
        ready = [
            json.loads(r.value)["job_id"]
            for r in (await s.execute(select(outbox.table))).all()
            if r.event_type == ModelReadyV1.event_type
        ]
    assert all(r.state == JobState.SUCCEEDED for r in rows), [r.error for r in rows]
    assert all(r.attempts == 1 for r in rows)  # each job was claimed once, by one replica
    assert sorted(ready) == jobs  # and announced once


async def test_a_trainer_killed_with_kill_9_resumes_its_running_job_from_the_last_checkpoint(
    tmp_path: Path, unique: str
) -> None:
    stack = Stack(
        tmp_path / "stack",
        only=("trainer",),
        extra_env={
            "LMFORGE_TRAINER_REPLICA_ID": "trainer-0",
            "LMFORGE_TRAINER_LEASE_S": "6",
            "LMFORGE_TRAINER_POLL_INTERVAL_S": "0.2",
        },
    )
    stack.start()
    db = Database(f"sqlite+aiosqlite:///{stack.workdir / 'db' / 'trainer.db'}")
    try:
        store = ArtifactStore(str(stack.workdir / "artifacts"))
        manifest = write_dataset(store, "plain", {"train": TEXTS, "val": TEXTS[:4], "test": TEXTS[:3]})
        job_id = f"job-{unique[:12].ljust(12, '0')}"
        hp = Hyperparameters(
            max_steps=400,
            eval_every=20,
            batch_size=8,
            max_seq_len=32,
            log_every=10,
            early_stopping_patience=0,
            eval_max_samples=0,
        )
        event = TrainingRequestedV1(
            job_id=job_id,
            model_name="m",
            dataset="plain",
            dataset_version=1,
            dataset_manifest_uri=manifest,
            hyperparameters=hp,
        )
        assert stack.broker is not None
        async with EventProducer(KafkaSettings(bootstrap_servers=stack.broker.bootstrap_servers), "tests") as p:
            await p.publish(Topic.TRAINING_REQUESTS, event, key="m")

        async def job() -> Any:
            async with db.sessions() as s:
                return (await s.execute(select(training_jobs).where(training_jobs.c.job_id == job_id))).first()

        async def checkpointed() -> bool:
            row = await job()
            return row is not None and (row.checkpoint_step or 0) >= 60

        await wait_until(checkpointed, timeout=180, interval=0.1)
        service = stack.services["trainer"].proc
        assert service is not None
        runs = psutil.Process(service.pid).children(recursive=True)
        assert any("lmforge.trainer.train" in " ".join(c.cmdline()) for c in runs)
        os.kill(service.pid, signal.SIGKILL)  # the trainer only: its training process must die with it
        service.wait()
        killed_at = datetime.now(UTC)
        _, alive = psutil.wait_procs(runs, timeout=10)
        assert not alive, "a training process outlived its trainer"
        at_kill = await job()
        assert at_kill.state == JobState.RUNNING and at_kill.step < 400
        checkpoint = at_kill.checkpoint_step
        assert checkpoint % 20 == 0 and checkpoint >= 60

        stack.start_service("trainer")  # the same replica comes back and takes its job at once
        started = time.monotonic()

        async def finished() -> bool:
            row = await job()
            return row.state in (JobState.SUCCEEDED, JobState.FAILED)

        await wait_until(finished, timeout=240, interval=0.2)
        done = await job()
        assert done.state == JobState.SUCCEEDED, done.error
        assert done.attempts == 2 and done.metrics["resumed_from_step"] == checkpoint
        assert done.metrics["steps"] == 400 and time.monotonic() - started < 240
        async with db.sessions() as s:
            history = (
                await s.execute(
                    select(training_metrics).where(training_metrics.c.job_id == job_id).order_by(training_metrics.c.id)
                )
            ).all()
            announced = [
                r for r in (await s.execute(select(outbox.table))).all() if r.event_type == ModelReadyV1.event_type
            ]
        after = [h.step for h in history if h.at.replace(tzinfo=UTC) > killed_at and "loss" in h.metrics]
        assert after and min(after) > checkpoint  # the second run went on from the checkpoint
        steps = [h.step for h in history if "loss" in h.metrics]
        assert steps == sorted(set(steps))  # steps redone after the checkpoint are not counted twice
        assert len(announced) == 1
    finally:
        await db.dispose()
        stack.stop()


async def test_a_cancelled_running_job_stops_and_stays_cancelled(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/trainer.db"
    db = Database(url)
    await db.create_all(metadata)
    store = ArtifactStore(str(tmp_path / "artifacts"))
    manifest = write_dataset(store, "plain", {"train": TEXTS, "val": TEXTS[:4]})
    relay = OutboxRelay(outbox, db.sessions, EventProducer(KafkaSettings(), "t"))
    executor = JobExecutor(_settings(url, tmp_path, "a"), db, store, relay)
    await TrainingRequestHandler(db, "g", executor)(
        request("job-0000000000d1", manifest, max_steps=100_000, early_stopping_patience=0)
    )
    runner = asyncio.create_task(executor.run())

    async def state() -> Any:
        async with db.sessions() as s:
            return (await s.execute(select(training_jobs))).one()

    async def training() -> bool:
        return bool((await state()).step > 0)

    try:
        await wait_until(training, timeout=120, interval=0.1)
        assert await executor.cancel("job-0000000000d1") == JobState.CANCELLED

        async def stopped() -> bool:
            return executor._current is None

        await wait_until(stopped, timeout=30, interval=0.1)
    finally:
        runner.cancel()
    async with db.sessions() as s:
        statuses = [
            json.loads(r.value)["state"]
            for r in (await s.execute(select(outbox.table).order_by(outbox.table.c.id))).all()
        ]
    job = await state()
    await db.dispose()
    assert job.state == JobState.CANCELLED and job.step < 100_000
    assert statuses == ["running", "cancelled"]
