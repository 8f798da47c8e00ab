"""Evaluation on the test split after training: the scores, the report, the metric history."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from types import SimpleNamespace

import httpx
from fastapi import FastAPI

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import JobState
from lmforge.common.kafka import EventProducer
from lmforge.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings
from lmforge.trainer import api
from lmforge.trainer.evaluation import classification_scores, generation_scores
from lmforge.trainer.executor import JobExecutor
from lmforge.trainer.handlers import TrainingRequestHandler
from lmforge.trainer.models import metadata, outbox
from lmforge.trainer.settings import TrainerSettings
from lmforge.trainer.store import get_job
from lmforge.trainer.train import train

from ..helpers import wait_until
from .corpus import pair, spec, write_dataset
from .test_jobs import request

QA = [
    ("What colour is the sky?", "The sky is blue."),
    ("Where do fish live?", "Fish live in water."),
    ("What do cows eat?", "Cows eat grass."),
    ("When does the shop open?", "It opens at nine."),
]


def test_classification_scores_by_hand() -> None:
    # truth: a a a b b c ; predicted: a a b b c c
    scores = classification_scores([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"])
    assert scores["metrics"]["test_accuracy"] == round(4 / 6, 5)
    assert scores["per_class"]["a"] == {"precision": 1.0, "recall": round(2 / 3, 5), "f1": 0.8, "support": 3.0}
    assert scores["per_class"]["c"]["precision"] == 0.5 and scores["per_class"]["c"]["recall"] == 1.0
    f1_b, f1_c = 0.5, round(2 * 0.5 / 1.5, 5)
    assert math.isclose(scores["metrics"]["test_macro_f1"], (0.8 + f1_b + f1_c) / 3, abs_tol=1e-4)
    assert scores["confusion_matrix"]["rows_truth_columns_predicted"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_generation_scores_count_words_and_cjk_characters() -> None:
    scores, rouge = generation_scores(
        ["The refund is on its way.", "退款已到账"], ["the refund is on its way", "退款已经到账"]
    )
    assert rouge[0] == 1.0 and 0.8 < rouge[1] < 1.0  # rouge-score's own tokenizer would score the Chinese 0
    assert scores["test_exact_match"] == 0.5 and scores["test_bleu"] > 30


def test_the_test_split_is_measured_and_reported(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    records = [pair(q, a) for q, a in QA]
    manifest = write_dataset(store, "codes", {"train": records * 8, "val": records, "test": records[:3]})
    hp = {"task": "sft", "batch_size": 8, "max_seq_len": 40, "learning_rate": 5e-3, "eval_every": 60}
    untrained = train(spec(store, manifest, "models/m/u", **hp, max_steps=1))["evaluation"]
    result = train(spec(store, manifest, "models/m/t", **hp, max_steps=60) | {"report_key": "reports/m/t"})
    trained = result["evaluation"]
    assert trained["split"] == "test" and trained["records"] == 3
    assert trained["eval_set"] == untrained["eval_set"] and trained["tokenizer"] == untrained["tokenizer"]
    m, before = trained["metrics"], untrained["metrics"]
    assert m["test_loss"] < before["test_loss"] / 4
    assert m["test_rouge_l"] > max(0.8, before["test_rouge_l"]) and m["test_bleu"] > before["test_bleu"]
    assert m["test_answered"] == 3
    # Bits per byte is the same NLL spread over the bytes of the scored text.
    assert 0 < m["test_bits_per_byte"] < m["test_loss"] / math.log(2)
    report = json.loads(store.read_bytes("reports/m/t/evaluation.json"))
    assert trained["report_uri"] == store.uri("reports/m/t/evaluation.json")
    assert report["metrics"]["test_rouge_l"] == m["test_rouge_l"] and report["eval_set"] == trained["eval_set"]
    assert [s["reference"] for s in report["samples"]] == [a for _, a in QA[:3]]
    assert any("eval_loss" in h for h in report["history"])
    markdown = store.read_bytes("reports/m/t/evaluation.md").decode()
    assert "## Sample answers" in markdown and "| What colour is the sky? |" not in markdown  # prompts are chat turns
    assert "user: What colour is the sky?" in markdown
    assert store.read_bytes("reports/m/t/curves.svg").startswith(b"<svg") and b"polyline" in store.read_bytes(
        "reports/m/t/curves.svg"
    )


async def test_history_and_evaluation_are_served_by_the_job_api(tmp_path: Path) -> None:
    settings = TrainerSettings(
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/trainer.db"),
        artifacts=ArtifactSettings(url=str(tmp_path / "artifacts")),
        work_dir=str(tmp_path / "work"),
        poll_interval_s=0.1,
    )
    db = Database.from_settings(settings.database)
    await db.create_all(metadata)
    store = ArtifactStore.from_settings(settings.artifacts)
    texts = [f"Customer: question {i % 3}? Agent: answer {i % 3}." for i in range(24)]
    manifest = write_dataset(store, "plain", {"train": texts, "val": texts[:4], "test": texts[:3]})
    executor = JobExecutor(settings, db, store, OutboxRelay(outbox, db.sessions, EventProducer(KafkaSettings(), "t")))
    await TrainingRequestHandler(db, "g", executor)(request("job-0000000000a1", manifest, log_every=1))
    runner = asyncio.create_task(executor.run())

    async def done() -> bool:
        job = await get_job(db, "job-0000000000a1")
        return job is not None and job.state in (JobState.SUCCEEDED, JobState.FAILED)

    try:
        await wait_until(done, timeout=120, interval=0.2)
    finally:
        runner.cancel()
    app = FastAPI()
    app.include_router(api.router)
    app.state.runtime = SimpleNamespace(db=db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        job = (await client.get("/jobs/job-0000000000a1")).json()
        history = (await client.get("/jobs/job-0000000000a1/metrics")).json()["history"]
        missing = await client.get("/jobs/job-0000000000ff/metrics")
    await db.dispose()
    assert job["state"] == "succeeded", job["error"]
    assert job["evaluation"]["split"] == "test" and job["evaluation"]["records"] == 3
    assert job["metrics"]["test_perplexity"] == job["evaluation"]["metrics"]["test_perplexity"]
    assert store.exists(store.key_of(job["evaluation"]["report_uri"]))
    steps = [p["step"] for p in history if "loss" in p["metrics"]]
    assert steps == sorted(steps) and steps[0] == 1 and steps[-1] == 4  # the request runs 4 steps
    assert all("learning_rate" in p["metrics"] for p in history if "loss" in p["metrics"])
    assert [p["step"] for p in history if "eval_loss" in p["metrics"]] == [2, 4]
    assert missing.status_code == 404
