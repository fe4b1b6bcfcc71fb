"""The best-learning-rate protocol: what a trainability statement about a configuration rests on.

One learning rate per optimizer confounds "this network cannot learn" with
"this is the wrong step size for it". Under this protocol a configuration
(the benchmark identity of `bench.config.benchmark_fields` without
``learning_rate``) is run over a small log-spaced grid of learning rates and
several seeds; its score is that of its best learning rate, the one with the
highest median test accuracy over the seeds, reported with the seeds' spread.
A learning rate at which a run diverges does not make the configuration
untrainable when another one trains.

`best_learning_rate` is a pure function of the per-run table (``runs.parquet``):
a seaborn-style statistic that takes a long-form table and returns one.
"""

from __future__ import annotations

import math

import pandas as pd

from vgbench.bench.config import DEFAULT_BIAS_INITIALIZER, benchmark_fields
from vgbench.bench.utils import plain

__all__ = ["CHANCE_ACCURACY", "PROTOCOLS", "best_learning_rate", "configuration_fields", "scored_accuracy"]

# A suite's `protocol:` values and what they mean.
PROTOCOLS = {
    "best_lr": "each configuration scored at its best learning rate (median test accuracy over seeds)",
}

# MNIST and Fashion-MNIST have 10 balanced classes: a constant guess is right 1 time in 10.
CHANCE_ACCURACY = 0.1

_COLUMNS = [
    "best_learning_rate",
    "median_accuracy",
    "min_accuracy",
    "max_accuracy",
    "n_seeds",
    "learning_rates",
    "median_by_lr",
    "diverged_by_lr",
    "failed_by_lr",
    "run_ids",
]


def configuration_fields(columns) -> list[str]:
    """The fields that identify a configuration: the benchmark identity without ``learning_rate``."""
    return [f for f in benchmark_fields(columns) if f != "learning_rate"]


def scored_accuracy(runs_m: pd.DataFrame) -> pd.Series:
    """Each run's test accuracy as the protocol scores it.

    A diverged run scores chance accuracy: its weights are not finite, so its
    predictions are no better than a constant guess, whatever accuracy was
    last recorded. A failed run (an error, not a training outcome) scores
    NaN and is left out.
    """
    acc = pd.to_numeric(runs_m["test_accuracy"], errors="coerce").astype(float)
    status = runs_m["status"].astype(str)
    acc = acc.where(status != "diverged", CHANCE_ACCURACY)
    return acc.where(status != "failed")


def best_learning_rate(runs_m: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: its best learning rate and the seeds' accuracy there.

    Args:
        runs_m: The per-run table (``runs.parquet``): config columns, among
            them ``learning_rate`` and ``seed``, plus ``status`` and
            ``test_accuracy``.

    Returns:
        A DataFrame with the configuration's fields (`configuration_fields`)
        and ``best_learning_rate``, ``median_accuracy``, ``min_accuracy``,
        ``max_accuracy`` (over the seeds at the best learning rate, as
        `scored_accuracy` scores them), ``n_seeds`` (runs scored there),
        ``learning_rates`` (the grid, sorted), ``median_by_lr``,
        ``diverged_by_lr`` and ``failed_by_lr`` ({learning rate: value}) and
        ``run_ids`` (the runs at the best learning rate). Ties go to the
        smaller learning rate. A configuration whose every run failed has
        ``best_learning_rate`` NaN.

    Raises:
        ValueError: If a column the protocol needs is missing.
    """
    missing = [c for c in ("run_id", "learning_rate", "status", "test_accuracy") if c not in runs_m.columns]
    if missing:
        raise ValueError(
            f"Argument `runs_m` must hold the columns run_id, learning_rate, status and test_accuracy. "
            f"Missing: {', '.join(missing)}"
        )
    keys = configuration_fields(runs_m.columns)
    runs = runs_m.copy()
    if "bias_initializer" in runs.columns:
        # Tables written before the field existed hold no value for it: those runs had zero biases.
        runs["bias_initializer"] = runs["bias_initializer"].fillna(DEFAULT_BIAS_INITIALIZER)
    runs["_score"] = scored_accuracy(runs)
    rows = []
    if runs.empty:
        return pd.DataFrame(columns=[*keys, *_COLUMNS])
    # dropna=False: a configuration with train_samples=None is still a configuration.
    for ident, group in runs.groupby(keys, dropna=False, sort=True) if keys else [((), runs)]:
        ident = ident if isinstance(ident, tuple) else (ident,)
        row = {k: plain(v) for k, v in zip(keys, ident, strict=True)}
        by_lr = {float(lr): g for lr, g in group.groupby("learning_rate", sort=True)}
        medians = {lr: _median(g["_score"]) for lr, g in by_lr.items()}
        scored = {lr: m for lr, m in medians.items() if not math.isnan(m)}
        # max() keeps the first of equal medians, and the learning rates are sorted: ties go to the smaller.
        best = max(scored, key=scored.get) if scored else math.nan
        at_best = by_lr[best]["_score"].dropna() if scored else pd.Series(dtype=float)
        row.update(
            best_learning_rate=best,
            median_accuracy=medians.get(best, math.nan),
            min_accuracy=float(at_best.min()) if len(at_best) else math.nan,
            max_accuracy=float(at_best.max()) if len(at_best) else math.nan,
            n_seeds=int(len(at_best)),
            learning_rates=sorted(by_lr),
            median_by_lr=medians,
            diverged_by_lr={lr: int((g["status"] == "diverged").sum()) for lr, g in by_lr.items()},
            failed_by_lr={lr: int((g["status"] == "failed").sum()) for lr, g in by_lr.items()},
            run_ids=sorted(by_lr[best]["run_id"]) if scored else [],
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=[*keys, *_COLUMNS])


def _median(scores: pd.Series) -> float:
    scores = scores.dropna()
    return float(scores.median()) if len(scores) else math.nan
