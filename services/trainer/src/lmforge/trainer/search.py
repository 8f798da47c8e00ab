"""Hyperparameter search: which parameters the next trial of a search runs with.

A search's state is its trial jobs' rows (their parameters, states and metrics), so a restarted
trainer, or another replica, picks up where it was: ``grid`` takes the next combination, ``random``
draws with a generator seeded by the search's seed and the trial number, and ``tpe`` rebuilds an
Optuna study from the finished trials and asks it (Optuna's TPE samples at random until it has
seen a few trials, then models the good and the bad ones).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from typing import Any

from lmforge.common.events import Hyperparameters, SearchParameter, SearchSpec


def grid(spec: SearchSpec) -> list[dict[str, Any]]:
    names = sorted(spec.parameters)
    for name in names:
        if spec.parameters[name].values is None:
            raise ValueError(f"grid search: {name} needs a list of values")
    return [
        dict(zip(names, combo, strict=True))
        for combo in itertools.product(*(spec.parameters[n].values or [] for n in names))
    ]


def trial_count(spec: SearchSpec) -> int:
    return min(spec.trials, len(grid(spec))) if spec.method == "grid" else spec.trials


def _draw(rng: random.Random, space: SearchParameter) -> Any:
    if space.values is not None:
        return rng.choice(space.values)
    low, high = float(space.low or 0), float(space.high or 0)
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if space.log else rng.uniform(low, high)
    return round(value) if space.integer else value


def _distribution(space: SearchParameter) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if space.values is not None:
        return CategoricalDistribution(space.values)
    if space.integer:
        return IntDistribution(int(space.low or 0), int(space.high or 0), log=space.log)
    return FloatDistribution(float(space.low or 0), float(space.high or 0), log=space.log)


def next_parameters(
    spec: SearchSpec, number: int, finished: list[tuple[dict[str, Any], float | None]]
) -> dict[str, Any]:
    """The parameters of trial ``number`` (0-based), given the finished trials' parameters and
    scores (None for a failed trial)."""
    if spec.method == "grid":
        return grid(spec)[number]
    if spec.method == "random":
        rng = random.Random(f"{spec.seed}:{number}")
        return {name: _draw(rng, spec.parameters[name]) for name in sorted(spec.parameters)}
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {name: _distribution(space) for name, space in spec.parameters.items()}
    sampler = optuna.samplers.TPESampler(seed=spec.seed + number, n_startup_trials=max(2, min(10, spec.trials // 3)))
    study = optuna.create_study(direction="minimize" if spec.direction == "min" else "maximize", sampler=sampler)
    for params, score in finished:
        study.add_trial(
            create_trial(
                params=params,
                distributions=distributions,
                value=score,
                state=TrialState.COMPLETE if score is not None else TrialState.FAIL,
            )
        )
    return dict(study.ask(distributions).params)


def apply(recipe: dict[str, Any], parameters: dict[str, Any]) -> Hyperparameters:
    """The job's recipe with a trial's parameters (``lora.r`` sets a nested one), validated."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in recipe.items()}
    for name, value in parameters.items():
        head, _, field = name.partition(".")
        if field:
            merged.setdefault(head, {})[field] = value
        else:
            merged[head] = value
    return Hyperparameters.model_validate(merged)


def trial_job_id(search_job_id: str, number: int) -> str:
    """A trial's job id, the same on every replica (so two cannot both create it)."""
    return "job-" + hashlib.sha256(f"{search_job_id}/{number}".encode()).hexdigest()[:12]


def score(metrics: dict[str, Any], spec: SearchSpec) -> float | None:
    value = metrics.get(spec.metric)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def best(trials: list[Any], spec: SearchSpec) -> Any | None:
    """The succeeded trial with the best score (ties: the earlier trial)."""
    scored = [(score(t.metrics, spec), t.trial, t) for t in trials]
    ranked = [(s, n, t) for s, n, t in scored if s is not None]
    if not ranked:
        return None
    sign = 1 if spec.direction == "min" else -1
    return min(ranked, key=lambda x: (sign * x[0], x[1]))[2]
