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
        self._layer_rows = []
        self._variable_rows = []
        self._history_rows = []

    def record(self, step, epoch, grad=None, act=None, var=None):
        """Appends one step's records (None: not measured at this step) as layer and variable rows."""
        measures = self.measures
        units = measures.units
        n = len(units)
        g = np.full((n, len(GRAD_FIELDS)), np.nan) if grad is None else grad
        a = np.full((n, len(ACT_FIELDS)), np.nan) if act is None else act
        positions = measures.layer_positions()
        for i, unit in enumerate(units):
            self._layer_rows.append((step, epoch, positions[i], unit.name, *g[i], *a[i]))
        if var is not None:
            var = measures.all_variable_norms(g, var)
            for k, (i, v, name) in enumerate(measures.variables):
                size = measures.var_sizes[k]
                self._variable_rows.append((step, epoch, positions[i], units[i].name, name, v.path, size, var[k]))

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
        layers = _layer_frame(self._layer_rows, run_id, self.measures.units, self.measures.layer_positions())
        variables = _variable_frame(self._variable_rows, run_id)
        history = pd.DataFrame(self._history_rows)
        for c in HISTORY_COLUMNS[1:]:
            if c not in history.columns:
                history[c] = np.nan
        extra = sorted(c for c in history.columns if c not in HISTORY_COLUMNS)
        history = history[HISTORY_COLUMNS[1:] + extra].astype({"step": "int64", "epoch": "int64"})
        history.insert(0, "run_id", run_id)
        return layers, variables, history


def _layer_frame(rows, run_id, units, positions):
    cols = ["step", "epoch", "layer_index", "layer_name", *GRAD_FIELDS, *ACT_FIELDS]
    df = pd.DataFrame(rows, columns=cols)
    df.insert(0, "run_id", run_id)
    df = df.astype({"step": "int64", "epoch": "int64", "layer_index": "int64"})
    for c in (*GRAD_FIELDS, *ACT_FIELDS):
        df[c] = df[c].astype("float64")
    # Parameter counts, so that layers of different sizes compare per weight.
    sizes = {positions[i]: (u.kernel_size, u.bias_size) for i, u in enumerate(units)}
    df["kernel_size"] = df["layer_index"].map(lambda i: sizes[i][0]).astype("int64")
    df["bias_size"] = df["layer_index"].map(lambda i: sizes[i][1]).astype("int64")
    df = df[[*LAYER_COLUMNS, "kernel_size", "bias_size"]]
    return df.sort_values(["step", "layer_index"], kind="stable").reset_index(drop=True)


def _variable_frame(rows, run_id):
    df = pd.DataFrame(rows, columns=VARIABLE_COLUMNS[1:])
    df.insert(0, "run_id", run_id)
    df = df.astype({"step": "int64", "epoch": "int64", "layer_index": "int64", "size": "int64", "grad_norm": "float64"})
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
