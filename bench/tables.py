"""The logger's tables: each recorded step's rows, and the ``layers``, ``variables`` and ``history`` frames.

`Tables` is the part of `bench.instrumentation.GradientNormLogger` that
holds what the steps recorded, in Python: one row per unit (and per
trainable variable) for each step's records, one history row per `fit`
log, and the first diverged step; `Tables.frames` assembles them in the
layouts of `bench.results` (``layers.parquet``, ``variables.parquet``,
``history.parquet``). The steps that fill it are backend-specific
(`bench.instrumentation_tf`, `bench.instrumentation_jax`,
`bench.population`); the tables are not.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vgbench.bench.measures import ACT_FIELDS, GRAD_FIELDS
from vgbench.bench.results import HISTORY_COLUMNS, LAYER_COLUMNS, VARIABLE_COLUMNS

# The compiled metrics that fill the history's accuracy columns, by
# preference; else the first other one whose name ends in "accuracy" or "acc"
# (not a top-k accuracy). Every other compiled metric goes to a column
# "metric:NAME" ("metric:val_NAME" on the test data).
ACCURACY_METRICS = ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy", "binary_accuracy")
METRIC_PREFIX = "metric:"


def accuracy_metric(names) -> str | None:
    """The compiled metric that the history's accuracy columns report, among log keys ``names``; None if none."""
    names = [n for n in names if not n.startswith("val_")]
    for name in ACCURACY_METRICS:
        if name in names:
            return name
    for name in names:
        if (name.endswith("accuracy") or name.endswith("_acc")) and "top_k" not in name:
            return name
    return None


def empty_frames():
    """``(layers, variables, history)`` with their columns and no rows: the tables before anything was recorded."""
    return (
        pd.DataFrame(columns=LAYER_COLUMNS),
        pd.DataFrame(columns=VARIABLE_COLUMNS),
        pd.DataFrame(columns=HISTORY_COLUMNS),
    )


class Tables:
    """The rows recorded so far for one model, and the first diverged step.

    Args:
        measures: the model's `bench.measures.Measures` (its units and
            variables, and each unit's ``layer_index``); None: history rows
            and divergence only.

    Attributes:
        diverged_step: first step with a non-finite loss or gradient, or None.
    """

    def __init__(self, measures=None):
        self.measures = measures
        self.diverged_step = None
        # One entry per recorded step, its rows as arrays (assembled in `frames`):
        # (step, epoch, each unit's layer_index, grad table, act table, other variables' norms or None).
        self._steps = []
        self._history_rows = []

    def record(self, step, epoch, grad=None, act=None, var=None):
        """Keeps one step's records (None: not measured at this step): layer rows, and variable rows with ``var``."""
        n = len(self.measures.units)
        positions = self.measures.layer_positions()
        self._steps.append(
            (
                step,
                epoch,
                np.array([positions[i] for i in range(n)], dtype=np.int64),
                _table(grad, n, len(GRAD_FIELDS)),
                _table(act, n, len(ACT_FIELDS)),
                None if var is None else np.array(var, dtype=np.float64),
            )
        )

    def record_history(self, step, epoch, logs) -> dict:
        """Appends one history row from `fit`-style logs (``loss``, ``accuracy``, ``val_loss``, ...); returns it."""
        row = _history_row(step, epoch, logs)
        self._history_rows.append(row)
        return row

    def mark_diverged(self, step):
        """Records the first step with a non-finite loss or gradient."""
        if self.diverged_step is None or step < self.diverged_step:
            self.diverged_step = step

    def frames(self, run_id):
        """``(layers, variables, history)`` DataFrames of the rows so far, with ``run_id`` as their first column."""
        layers = _layer_frame(self._steps, run_id, self.measures.units)
        variables = _variable_frame([s for s in self._steps if s[5] is not None], run_id, self.measures)
        history = pd.DataFrame(self._history_rows)
        for c in HISTORY_COLUMNS[1:]:
            if c not in history.columns:
                history[c] = np.nan
        extra = sorted(c for c in history.columns if c not in HISTORY_COLUMNS)
        history = history[HISTORY_COLUMNS[1:] + extra].astype({"step": "int64", "epoch": "int64"})
        history.insert(0, "run_id", run_id)
        return layers, variables, history


def _table(values, n, fields):
    """A step's (units, fields) table as float64, all NaN when not measured (None)."""
    return np.full((n, fields), np.nan) if values is None else np.array(values, dtype=np.float64)


def _layer_frame(steps, run_id, units):
    n, k = len(units), len(steps)
    grad = np.concatenate([s[3] for s in steps]) if steps else np.empty((0, len(GRAD_FIELDS)))
    act = np.concatenate([s[4] for s in steps]) if steps else np.empty((0, len(ACT_FIELDS)))
    columns = {
        "run_id": run_id,
        "step": np.repeat(np.array([s[0] for s in steps], dtype=np.int64), n),
        "epoch": np.repeat(np.array([s[1] for s in steps], dtype=np.int64), n),
        "layer_index": np.concatenate([s[2] for s in steps]) if steps else np.empty(0, np.int64),
        "layer_name": np.tile(np.array([u.name for u in units], dtype=object), k),
        **{f: grad[:, j] for j, f in enumerate(GRAD_FIELDS)},
        **{f: act[:, j] for j, f in enumerate(ACT_FIELDS)},
        # Parameter counts, so that layers of different sizes compare per weight.
        "kernel_size": np.tile(np.array([u.kernel_size for u in units], dtype=np.int64), k),
        "bias_size": np.tile(np.array([u.bias_size for u in units], dtype=np.int64), k),
    }
    df = pd.DataFrame(columns)[[*LAYER_COLUMNS, "kernel_size", "bias_size"]]
    return df.sort_values(["step", "layer_index"], kind="stable").reset_index(drop=True)


def _variable_frame(steps, run_id, measures):
    """One row per recorded step and trainable variable (``measures.variables``)."""
    owner = np.array([i for i, _, _ in measures.variables], dtype=np.int64)
    k = len(steps)
    norms = (
        measures.all_variable_norms(np.stack([s[3] for s in steps]), np.stack([s[5] for s in steps]))
        if steps
        else np.empty((0, len(owner)))
    )
    columns = {
        "run_id": run_id,
        "step": np.repeat(np.array([s[0] for s in steps], dtype=np.int64), len(owner)),
        "epoch": np.repeat(np.array([s[1] for s in steps], dtype=np.int64), len(owner)),
        "layer_index": np.concatenate([s[2][owner] for s in steps]) if steps else np.empty(0, np.int64),
        "layer_name": np.tile(np.array([measures.units[i].name for i in owner], dtype=object), k),
        "variable": np.tile(np.array([name for _, _, name in measures.variables], dtype=object), k),
        "variable_path": np.tile(np.array([v.path for _, v, _ in measures.variables], dtype=object), k),
        "size": np.tile(np.array(measures.var_sizes, dtype=np.int64), k),
        "grad_norm": norms.reshape(-1).astype(np.float64),
    }
    df = pd.DataFrame(columns)[VARIABLE_COLUMNS]
    return df.sort_values(["step", "layer_index"], kind="stable").reset_index(drop=True)


def _history_row(step, epoch, logs) -> dict:
    """One history row from `fit`'s logs: loss, the accuracy-like metric, and every other compiled metric."""
    acc = accuracy_metric(logs)
    row = {
        "step": step,
        "epoch": epoch,
        "train_loss": as_float(logs.get("loss")),
        "train_accuracy": as_float(logs.get(acc)) if acc else float("nan"),
        "test_loss": as_float(logs.get("val_loss")),
        "test_accuracy": as_float(logs.get(f"val_{acc}")) if acc else float("nan"),
    }
    skip = {"loss", "val_loss", acc, f"val_{acc}"}
    for key, value in logs.items():
        if key not in skip:
            row[METRIC_PREFIX + key] = as_float(value)
    return row


def as_float(v):
    """``float(v)``, or NaN where ``v`` is no number (None, a string)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")
