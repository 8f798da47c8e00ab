"""The trainer's job executor: a failing job is reported and the worker goes on to the next."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import Event, Hyperparameters, JobState, TrainingRequestedV1
from lmforge.common.kafka import EventProducer, InboundMessage
from lmforge.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings
from lmforge.trainer.executor import JobExecutor
from lmforge.trainer.handlers import TrainingRequestHandler
from lmforge.trainer.models import metadata, outbox, training_jobs
from lmforge.trainer.settings import TrainerSettings

from ..helpers import wait_until


def dataset(store: ArtifactStore, name: str, *, corrupt: bool = False) -> str:
    shards = {}
    for split, n in (("train", 24), ("val", 4), ("test", 2)):
        if corrupt:
            shards[split] = store.write_bytes(f"{name}/{split}.parquet", b"this is not parquet")
            continue
        texts = [f"Customer: question {i % 3}? Agent: answer {i % 3}." for i in range(n)]
        buf = io.BytesIO()
        pq.write_table(pa.table({"record_id": [f"r{i}" for i in range(n)], "text": texts}), buf)
        shards[split] = store.write_bytes(f"{name}/{split}.parquet", buf.getvalue())
    manifest = {"dataset": name, "version": 1, "shards": shards, "trace": {}}
    return store.write_bytes(f"{name}/manifest.json", json.dumps(manifest).encode())


def request(job_id: str, manifest_uri: str, base: str = "builtin:tiny-gpt2", **hp: Any) -> InboundMessage:
    value, headers = Event(
        data=TrainingRequestedV1(
            job_id=job_id,
            model_name="m",
            dataset="d",
            dataset_version=1,
            dataset_manifest_uri=manifest_uri,
            base_model=base,
            hyperparameters=Hyperparameters.model_validate(
                {"max_steps": 4, "eval_every": 2, "batch_size": 4, "max_seq_len": 32} | hp
            ),
        ),
        source="tests",
    ).to_kafka()
    return InboundMessage("training-requests", 0, 0, None, value, tuple(headers), 0)


async def test_failed_job_is_reported_and_the_next_job_runs(tmp_path: Path) -> None:
    settings = TrainerSettings(
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/trainer.db"),
        artifacts=ArtifactSettings(url=str(tmp_path / "artifacts")),
        work_dir=str(tmp_path / "work"),
        poll_interval_s=0.1,
    )
    db = Database.from_settings(settings.database)
    await db.create_all(metadata)
    store = ArtifactStore.from_settings(settings.artifacts)
    executor = JobExecutor(settings, db, store, OutboxRelay(outbox, db.sessions, EventProducer(KafkaSettings(), "t")))
    handle = TrainingRequestHandler(db, "g", executor)
    # A manifest URI outside the store, then one that does not exist: each fails its own job only.
    await handle(request("job-foreign-uri", "s3://elsewhere/manifest.json"))
    await handle(request("job-missing", store.uri("nowhere/manifest.json")))
    await handle(request("job-bad", dataset(store, "bad", corrupt=True)))
    good = request("job-good", dataset(store, "good"))
    await handle(good)
    await handle(good)  # a redelivery creates no second job
    runner = asyncio.create_task(executor.run())

    async def finished() -> bool:
        async with db.sessions() as s:
            states = {r.job_id: r.state for r in (await s.execute(select(training_jobs))).all()}
        return states.get("job-good") in (JobState.SUCCEEDED, JobState.FAILED)

    try:
        await wait_until(finished, timeout=120, interval=0.2)
    finally:
        runner.cancel()
    async with db.sessions() as s:
        jobs = {r.job_id: r for r in (await s.execute(select(training_jobs))).all()}
        events = [
            (r.event_type, json.loads(r.value))
            for r in (await s.execute(select(outbox.table).order_by(outbox.table.c.id))).all()
        ]
        await db.dispose()
    assert set(jobs) == {"job-foreign-uri", "job-missing", "job-bad", "job-good"}
    assert jobs["job-foreign-uri"].state == JobState.FAILED
    assert "dataset manifest unreadable" in jobs["job-foreign-uri"].error
    assert jobs["job-missing"].state == JobState.FAILED and "ArtifactNotFound" in jobs["job-missing"].error
    assert jobs["job-bad"].state == JobState.FAILED and "training process exited with 1" in jobs["job-bad"].error
    assert jobs["job-good"].state == JobState.SUCCEEDED, jobs["job-good"].error
    assert jobs["job-good"].metrics["val_perplexity"] > 0
    assert store.exists(f"models/m/{jobs['job-good'].run_id}/config.json")
    statuses = [(e["job_id"], e["state"]) for t, e in events if t == "lmforge.training.status.v1"]
    assert statuses == [
        ("job-foreign-uri", "failed"),
        ("job-missing", "failed"),
        ("job-bad", "running"),
        ("job-bad", "failed"),
        ("job-good", "running"),
        ("job-good", "succeeded"),
    ]
    ready = [e for t, e in events if t == "lmforge.model.ready.v1"]
    assert len(ready) == 1 and ready[0]["run_id"] == jobs["job-good"].run_id
    # The model-ready event links the test-split evaluation and its report.
    evaluation = ready[0]["evaluation"]
    assert evaluation == jobs["job-good"].evaluation and evaluation["split"] == "test"
    assert store.exists(store.key_of(evaluation["report_uri"]))
    assert ready[0]["metrics"]["test_perplexity"] == evaluation["metrics"]["test_perplexity"] > 0


async def test_a_local_hugging_face_directory_is_a_base_model(tmp_path: Path) -> None:
    """Fine-tune from a model directory on disk (here: one the builtin run produced)."""
    from lmforge.trainer.train import train

    store = ArtifactStore(str(tmp_path / "artifacts"))
    manifest = dataset(store, "d")
    spec = {
        "hyperparameters": {"max_steps": 3, "eval_every": 3, "batch_size": 4, "max_seq_len": 32},
        "dataset_manifest_uri": manifest,
        "artifacts_url": store.url,
    }
    first = await asyncio.to_thread(train, spec | {"base_model": "builtin:tiny-gpt2", "artifact_key": "models/m/base"})
    base_dir = store.get_dir("models/m/base", tmp_path / "base")
    tuned = await asyncio.to_thread(train, spec | {"base_model": str(base_dir), "artifact_key": "models/m/tuned"})
    assert first["metrics"]["val_perplexity"] > 0 and tuned["metrics"]["val_perplexity"] > 0
    assert store.exists("models/m/tuned/model.safetensors") and store.exists("models/m/tuned/tokenizer.json")
    bad = spec | {"base_model": str(tmp_path / "nowhere"), "artifact_key": "models/m/x"}
    with pytest.raises(ValueError, match="neither"):
        await asyncio.to_thread(train, bad)
