"""Dataset to served model with every artifact on S3 (a real moto_server): preprocess cuts a
dataset version to S3, the trainer's subprocess reads it from S3 and writes the model there, and
the inference service copies the model from S3 into Triton's repository and serves it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import Event, Hyperparameters, JobState, RawRecordV1, TrainingRequestedV1, content_hash
from lmforge.common.kafka import EventProducer, InboundMessage
from lmforge.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings
from lmforge.devstack.servers import S3Server, TritonServer
from lmforge.inference.model_repository import ModelRepository, triton_model_name
from lmforge.inference.settings import InferenceSettings
from lmforge.inference.triton import GenerationRequest, TritonModels
from lmforge.preprocess.handlers import RawRecordHandler
from lmforge.preprocess.models import metadata as preprocess_metadata
from lmforge.preprocess.models import outbox as preprocess_outbox
from lmforge.preprocess.store import DatasetStore
from lmforge.trainer.executor import JobExecutor
from lmforge.trainer.handlers import TrainingRequestHandler
from lmforge.trainer.models import metadata as trainer_metadata
from lmforge.trainer.models import outbox as trainer_outbox
from lmforge.trainer.models import training_jobs
from lmforge.trainer.settings import TrainerSettings

from ..helpers import wait_until

INTENTS = ["refund", "password reset", "late delivery", "invoice copy", "cancel plan"]


def message(topic: str, payload: RawRecordV1 | TrainingRequestedV1) -> InboundMessage:
    value, headers = Event(data=payload, source="tests").to_kafka()
    return InboundMessage(topic, 0, 0, None, value, tuple(headers), 0)


def raw(i: int) -> RawRecordV1:
    text = f"Customer: ticket {i} about {INTENTS[i % 5]}. Agent: I will help with the {INTENTS[i % 5]} now."
    return RawRecordV1(
        record_id=f"tickets:{i}",
        source="tickets",
        source_id=str(i),
        text=text,
        content_hash=content_hash(text),
        ingested_at=datetime.now(UTC),
    )


async def test_dataset_to_served_model_on_s3(
    s3_server: S3Server, triton: TritonServer, tmp_path: Path, unique: str
) -> None:
    bucket = s3_server.create_bucket(f"flow-{unique}")
    artifacts = ArtifactSettings(url=f"{bucket}/lmforge", storage_options=s3_server.storage_options)
    producer = EventProducer(KafkaSettings(), source="tests")  # relays are only woken here, never started

    # preprocess: clean 40 records and cut a dataset version to S3.
    pre_db = Database(f"sqlite+aiosqlite:///{tmp_path}/preprocess.db")
    await pre_db.create_all(preprocess_metadata)
    pre_store = ArtifactStore.from_settings(artifacts)
    relay = OutboxRelay(preprocess_outbox, pre_db.sessions, producer)
    handle_raw = RawRecordHandler(pre_db, "g", relay)
    for i in range(40):
        await handle_raw(message("raw-data", raw(i)))
    version = await DatasetStore(pre_db, pre_store, relay).create_version("tickets")
    await pre_db.dispose()
    manifest_uri = version["manifest_uri"]
    assert manifest_uri == f"{bucket}/lmforge/datasets/tickets/v1/manifest.json"
    assert version["record_count"] == 40
    assert pre_store.exists("datasets/tickets/v1/train.parquet")

    # trainer: the job's subprocess reads the shards from S3 and writes the model to S3.
    settings = TrainerSettings(
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/trainer.db"),
        artifacts=artifacts,
        work_dir=str(tmp_path / "work"),
        poll_interval_s=0.1,
    )
    db = Database.from_settings(settings.database)
    await db.create_all(trainer_metadata)
    store = ArtifactStore.from_settings(settings.artifacts)
    executor = JobExecutor(settings, db, store, OutboxRelay(trainer_outbox, db.sessions, producer))
    request = TrainingRequestedV1(
        job_id=f"job-{unique}",
        model_name="tickets-lm",
        dataset="tickets",
        dataset_version=1,
        dataset_manifest_uri=manifest_uri,
        hyperparameters=Hyperparameters(max_steps=6, eval_every=3, batch_size=8, max_seq_len=48),
    )
    await TrainingRequestHandler(db, "g", executor)(message("training-requests", request))
    runner = asyncio.create_task(executor.run())

    async def finished() -> bool:
        async with db.sessions() as s:
            state = (await s.execute(select(training_jobs.c.state))).scalar_one()
        return state in (JobState.SUCCEEDED, JobState.FAILED)

    try:
        await wait_until(finished, timeout=180, interval=0.2)
    finally:
        runner.cancel()
    async with db.sessions() as s:
        job = (await s.execute(select(training_jobs))).one()
    await db.dispose()
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.metrics["train_records"] + job.metrics["val_records"] >= 30
    assert job.artifact_uri == f"{bucket}/lmforge/models/tickets-lm/{job.run_id}"
    model_files = store.list(f"models/tickets-lm/{job.run_id}")
    assert f"models/tickets-lm/{job.run_id}/config.json" in model_files
    assert any(f.endswith(".safetensors") for f in model_files)
    # The credentials travelled in the spec file only: it is gone with the job's temp folder.
    assert not list((tmp_path / "work").rglob("spec.json"))

    # inference: copy the model from S3 into Triton's repository; "auto" lets this Triton decide.
    inference_settings = InferenceSettings(
        triton_grpc_url=f"127.0.0.1:{triton.grpc_port}",
        model_repository=str(triton.model_repository),
        artifacts=artifacts,
    )
    triton_models = TritonModels(inference_settings)
    repository = ModelRepository(inference_settings, ArtifactStore.from_settings(artifacts))
    name = triton_model_name(f"s3{unique}", 1)
    target = await asyncio.to_thread(repository.write_version, name, job.artifact_uri)
    assert (target / "1" / "weights" / "config.json").is_file()
    assert (target / "1" / "model.py").is_file()
    assert "kind: KIND_AUTO" in (target / "config.pbtxt").read_text()
    await triton_models.load(name)
    try:
        assert await triton_models.instance_kind(name) == "KIND_CPU"  # Triton's answer: it has no GPU
        served = await triton_models.complete(
            name, GenerationRequest(prompt="Customer: ticket about refund. Agent:", max_tokens=4)
        )
        assert served.completion_tokens >= 1
    finally:
        await triton_models.unload(name)
        await triton_models.close()
