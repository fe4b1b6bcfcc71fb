"""Per-run statistics derived from the long-form tables.

Reports and the regression comparer both read these, so a number in a figure,
a summary and a CI comparison is computed once, here, from stored results.
Each function takes long-form DataFrames and returns a DataFrame, holding no
state (the way seaborn's statistics are written).

Definitions (hidden layers only; index 0 is nearest the input):

- gradients are compared per weight: the RMS gradient of a layer's kernel,
  ``‖∂L/∂W‖ / √|W|`` (``kernel_size`` = number of weights, recorded beside the
  norm). Raw norms grow with a layer's size, so a 784-input first layer would
  otherwise look ~2.5× "stronger" than a 128-input one for no dynamical
  reason. Tables without ``kernel_size`` fall back to the raw norms.
- ``grad_ratio``: first-to-last hidden layer ratio of those per-weight
  gradients, ``rms(∂L/∂W_0) / rms(∂L/∂W_{D-1})``. Below 1 the gradient
  shrinks on its way to the input (vanishing), above 1 it grows (exploding).
- ``grad_factor``: the geometric-mean per-layer factor,
  ``grad_ratio ** (1 / (D - 1))``: by how much the gradient is multiplied at
  each layer it crosses on its way back.
- ``*_init`` is measured at step 0 (before any update, on a fixed batch);
  ``*_final`` is the geometric mean over the last ``FINAL_WINDOW`` logged steps.
- ``dead_fraction`` / ``saturated_fraction``: mean over hidden layers at
  step 0 (``_init``) and at the last step where activations were measured
  (``_final``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.quantities import LAYER_QUANTITIES, Quantity

FINAL_WINDOW = 10

# Thresholds of the written findings and flags.
VANISHING_FACTOR = 0.5
EXPLODING_FACTOR = 2.0
VANISHING_RATIO = 1e-3
EXPLODING_RATIO = 1e3
DEAD_THRESHOLD = 0.5



def hidden(layers: pd.DataFrame) -> pd.DataFrame:
    """Rows of hidden layers only (drops the output layer)."""
    return layers[layers["layer_name"] != "output"]


def _ratio_and_factor(per_layer: pd.Series) -> tuple[float, float]:
    """(first/last ratio, per-layer factor) from norms indexed by layer_index."""
    per_layer = per_layer.dropna().sort_index()
    if len(per_layer) < 2:
        return np.nan, np.nan
    first, last = float(per_layer.iloc[0]), float(per_layer.iloc[-1])
    n = int(per_layer.index[-1] - per_layer.index[0])
    if not np.isfinite(first) or not np.isfinite(last) or last <= 0 or n <= 0:
        return np.nan, np.nan
    if first <= 0:
        return 0.0, 0.0
    ratio = first / last
    return ratio, ratio ** (1.0 / n)


def _geo_mean(x: pd.Series) -> float:
    x = x.dropna()
    x = x[x > 0]
    if x.empty:
        return np.nan
    return float(np.exp(np.mean(np.log(x))))


SIZE_COLUMNS = {name: q.size_column for name, q in LAYER_QUANTITIES.items() if q.size_column}


def per_weight(layers: pd.DataFrame, column: str = "kernel_grad_norm") -> pd.Series:
    """RMS gradient per weight, ``norm / √size``; the raw norm when sizes are absent."""
    size = SIZE_COLUMNS.get(column)
    if size is None or size not in layers.columns:
        return layers[column]
    return layers[column] / np.sqrt(layers[size].astype("float64"))


def gradient_profile(
    layers: pd.DataFrame, which: str = "init", column: str = "kernel_grad_norm", normalize: bool = True
) -> pd.DataFrame:
    """Per (run, layer) gradient at init (step 0) or at the end of training.

    Args:
        layers: the ``layers`` table.
        which: ``"init"`` for step 0, ``"final"`` for the geometric mean over
            the last ``FINAL_WINDOW`` steps where ``column`` was measured.
        column: ``"kernel_grad_norm"`` or ``"bias_grad_norm"``.
        normalize: RMS per weight (`per_weight`) instead of the raw norm.

    Returns:
        DataFrame with columns ``run_id, layer_index, layer_name, value``.
    """
    if which not in ("init", "final"):
        raise ValueError(f"Argument `which` must be 'init' or 'final'. Received: which={which!r}")
    df = layers[["run_id", "step", "layer_index", "layer_name"]].assign(
        **{column: per_weight(layers, column) if normalize else layers[column]}
    )
    df = df.dropna(subset=[column])
    if which == "init":
        df = df[df["step"] == 0]
        out = df.rename(columns={column: "value"})
    else:
        df = df[df["step"] > 0]
        steps = df[["run_id", "step"]].drop_duplicates().sort_values(["run_id", "step"])
        last = steps.groupby("run_id").tail(FINAL_WINDOW)
        df = df.merge(last, on=["run_id", "step"])
        out = (
            df.groupby(["run_id", "layer_index", "layer_name"], as_index=False)[column]
            .agg(_geo_mean)
            .rename(columns={column: "value"})
        )
    return out[["run_id", "layer_index", "layer_name", "value"]].reset_index(drop=True)


def _act_fraction(layers: pd.DataFrame, column: str, which: str) -> pd.Series:
    df = hidden(layers)[["run_id", "step", column]].dropna(subset=[column])
    if df.empty:
        return pd.Series(dtype="float64")
    if which == "init":
        df = df[df["step"] == 0]
    else:
        last = df.groupby("run_id")["step"].transform("max")
        df = df[(df["step"] == last) & (df["step"] > 0)]
    return df.groupby("run_id")[column].mean()


class MetricContext:
    """What a run metric's compute function reads: the hidden layers' rows, with cached profiles."""

    def __init__(self, layers: pd.DataFrame):
        self.layers = hidden(layers)
        self._profiles = {}

    def profile(self, which: str, column: str) -> pd.DataFrame:
        """`gradient_profile` of the hidden layers, computed once per (which, column)."""
        key = (which, column)
        if key not in self._profiles:
            self._profiles[key] = gradient_profile(self.layers, which, column)
        return self._profiles[key]


def _profile_stat(column: str, which: str, stat: int):
    """Compute function of a first/last ratio (stat 0) or per-layer factor (stat 1) of a profile."""

    def compute(ctx: MetricContext) -> pd.Series:
        prof = ctx.profile(which, column)
        return pd.Series(
            {
                run_id: _ratio_and_factor(g.set_index("layer_index")["value"])[stat]
                for run_id, g in prof.groupby("run_id")
            },
            dtype="float64",
        )

    return compute


def _fraction(column: str, which: str):
    """Compute function of a dead/saturated fraction, averaged over the hidden layers."""
    return lambda ctx: _act_fraction(ctx.layers, column, which)


_WHEN = {"init": "at step 0", "final": "at the end of training"}
_FRACTION = (0.0, 1.0)


def _metrics():  # fmt: skip
    grad = ("log_every",)
    act = ("act_every",)
    out = [
        # An outcome column that training writes itself.
        Quantity("test_accuracy", "run", "test accuracy", direction="higher", unit="accuracy",
                 bounds=_FRACTION, tolerance=0.02),
    ]
    for which in ("final", "init"):
        measured = grad if which == "final" else ()
        out += [
            Quantity(f"grad_factor_{which}", "run", f"per-layer gradient factor {_WHEN[which]}",
                     _profile_stat("kernel_grad_norm", which, 1), direction="one", scale="log", unit="factor",
                     tolerance=0.1 if which == "final" else None, definition=measured),
            Quantity(f"grad_ratio_{which}", "run", f"first/last gradient ratio {_WHEN[which]}",
                     _profile_stat("kernel_grad_norm", which, 0), direction="one", scale="log", unit="ratio",
                     tolerance=0.5, definition=measured),
        ]
    for which in ("init", "final"):
        out.append(
            Quantity(f"bias_grad_ratio_{which}", "run", f"first/last bias-gradient ratio {_WHEN[which]}",
                     _profile_stat("bias_grad_norm", which, 0), direction="one", scale="log", unit="ratio",
                     definition=grad if which == "final" else ())
        )
    for column in ("dead_fraction", "saturated_fraction"):
        label = LAYER_QUANTITIES[column].label
        for which in ("final", "init"):
            out.append(
                Quantity(f"{column}_{which}", "run", f"{label} {_WHEN[which]}", _fraction(column, which),
                         direction="lower", unit="fraction", bounds=_FRACTION,
                         tolerance=0.1 if which == "final" else None, definition=act if which == "final" else ())
            )
    # Another outcome column: reported, but too noisy to fail a comparison by default.
    out.append(Quantity("wall_time_s", "run", "wall time", direction="lower", unit="seconds",
                        bounds=(0.0, np.inf), tolerance=2.0, gating=False))
    return {q.name: q for q in out}


METRICS: dict[str, Quantity] = _metrics()

# The per-run metrics computed from the layers table (the outcome columns come with the runs table).
METRIC_COLUMNS = [name for name, q in METRICS.items() if q.compute is not None]


def run_metrics(runs: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the ``runs`` table plus the METRIC_COLUMNS."""
    ctx = MetricContext(layers)
    m = pd.DataFrame({name: METRICS[name].compute(ctx) for name in METRIC_COLUMNS}, columns=METRIC_COLUMNS)
    m.index.name = "run_id"
    return runs.merge(m.reset_index(), on="run_id", how="left")


def flags(row) -> list[str]:
    """Plain-word flags of one run_metrics row: vanishing, exploding, dead units, diverged."""
    out = []
    if row.get("status") == "diverged":
        out.append("diverged")
    if row.get("status") == "failed":
        out.append("failed")
    for which in ("init", "final"):
        f, r = row.get(f"grad_factor_{which}"), row.get(f"grad_ratio_{which}")
        if _finite(f) and f < VANISHING_FACTOR or _finite(r) and r < VANISHING_RATIO:
            out.append(f"vanishing@{which}")
        elif _finite(f) and f > EXPLODING_FACTOR or _finite(r) and r > EXPLODING_RATIO:
            out.append(f"exploding@{which}")
    d = row.get("dead_fraction_final")
    if not _finite(d):
        d = row.get("dead_fraction_init")
    if _finite(d) and d > DEAD_THRESHOLD:
        out.append("dead units")
    return out


def _finite(x) -> bool:
    try:
        return x is not None and bool(np.isfinite(x))
    except TypeError:
        return False
