"""The best-learning-rate protocol: what a trainability statement about a configuration rests on.

One learning rate per optimizer confounds "this network cannot learn" with
"this is the wrong step size for it". Under this protocol a configuration
(the benchmark identity of `bench.config.benchmark_fields` without
``learning_rate``) is run over a small log-spaced grid of learning rates and
several seeds; its score is that of its best learning rate, the one with the
highest median test accuracy over the seeds, reported with the seeds' spread.
A learning rate at which a run diverges does not make the configuration
untrainable when another one trains.

A grid whose best learning rate is its smallest or its largest value has not
bracketed the optimum. The protocol then extends the grid by one decade in
that direction and trains those runs (the same seeds), up to
`MAX_EXTENSIONS` times per configuration (`extended_configs`); a verdict
states the final grid, and says so when the best is still at an edge
(``edge`` of `best_learning_rate`).

`best_learning_rate` is a pure function of the per-run table (``runs.parquet``):
a seaborn-style statistic that takes a long-form table and returns one.
"""

from __future__ import annotations

import math

import pandas as pd

from vgbench.bench.config import DEFAULT_BIAS_INITIALIZER, benchmark_fields
from vgbench.bench.utils import plain

__all__ = [
    "CHANCE_ACCURACY",
    "MAX_EXTENSIONS",
    "PROTOCOLS",
    "best_learning_rate",
    "configuration_fields",
    "decade",
    "extended_configs",
    "run_extensions",
    "scored_accuracy",
]

# A suite's `protocol:` values and what they mean.
PROTOCOLS = {
    "best_lr": "each configuration scored at its best learning rate (median test accuracy over seeds); a grid "
    "whose best is at an edge is extended by a decade that way, at most twice",
}

# How many times the grid of one configuration may be extended by a decade beyond an edge.
MAX_EXTENSIONS = 2

# MNIST and Fashion-MNIST have 10 balanced classes: a constant guess is right 1 time in 10.
CHANCE_ACCURACY = 0.1

_COLUMNS = [
    "best_learning_rate",
    "median_accuracy",
    "min_accuracy",
    "max_accuracy",
    "n_seeds",
    "learning_rates",
    "edge",
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
        ``diverged_by_lr`` and ``failed_by_lr`` ({learning rate: value}),
        ``edge`` (``"low"`` or ``"high"`` when the best learning rate is the
        grid's smallest or largest of two or more, else ``""``) and
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
            edge=_edge(best, sorted(by_lr)),
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


def _edge(best: float, grid: list) -> str:
    if len(grid) < 2 or not math.isfinite(best):
        return ""
    return "low" if best == grid[0] else "high" if best == grid[-1] else ""


def decade(learning_rate: float, k: int) -> float:
    """``learning_rate`` times 10**k to 6 significant digits (0.003 / 10 is 0.0003, not 0.00030000000000000003).

    The rounding makes an extension's learning rate, and so its run id, the
    same whichever way it is computed.
    """
    return float(f"{learning_rate * 10.0**k:.6g}")


def extended_configs(configs, runs_m: pd.DataFrame | None, max_extensions: int = MAX_EXTENSIONS) -> list:
    """``configs`` and the extension runs the protocol adds to them, given the results so far.

    Per configuration of ``configs`` (its runs grouped by everything but
    ``learning_rate`` and ``seed``), run over two or more learning rates:
    while every run of its grid has a row in ``runs_m`` and its best
    learning rate (`best_learning_rate`) is the grid's smallest (largest),
    the runs of its seeds one decade below (above) are added, at most
    ``max_extensions`` decades in all. A pure function of its arguments: a
    runner calls it after each round, runs what it adds and calls it again
    until it adds nothing (at most ``max_extensions`` rounds); since
    finished runs are kept, an interrupted protocol resumes where it
    stopped, and a reader calls it on the finished table to find the runs
    that belong to a configuration's final grid.

    Args:
        configs: The suite's `bench.config.RunConfig`s (the first round).
        runs_m: The per-run table (``run_id``, ``learning_rate``,
            ``status``, ``test_accuracy`` and the config columns); None or
            empty when nothing ran yet.
        max_extensions: Decades the grid may grow by, per configuration.

    Returns:
        ``configs`` followed by the extension runs, without duplicates, in
        a stable order.
    """
    configs = list(configs)
    out, seen = list(configs), {c.run_id for c in configs}
    if runs_m is None or runs_m.empty or "run_id" not in runs_m.columns:
        return out
    by_id = runs_m.drop_duplicates("run_id").set_index("run_id", drop=False)
    groups: dict = {}
    for c in configs:
        groups.setdefault(c.replace(learning_rate=1.0, seed=0).run_id, []).append(c)
    for group in groups.values():
        seeds = sorted({c.seed for c in group})
        by_seed = {}
        for c in group:
            by_seed.setdefault(c.seed, c)
        grid = sorted({c.learning_rate for c in group})
        if len(grid) < 2:
            continue
        current = list(group)
        for _ in range(max_extensions):
            ids = [c.run_id for c in current]
            if not all(i in by_id.index for i in ids):
                break  # the grid is not finished: its best is not known yet
            table = best_learning_rate(by_id.loc[ids].reset_index(drop=True))
            edge = table.iloc[0]["edge"] if len(table) == 1 else ""
            if not edge:
                break
            lr = decade(grid[0], -1) if edge == "low" else decade(grid[-1], 1)
            grid = sorted([*grid, lr])
            added = [by_seed[s].replace(learning_rate=lr) for s in seeds]
            current += added
            for c in added:
                if c.run_id not in seen:
                    seen.add(c.run_id)
                    out.append(c)
    return out


def run_extensions(configs, run, out):
    """Trains the protocol's extension runs after a suite's own runs (``configs``) have run into ``out``.

    Round after round (at most `MAX_EXTENSIONS`), reads ``out``'s per-run
    table, asks `extended_configs` which runs the grids now need and, when
    there are new ones, calls ``run`` with every run so far (the runner
    skips those already done). Resume-safe: after an interrupt the same
    call does only what is missing.

    Args:
        configs: The suite's runs (the first round), already run.
        run: ``run(configs) -> SuiteSummary`` (`bench.runner.run_suite` with
            the command's options).
        out: The results directory.

    Returns:
        The summaries of the rounds that ran (empty when no grid needed one).
    """
    summaries, known = [], {c.run_id for c in configs}
    for _ in range(MAX_EXTENSIONS):
        current = extended_configs(configs, read_runs(out))
        if all(c.run_id in known for c in current):
            break
        known = {c.run_id for c in current}
        summaries.append(run(current))
    return summaries


def read_runs(out) -> pd.DataFrame | None:
    """``out``'s per-run table, from its run folders' JSON files (`bench.results.run_rows`); None before any run.

    Read from the folders, not ``runs.parquet``: the protocol's rounds leave
    the top-level tables to be rebuilt once, after the last round.
    """
    from vgbench.bench.results import run_rows

    return run_rows(out)
