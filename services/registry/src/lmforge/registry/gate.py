"""The promotion gate: a new version earns the alias only by beating, like with like, the version
the alias points at (``docs/training.md``, "The gate").

Like with like means:
- the same metric, the model's configured one (``GateRule``), in its direction;
- the same evaluation set: the production version measured by the new version's own run on the
  same test records (the run's ``baseline``), or else production's stored measurement when its
  evaluation set has the same fingerprint (for ``val_*`` metrics: the same dataset version);
- for per-token metrics (perplexity, loss), the same tokenizer: a token is not a unit two
  tokenizers share. Bits per byte, ROUGE-L, BLEU, exact match and accuracy need no such care.

What cannot be compared is not guessed at: the gate fails and says why, and an operator can still
move the alias by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmforge.common.events import ModelReadyV1

from .settings import GateRule


def per_token(metric: str) -> bool:
    return "perplexity" in metric or metric.endswith("_loss")


@dataclass(frozen=True)
class Measurement:
    value: float
    eval_set: str
    tokenizer: str | None


def measurement(
    metrics: dict[str, Any], evaluation: dict[str, Any] | None, dataset: str, version: int, metric: str
) -> Measurement | None:
    """A version's value of ``metric`` and what it was measured on."""
    if metric not in metrics:
        return None
    tokenizer = evaluation.get("tokenizer") if evaluation else None
    if metric.startswith("test_") and evaluation:
        return Measurement(float(metrics[metric]), str(evaluation["eval_set"]), tokenizer)
    split = "val" if metric.startswith("val_") else metric.split("_", 1)[0]
    return Measurement(float(metrics[metric]), f"{dataset}@v{version}/{split}", tokenizer)


def decide(rule: GateRule, alias: str, ready: ModelReadyV1, current: Any | None) -> dict[str, Any]:
    """The gate's verdict on ``ready`` against ``current`` (the alias's version row, or None)."""
    evaluation = ready.evaluation.model_dump(mode="json") if ready.evaluation else None
    mine = measurement(ready.metrics, evaluation, ready.dataset, ready.dataset_version, rule.metric)
    reasons: list[str] = []
    gate: dict[str, Any] = {
        "metric": rule.metric,
        "direction": rule.direction,
        "threshold": rule.threshold,
        "ceiling": rule.threshold if rule.direction == "min" else None,
        "min_gain": rule.min_gain,
        "value": mine.value if mine else None,
        "eval_set": mine.eval_set if mine else None,
        "compared_to": current.version if current is not None else None,
        "compared_value": None,
        "compared_on": None,
    }
    if mine is None:
        reasons.append(f"no {rule.metric} metric")
    elif rule.threshold is not None:
        if rule.direction == "min" and mine.value > rule.threshold:
            reasons.append(f"{rule.metric} {mine.value:.4g} above threshold {rule.threshold:g}")
        if rule.direction == "max" and mine.value < rule.threshold:
            reasons.append(f"{rule.metric} {mine.value:.4g} below threshold {rule.threshold:g}")
    if mine is not None and current is not None:
        theirs, source = None, None
        baseline = ready.evaluation.baseline if ready.evaluation else None
        if baseline is not None and baseline.version == current.version and rule.metric in baseline.metrics:
            theirs = Measurement(float(baseline.metrics[rule.metric]), mine.eval_set, baseline.tokenizer)
            source = "measured by this version's run on the same records"
        else:
            theirs = measurement(
                current.metrics, current.evaluation, current.dataset, current.dataset_version, rule.metric
            )
            source = "its own evaluation"
        where = f"{alias} v{current.version}"
        if theirs is None:
            reasons.append(f"not comparable with {where}: it has no {rule.metric}")
        elif theirs.eval_set != mine.eval_set:
            reasons.append(
                f"not comparable with {where}: {rule.metric} was measured on another evaluation set "
                f"({theirs.eval_set}, this version {mine.eval_set})"
            )
        elif per_token(rule.metric) and mine.tokenizer and theirs.tokenizer and mine.tokenizer != theirs.tokenizer:
            reasons.append(
                f"not comparable with {where}: {rule.metric} is per token and the tokenizers differ "
                "(gate on test_bits_per_byte or a task metric)"
            )
        else:
            gate["compared_value"], gate["compared_on"] = theirs.value, source
            if rule.metric == "val_perplexity":
                gate["compared_perplexity"] = theirs.value
            gain = theirs.value - mine.value if rule.direction == "min" else mine.value - theirs.value
            if gain < 0:
                reasons.append(f"{rule.metric} {mine.value:.4g} worse than {where} ({theirs.value:.4g})")
            elif gain < rule.min_gain:
                reasons.append(
                    f"{rule.metric} {mine.value:.4g} gains {gain:.4g} over {where} ({theirs.value:.4g}), "
                    f"less than {rule.min_gain:g}"
                )
    gate["passed"] = not reasons
    gate["reasons"] = reasons
    return gate
