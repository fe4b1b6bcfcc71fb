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
- ``grad_factor``: the per-layer factor of those per-weight gradients: by
  how much the gradient is multiplied at each layer it crosses on its way
  back, fitted robustly (`fit_factor`: least squares of log(value) on the
  layer index, over the hidden layers whose value is finite and > 0).
- ``backward_factor``: the same fit of ``backward_rms``, the RMS of the
  back-propagated signal ``B·∂L/∂z`` at each pre-activation. The kernel
  gradient is ``∂L/∂W_l = δ_l ⊗ a_(l-1)``: when the forward signal a shrinks
  layer by layer and δ shrinks the other way, the two cancel and
  ``grad_factor`` looks healthy; ``backward_factor`` does not.
- ``forward_factor``: the fit of ``preact_rms`` in the forward direction: by
  how much the pre-activations' RMS is multiplied at each layer on the way
  from the input (the square root of mean-field theory's q_(l+1)/q_l).
- ``underflow_layers``: the number of hidden layers whose kernel gradient is
  exactly 0 or not finite (at step 0, or at the last step where gradients
  were recorded); ``deepest_underflow_layer``: the largest index among them
  (NaN when none). The factors ignore those layers; they are counted here.
- ``*_init`` is measured at step 0 (before any update, on a fixed batch);
  ``*_final`` is the geometric mean over the last ``FINAL_WINDOW`` logged steps.
- ``dead_fraction`` / ``saturated_fraction``: mean over hidden layers at
  step 0 (``_init``) and at the last step where activations were measured
  (``_final``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pandas as pd

from vgbench.bench import quantities as Q
from vgbench.bench.quantities import LAYER_QUANTITIES, Quantity
from vgbench.bench.utils import finite

FINAL_WINDOW = 10

# Thresholds of the written findings and flags.
VANISHING_FACTOR = 0.5
EXPLODING_FACTOR = 2.0
VANISHING_RATIO = 1e-3
EXPLODING_RATIO = 1e3
DEAD_THRESHOLD = 0.5

# Default tolerances of `vgbench compare` for the per-layer signal factors and the
# disagreement with the theory, in decades per layer: each at least 1.3 times the largest
# seed-to-seed range measured on the `ci` suite's MLPs (the numbers, and how they were
# measured, are in `bench.compare.tolerances`).
BACKWARD_INIT_TOLERANCE = 0.05
FORWARD_INIT_TOLERANCE = 0.1
THEORY_DEVIATION_TOLERANCE = 0.06
BACKWARD_FINAL_TOLERANCE = 0.06
GRAD_FINAL_TOLERANCE = 0.1


def hidden(layers: pd.DataFrame) -> pd.DataFrame:
    """Rows of hidden layers only (drops the output layer)."""
    return layers[layers["layer_name"] != "output"]


def _first_last_ratio(per_layer: pd.Series) -> float:
    """First/last ratio of norms indexed by layer_index (0 when the first underflowed)."""
    per_layer = per_layer.dropna().sort_index()
    if len(per_layer) < 2:
        return np.nan
    first, last = float(per_layer.iloc[0]), float(per_layer.iloc[-1])
    n = int(per_layer.index[-1] - per_layer.index[0])
    if not np.isfinite(first) or not np.isfinite(last) or last <= 0 or n <= 0:
        return np.nan
    if first <= 0:
        return 0.0
    return first / last


def fit_factor(per_layer: pd.Series, direction: str = "backward") -> float:
    """Per-layer factor of a signal, fitted over the layers where it was measured.

    Least squares of log(value) on the layer index, over the layers whose
    value is finite and > 0, exponentiated: an underflowed layer (exactly 0)
    or a non-finite one is left out rather than turned into a factor of 0.

    Args:
        per_layer: values indexed by layer_index (0 nearest the input).
        direction: ``"backward"``: the factor per layer on the way from the
            output to the input (a gradient; below 1 it vanishes towards
            the input); ``"forward"``: from the input to the output.

    Returns:
        The factor, or NaN with fewer than two usable layers.
    """
    if direction not in ("backward", "forward"):
        raise ValueError(f"Argument `direction` must be 'backward' or 'forward'. Received: direction={direction!r}")
    v = pd.to_numeric(per_layer, errors="coerce").astype("float64")
    v = v[np.isfinite(v) & (v > 0)]
    x = np.asarray(v.index, dtype="float64")
    if len(v) < 2 or np.ptp(x) == 0:
        return np.nan
    slope = np.polyfit(x, np.log(v.to_numpy()), 1)[0]
    return float(np.exp(-slope if direction == "backward" else slope))


SIZE_COLUMNS = {name: q.size_column for name, q in LAYER_QUANTITIES.items() if q.size_column}


def per_weight(layers: pd.DataFrame, column: str = Q.KERNEL_GRAD_NORM) -> pd.Series:
    """RMS gradient per weight, ``norm / √size``; the raw norm when sizes are absent."""
    size = SIZE_COLUMNS.get(column)
    if size is None or size not in layers.columns:
        return layers[column]
    return layers[column] / np.sqrt(layers[size].astype("float64"))


def gradient_profile(
    layers: pd.DataFrame, which: str = "init", column: str = Q.KERNEL_GRAD_NORM, normalize: bool = True
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
        # The geometric mean of each group's positive values, as one grouped mean of logs.
        v = df[column].to_numpy(dtype="float64")
        with np.errstate(divide="ignore", invalid="ignore"):
            df = df.assign(**{column: np.log(np.where(v > 0, v, np.nan))})
        out = df.groupby(["run_id", "layer_index", "layer_name"], as_index=False)[column].mean()
        out = out.assign(**{column: np.exp(out[column])}).rename(columns={column: "value"})
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


def _profile_stat(column: str, which: str, stat: str):
    """Compute function of a first/last ratio (stat "ratio") or fitted factor ("backward"/"forward") of a profile."""

    def compute(ctx: MetricContext) -> pd.Series:
        if column not in ctx.layers.columns:  # tables written before the column existed
            return pd.Series(dtype="float64")
        prof = ctx.profile(which, column)
        one = _first_last_ratio if stat == "ratio" else lambda v: fit_factor(v, stat)
        return pd.Series(
            {run_id: one(g.set_index("layer_index")["value"]) for run_id, g in prof.groupby("run_id")},
            dtype="float64",
        )

    return compute


def underflowed_layers(layers: pd.DataFrame, which: str, column: str = Q.KERNEL_GRAD_NORM) -> pd.DataFrame:
    """Per run: the hidden layers whose ``column`` is exactly 0 or not finite.

    Measured at step 0 (``which="init"``) or at the last step after 0 where
    ``column`` was recorded (``"final"``).

    Returns:
        DataFrame indexed by run_id with ``underflow_layers`` (their number)
        and ``deepest_underflow_layer`` (the largest index among them; NaN
        when none).
    """
    df = hidden(layers)[["run_id", "step", "layer_index", column]]
    measured = df.dropna(subset=[column])
    if which == "init":
        steps = measured[measured["step"] == 0][["run_id", "step"]].drop_duplicates()
    else:
        steps = measured[measured["step"] > 0].groupby("run_id", as_index=False)["step"].max()
    df = df.merge(steps, on=["run_id", "step"])
    values = df[column].to_numpy(dtype="float64")
    df = df.assign(_under=~np.isfinite(values) | (values == 0))
    under = df[df["_under"]].groupby("run_id")["layer_index"]
    out = pd.DataFrame(index=pd.Index(steps["run_id"].unique(), name="run_id"))
    out["underflow_layers"] = under.size().reindex(out.index).fillna(0).astype("float64")
    out["deepest_underflow_layer"] = under.max().reindex(out.index).astype("float64")
    return out


def _underflow(which: str, field: str):
    """Compute function of an underflow metric (see `underflowed_layers`)."""
    return lambda ctx: underflowed_layers(ctx.layers, which)[field]


def _fraction(column: str, which: str):
    """Compute function of a dead/saturated fraction, averaged over the hidden layers."""
    return lambda ctx: _act_fraction(ctx.layers, column, which)


_WHEN = {"init": "at step 0", "final": "at the end of training"}
_FRACTION = (0.0, 1.0)


# The config field that sets how often a per-layer quantity is recorded, by cadence.
_CADENCE_FIELD = {"grad": "log_every", "act": "act_every"}


def _measured_by(column: str, which: str) -> tuple[str, ...]:
    """The config fields that define how a metric of `column` is measured: its cadence's, except at step 0."""
    return () if which == "init" else (_CADENCE_FIELD[LAYER_QUANTITIES[column].cadence],)


def _metrics():
    out = [
        # An outcome column that training writes itself.
        Quantity(
            "test_accuracy",
            "run",
            "test accuracy",
            direction="higher",
            unit="accuracy",
            bounds=_FRACTION,
            tolerance=0.02,
        ),
    ]
    for which in ("final", "init"):
        out += [
            Quantity(
                f"grad_factor_{which}",
                "run",
                f"per-layer gradient factor {_WHEN[which]}",
                _profile_stat(Q.KERNEL_GRAD_NORM, which, "backward"),
                direction="one",
                scale="log",
                unit="factor",
                tolerance=GRAD_FINAL_TOLERANCE if which == "final" else None,
                definition=_measured_by(Q.KERNEL_GRAD_NORM, which),
            ),
            Quantity(
                f"grad_ratio_{which}",
                "run",
                f"first/last gradient ratio {_WHEN[which]}",
                _profile_stat(Q.KERNEL_GRAD_NORM, which, "ratio"),
                direction="one",
                scale="log",
                unit="ratio",
                tolerance=0.5,
                definition=_measured_by(Q.KERNEL_GRAD_NORM, which),
            ),
            # Tolerances from the seed-to-seed scatter of the `ci` suite (`bench.compare.tolerances`).
            Quantity(
                f"backward_factor_{which}",
                "run",
                f"per-layer backward-signal factor {_WHEN[which]}",
                _profile_stat(Q.BACKWARD_RMS, which, "backward"),
                direction="one",
                scale="log",
                unit="factor",
                tolerance=BACKWARD_FINAL_TOLERANCE if which == "final" else BACKWARD_INIT_TOLERANCE,
                definition=_measured_by(Q.BACKWARD_RMS, which),
            ),
            Quantity(
                f"forward_factor_{which}",
                "run",
                f"per-layer forward-signal factor {_WHEN[which]}",
                _profile_stat(Q.PREACT_RMS, which, "forward"),
                direction="one",
                scale="log",
                unit="factor",
                tolerance=None if which == "final" else FORWARD_INIT_TOLERANCE,
                definition=_measured_by(Q.PREACT_RMS, which),
            ),
        ]
    # The step-0 disagreement with the mean-field theory (`bench.theory`): the larger
    # |log10(measured / predicted)| of the backward and forward factors, in decades per layer.
    # The prediction needs the run's config, not only its layers: `vgbench compare` adds the
    # column (`bench.compare.disagreement`), as the report compares the two (`bench.report.findings`).
    out.append(
        Quantity(
            "theory_deviation_init",
            "run",
            "disagreement with the theory at step 0 (decades per layer)",
            direction="lower",
            bounds=(0.0, np.inf),
            tolerance=THEORY_DEVIATION_TOLERANCE,
        )
    )
    for which in ("init", "final"):
        out += [
            Quantity(
                f"bias_grad_ratio_{which}",
                "run",
                f"first/last bias-gradient ratio {_WHEN[which]}",
                _profile_stat(Q.BIAS_GRAD_NORM, which, "ratio"),
                direction="one",
                scale="log",
                unit="ratio",
                definition=_measured_by(Q.BIAS_GRAD_NORM, which),
            ),
            Quantity(
                f"underflow_layers_{which}",
                "run",
                f"hidden layers with exactly zero gradient {_WHEN[which]}",
                _underflow(which, "underflow_layers"),
                direction="lower",
                unit="count",
                bounds=(0.0, np.inf),
                definition=_measured_by(Q.KERNEL_GRAD_NORM, which),
            ),
            Quantity(
                f"deepest_underflow_layer_{which}",
                "run",
                f"deepest layer with exactly zero gradient {_WHEN[which]}",
                _underflow(which, "deepest_underflow_layer"),
                definition=_measured_by(Q.KERNEL_GRAD_NORM, which),
            ),
        ]
    for column in (Q.DEAD_FRACTION, Q.SATURATED_FRACTION):
        label = LAYER_QUANTITIES[column].label
        for which in ("final", "init"):
            out.append(
                Quantity(
                    f"{column}_{which}",
                    "run",
                    f"{label} {_WHEN[which]}",
                    _fraction(column, which),
                    direction="lower",
                    unit="fraction",
                    bounds=_FRACTION,
                    tolerance=0.1 if which == "final" else None,
                    definition=_measured_by(column, which),
                )
            )
    # Another outcome column: reported, but too noisy to fail a comparison by default.
    out.append(
        Quantity(
            "wall_time_s",
            "run",
            "wall time",
            direction="lower",
            unit="seconds",
            bounds=(0.0, np.inf),
            tolerance=2.0,
            gating=False,
        )
    )
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


@dataclasses.dataclass(frozen=True)
class FlagKind:
    """A registered kind of flag: how its short text and its sentence are written.

    Attributes:
        kind: its name, e.g. ``"vanishing"``.
        describe: ``fn(flag) -> str``, the words for a reader, from the
            flag's numbers.
        timed: whether the flag is raised at a moment (``"init"`` or
            ``"final"``), written ``kind@when``.
    """

    kind: str
    describe: Callable[[Flag], str]
    timed: bool = True


class Flag(str):
    """A finding about one run: its kind, when it holds and the numbers behind it.

    A flag is its short text (``"vanishing@init"``, ``"dead units"``), so a
    list of flags is still a list of strings; `describe` gives the words.

    Attributes:
        kind: one of `FLAG_KINDS`.
        when: ``"init"``, ``"final"``, or None for untimed kinds.
        numbers: the values that raised it, e.g. ``{"factor": 0.24}``.
    """

    kind: str
    when: str | None
    numbers: dict

    def __new__(cls, kind: str, when: str | None = None, **numbers):
        if kind not in FLAG_KINDS:
            raise ValueError(f"Argument `kind` must be one of {list(FLAG_KINDS)}. Received: kind={kind!r}")
        spec = FLAG_KINDS[kind]
        if spec.timed and when not in ("init", "final"):
            raise ValueError(f"Argument `when` must be 'init' or 'final' for {kind!r}. Received: when={when!r}")
        self = super().__new__(cls, f"{kind}@{when}" if spec.timed else kind)
        self.kind, self.when, self.numbers = kind, when if spec.timed else None, dict(numbers)
        return self

    def describe(self) -> str:
        """The flag in words, with its numbers."""
        return FLAG_KINDS[self.kind].describe(self)

    def __reduce__(self):
        return (_make_flag, (self.kind, self.when, self.numbers))


def _make_flag(kind, when, numbers):
    return Flag(kind, when, **numbers)


def _per_layer(x) -> str:
    # Two significant digits below 0.1: a factor of 0.004 must not read "×0.00".
    return f"×{x:.2f} per layer" if abs(x) >= 0.095 else f"×{x:.2g} per layer"


def _describe_vanishing(f: Flag) -> str:
    n = f.numbers
    if n.get("all_zero"):
        return "every hidden layer's gradient is exactly 0 (all underflowed)"
    if finite(n.get("backward_factor")):
        return f"backward signal vanishes {_per_layer(n['backward_factor'])}"
    if finite(n.get("grad_factor")) and n["grad_factor"] > 0:
        return f"kernel gradient vanishes {_per_layer(n['grad_factor'])}"
    return f"kernel gradient vanishes: first/last layer ratio {n.get('grad_ratio', np.nan):.2g}"


def _describe_collapse(f: Flag) -> str:
    return "training collapsed: every hidden layer's gradient is exactly 0, though it did not vanish at step 0"


def _describe_forward_collapse(f: Flag) -> str:
    n = f.numbers
    text = f"forward signal collapses {_per_layer(n['forward_factor'])}"
    if n.get("kernel_flat"):
        text += " (the kernel gradient looks flat because the two cancel)"
    return text


def _describe_exploding(f: Flag) -> str:
    factor = _firstfinite(f.numbers.get("backward_factor"), f.numbers.get("grad_factor"))
    return "exploding" + (f" {_per_layer(factor)}" if factor is not None else "")


def _describe_underflow(f: Flag) -> str:
    n = f.numbers
    count = int(n["layers"])
    where = f" below layer {int(n['deepest_layer']) + 1}" if finite(n.get("deepest_layer")) else ""
    return f"underflow{where} ({count} hidden layer{'s' * (count != 1)} with exactly zero gradient)"


def _describe_dead(f: Flag) -> str:
    return f"dead units ({f.numbers[Q.DEAD_FRACTION]:.0%} of hidden units)"


def _describe_diverged(f: Flag) -> str:
    step = f.numbers.get("step")
    return "diverged" + (f" at step {int(step)}" if finite(step) and step >= 0 else "")


FLAG_KINDS: dict[str, FlagKind] = {
    k.kind: k
    for k in (
        FlagKind("diverged", _describe_diverged, timed=False),
        FlagKind("failed", lambda f: "failed", timed=False),
        FlagKind("vanishing", _describe_vanishing),
        FlagKind("collapse", _describe_collapse),
        FlagKind("exploding", _describe_exploding),
        FlagKind("forward collapse", _describe_forward_collapse),
        FlagKind("underflow", _describe_underflow),
        FlagKind("dead units", _describe_dead, timed=False),
    )
}


def _spans(row) -> float | None:
    """Layer-to-layer steps between the first and last hidden layer (depth - 1), when the row knows its depth."""
    depth = row.get("depth")
    return float(depth) - 1 if finite(depth) and depth > 1 else None


def _vanishes(factor, span) -> bool:
    """A per-layer factor below the threshold, or one that compounds over the depth below VANISHING_RATIO."""
    if not finite(factor):
        return False
    return factor < VANISHING_FACTOR or (span is not None and factor**span < VANISHING_RATIO)


def _explodes(factor, span) -> bool:
    if not finite(factor):
        return False
    return factor > EXPLODING_FACTOR or (span is not None and factor**span > EXPLODING_RATIO)


def flags(row) -> list[Flag]:
    """The flags of one run_metrics row, most severe first (each a `Flag`, i.e. its short text).

    - ``diverged``, ``failed``: the run's status.
    - ``vanishing@when``: the backward signal or the kernel gradient shrinks
      on its way to the input: a fitted factor below VANISHING_FACTOR, or
      one that compounds over the depth (or a first/last kernel-gradient
      ratio) below VANISHING_RATIO. Every hidden layer's gradient exactly 0
      is the most vanishing case, but for `collapse`.
    - ``collapse@final``: every hidden layer's gradient exactly 0 at the end
      of a run whose gradient did not vanish at step 0: training drove it
      to zero (a dead network, for example after too large a step), which
      is not the vanishing-gradient problem.
    - ``exploding@when``: the same above EXPLODING_FACTOR / EXPLODING_RATIO.
    - ``forward collapse@when``: the forward signal (pre-activation RMS)
      shrinks layer by layer by the same criterion, whether or not the
      backward one does; when the kernel gradient is not flagged, the two
      cancel in it.
    - ``underflow@when``: some hidden layers get exactly zero gradient.
    - ``dead units``: more than DEAD_THRESHOLD of the hidden units dead (at
      the end of training, else at step 0).
    """
    out = []
    if row.get("status") == "diverged":
        out.append(Flag("diverged", step=row.get("diverged_step")))
    if row.get("status") == "failed":
        out.append(Flag("failed"))
    span = _spans(row)
    for which in ("init", "final"):
        f, r = row.get(f"grad_factor_{which}"), row.get(f"grad_ratio_{which}")
        b, fw = row.get(f"backward_factor_{which}"), row.get(f"forward_factor_{which}")
        numbers = {k: float(v) for k, v in (("grad_factor", f), ("grad_ratio", r), ("backward_factor", b)) if finite(v)}
        kernel_vanishes = finite(f) and f < VANISHING_FACTOR or finite(r) and r < VANISHING_RATIO
        kernel_explodes = finite(f) and f > EXPLODING_FACTOR or finite(r) and r > EXPLODING_RATIO
        n = row.get(f"underflow_layers_{which}")
        depth = row.get("depth")
        # Every hidden layer's gradient exactly 0 leaves no factor to fit: the most vanishing case there is.
        all_zero = finite(n) and finite(depth) and n >= depth > 0
        if all_zero and which == "final" and _measured_init(row) and "vanishing@init" not in out:
            out.append(Flag("collapse", which, **numbers))
        elif all_zero:
            out.append(Flag("vanishing", which, all_zero=True, **numbers))
        elif kernel_vanishes or _vanishes(b, span):
            out.append(Flag("vanishing", which, **numbers))
        elif kernel_explodes or _explodes(b, span):
            out.append(Flag("exploding", which, **numbers))
        if _vanishes(fw, span):
            out.append(
                Flag(
                    "forward collapse",
                    which,
                    forward_factor=float(fw),
                    kernel_flat=not (kernel_vanishes or kernel_explodes),
                    **numbers,
                )
            )
        if finite(n) and n > 0:
            deepest = row.get(f"deepest_underflow_layer_{which}")
            deepest = float(deepest) if finite(deepest) else None
            out.append(Flag("underflow", which, layers=int(n), deepest_layer=deepest))
    d = row.get("dead_fraction_final")
    if not finite(d):
        d = row.get("dead_fraction_init")
    if finite(d) and d > DEAD_THRESHOLD:
        out.append(Flag("dead units", dead_fraction=float(d)))
    return out


def _measured_init(row) -> bool:
    """Whether a run's gradient at step 0 was measured (a factor, a ratio, or its underflowed layers)."""
    keys = ("grad_factor_init", "grad_ratio_init", "backward_factor_init", "underflow_layers_init")
    return any(finite(row.get(k)) for k in keys)


def _firstfinite(*values):
    return next((float(v) for v in values if finite(v)), None)
