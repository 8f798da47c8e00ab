"""The gate compares like with like: the model's configured metric and direction, a threshold and a
minimum gain over production, on the same evaluation set and, for per-token metrics, the same
tokenizer."""

from __future__ import annotations

from typing import Any

from lmforge.common.db import Database
from lmforge.common.events import BaselineEvaluation, EvaluationSummary, Hyperparameters, ModelReadyV1
from lmforge.registry.models import metadata
from lmforge.registry.settings import GateRule, RegistrySettings
from lmforge.registry.store import current_alias, register

SET_A, SET_B = "sha256-aaaaaaaaaaaaaaaa", "sha256-bbbbbbbbbbbbbbbb"


def ready(
    model: str,
    run: str,
    metrics: dict[str, float],
    eval_set: str = SET_A,
    tokenizer: str = "tok-1",
    baseline: BaselineEvaluation | None = None,
    dataset_version: int = 1,
) -> ModelReadyV1:
    return ModelReadyV1(
        model_name=model,
        run_id=run,
        job_id=f"job-{run}",
        artifact_uri=f"file:///a/{run}",
        base_model="builtin:tiny-gpt2",
        dataset="tickets",
        dataset_version=dataset_version,
        dataset_manifest_uri="file:///m.json",
        hyperparameters=Hyperparameters(),
        metrics=metrics,
        evaluation=EvaluationSummary(
            eval_set=eval_set, tokenizer=tokenizer, records=20, metrics=metrics, baseline=baseline
        ),
    )


async def verdict(database: Database, settings: RegistrySettings, event: ModelReadyV1) -> dict[str, Any]:
    async with database.sessions.begin() as s:
        result = await register(s, event, settings)
    assert result is not None
    return dict(result["gate"])


async def test_a_task_metric_with_a_threshold_and_a_minimum_gain(database: Database) -> None:
    await database.create_all(metadata)
    rule = GateRule(metric="test_rouge_l", direction="max", threshold=0.3, min_gain=0.05)
    settings = RegistrySettings(gates={"support": rule})
    assert (await verdict(database, settings, ready("support", "r1", {"test_rouge_l": 0.2})))["reasons"] == [
        "test_rouge_l 0.2 below threshold 0.3"
    ]
    first = await verdict(database, settings, ready("support", "r2", {"test_rouge_l": 0.5}))
    assert first["passed"] and first["compared_to"] is None
    small = await verdict(database, settings, ready("support", "r3", {"test_rouge_l": 0.52}))
    assert not small["passed"] and "gains 0.02 over production v2 (0.5), less than 0.05" in small["reasons"][0]
    better = await verdict(database, settings, ready("support", "r4", {"test_rouge_l": 0.6}))
    assert better["passed"] and better["compared_value"] == 0.5 and better["compared_on"] == "its own evaluation"
    async with database.sessions() as s:
        assert await current_alias(s, "support", "production") == 4


async def test_another_evaluation_set_compares_only_through_the_runs_own_baseline(database: Database) -> None:
    await database.create_all(metadata)
    settings = RegistrySettings(gates={"support": GateRule(metric="test_rouge_l", direction="max")})
    assert (await verdict(database, settings, ready("support", "r1", {"test_rouge_l": 0.5})))["passed"]
    # A newer dataset version: more test records, another fingerprint. A higher score proves nothing.
    elsewhere = await verdict(database, settings, ready("support", "r2", {"test_rouge_l": 0.9}, eval_set=SET_B))
    assert not elsewhere["passed"] and "measured on another evaluation set" in elsewhere["reasons"][0]
    # The run measured production v1 on its own test records: now the comparison is like with like.
    worse = BaselineEvaluation(alias="production", version=1, tokenizer="tok-1", metrics={"test_rouge_l": 0.95})
    lost = await verdict(database, settings, ready("support", "r3", {"test_rouge_l": 0.9}, SET_B, baseline=worse))
    assert not lost["passed"] and "worse than production v1 (0.95)" in lost["reasons"][0]
    fair = BaselineEvaluation(alias="production", version=1, tokenizer="tok-1", metrics={"test_rouge_l": 0.7})
    won = await verdict(database, settings, ready("support", "r4", {"test_rouge_l": 0.9}, SET_B, baseline=fair))
    assert won["passed"] and won["compared_value"] == 0.7
    assert won["compared_on"] == "measured by this version's run on the same records"
    # A baseline of a version that is no longer production is not the comparison.
    stale = BaselineEvaluation(alias="production", version=1, tokenizer="tok-1", metrics={"test_rouge_l": 0.1})
    old = await verdict(database, settings, ready("support", "r5", {"test_rouge_l": 0.95}, SET_A, baseline=stale))
    assert not old["passed"] and "another evaluation set" in old["reasons"][0]


async def test_per_token_metrics_compare_only_under_one_tokenizer(database: Database) -> None:
    await database.create_all(metadata)
    settings = RegistrySettings(
        gates={
            "ppl": GateRule(metric="test_perplexity", direction="min"),
            "bpb": GateRule(metric="test_bits_per_byte", direction="min"),
        }
    )
    scores = {"test_perplexity": 9.0, "test_bits_per_byte": 1.2}
    better = {"test_perplexity": 30.0, "test_bits_per_byte": 0.9}  # a bigger vocabulary: more bits per token
    for model in ("ppl", "bpb"):
        assert (await verdict(database, settings, ready(model, f"{model}1", scores)))["passed"]
    ppl = await verdict(database, settings, ready("ppl", "ppl2", better, tokenizer="tok-2"))
    assert not ppl["passed"] and "per token and the tokenizers differ" in ppl["reasons"][0]
    bpb = await verdict(database, settings, ready("bpb", "bpb2", better, tokenizer="tok-2"))
    assert bpb["passed"] and bpb["compared_value"] == 1.2


async def test_without_a_rule_the_default_keeps_the_old_gate(database: Database) -> None:
    await database.create_all(metadata)
    settings = RegistrySettings(gate_max_val_perplexity=50.0)
    plain = ModelReadyV1.model_validate(ready("m", "r1", {"val_perplexity": 3.0}).model_dump() | {"evaluation": None})
    assert (await verdict(database, settings, plain))["passed"]
    again = ModelReadyV1.model_validate(plain.model_dump() | {"run_id": "r2", "job_id": "job-r2"})
    assert (await verdict(database, settings, again))["passed"]  # equal is no worse
    other_data = ModelReadyV1.model_validate(again.model_dump() | {"run_id": "r3", "dataset_version": 2})
    assert "another evaluation set" in (await verdict(database, settings, other_data))["reasons"][0]
