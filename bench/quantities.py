"""The registry of measured quantities: each per-layer column and per-run metric, defined once.

A `Quantity` is one entry: its name (the column it fills), the level it is
measured at (``"layer"``: one value per run, step and layer, a column of
``layers.parquet``; ``"run"``: one value per run, a column of
`bench.metrics.run_metrics`), how it is computed (a function reference),
whether higher values are better or worse, its scale, unit and label, how
its values and changes are written, and its default tolerance in `vgbench
compare`. Everything else is derived from the entries: the columns of
``layers.parquet``, the order of the instrumentation's buffers, the metric
columns, compare's metric table and tolerances, the report's labels.

Adding a per-layer quantity is one `Quantity(level="layer", ...)` in
`LAYER_QUANTITIES` below plus its compute function, which receives a
`LayerValues` inside the compiled train step and returns a scalar tensor
(written with `keras.ops`, so that it runs on every backend).
Adding a per-run metric is one `Quantity(level="run", ...)` in
`bench.metrics.METRICS` plus its compute function there.

The compute functions are written with `keras.ops`, so that they run
unchanged inside the compiled step of either backend (TensorFlow, JAX); Keras
is imported only inside them (while the instrumented step is traced), so
reading the registry stays cheap for the report and the comparer.

Reference:
    Schneider, Dangel & Hennig, "Cockpit: A Practical Debugging Tool for the
    Training of Deep Neural Networks", NeurIPS 2021 (quantities computed
    during training, instruments drawn from them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

__all__ = [
    "CADENCES",
    "DIRECTIONS",
    "LAYER_QUANTITIES",
    "LAYER_KEY_COLUMNS",
    "LayerValues",
    "Quantity",
    "SATURATION_THRESHOLD",
    "UNITS",
    "cadence_fields",
    "layer_columns",
]

# What a direction says about a value: "higher" (higher is better), "lower"
# (lower is better), "one" (1 is best: ratios and per-layer factors of a
# signal, whose distance from 1 in decades is how badly it vanishes or
# explodes), "neutral" (no better or worse).
DIRECTIONS = ("higher", "lower", "one", "neutral")

# Units and how a value of each is written.
UNITS = ("", "accuracy", "fraction", "factor", "ratio", "norm", "seconds", "count")

# When a per-layer quantity is recorded: every `log_every` steps ("grad") or
# every `act_every` steps ("act"); both at step 0.
CADENCES = ("grad", "act")

# The per-layer columns, by name: other modules refer to a column through these.
KERNEL_GRAD_NORM = "kernel_grad_norm"
BIAS_GRAD_NORM = "bias_grad_norm"
BACKWARD_RMS = "backward_rms"
PREACT_RMS = "preact_rms"
KERNEL_NORM = "kernel_norm"
UPDATE_RATIO = "update_ratio"
ACT_MEAN = "act_mean"
ACT_STD = "act_std"
ACT_RMS = "act_rms"
SATURATED_FRACTION = "saturated_fraction"
DEAD_FRACTION = "dead_fraction"
INACTIVE_FRACTION = "inactive_fraction"

# A derivative below this share of its maximum counts as saturated.
SATURATION_THRESHOLD = 0.01


@dataclasses.dataclass(frozen=True)
class Quantity:
    """One measured quantity.

    Attributes:
        name: the column it fills.
        level: ``"layer"`` (per run, step and layer) or ``"run"`` (per run).
        label: short words for axes, tables and sentences.
        compute: how it is computed. Layer quantities: ``fn(LayerValues) ->
            scalar tensor``. Run metrics: ``fn(MetricContext) -> pd.Series``
            indexed by run_id (see `bench.metrics`); None for the outcome
            columns that training writes itself (``test_accuracy``, ...).
        cadence: layer quantities: ``"grad"`` or ``"act"`` (see CADENCES).
        direction: one of DIRECTIONS.
        scale: ``"log"`` (spans decades: averaged in log space, log axes) or
            ``"linear"``.
        unit: one of UNITS; decides how values and changes are written.
        bounds: the range a value can take, e.g. ``(0, 1)`` for fractions
            (intervals are clipped to it); None when unbounded.
        tolerance: default tolerance of `vgbench compare`, in the units of
            the change (absolute change, decades for direction ``"one"``, a
            factor for seconds); None: not compared.
        gating: whether a worse row fails a comparison by default.
        definition: the config fields whose values define how the quantity
            is measured; runs that differ in them are not comparable on it.
        size_column: for gradient norms, the column holding the number of
            weights, so that layers of different sizes compare per weight.
        finish: layer quantities recorded every step: an optional last step
            applied to every layer at once, ``fn(raw, values) -> raw'``
            where ``raw`` is the 1-D tensor of ``compute``'s results of all
            layers and ``values`` their `LayerValues`. A per-layer scalar op
            costs about as much as the reduction it follows (op dispatch, not
            arithmetic, dominates at these sizes), so ``compute`` does the one
            reduction each layer needs and ``finish`` the rest in a few ops.
    """

    name: str
    level: str
    label: str
    compute: Callable[..., Any] | None = None
    cadence: str | None = None
    direction: str = "neutral"
    scale: str = "linear"
    unit: str = ""
    bounds: tuple[float, float] | None = None
    tolerance: float | None = None
    gating: bool = True
    definition: tuple[str, ...] = ()
    size_column: str | None = None
    finish: Callable[..., Any] | None = None

    def __post_init__(self):
        if self.level not in ("layer", "run"):
            raise ValueError(f"Argument `level` must be 'layer' or 'run'. Received: level={self.level!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"Argument `direction` must be one of {DIRECTIONS}. Received: {self.direction!r}")
        if self.scale not in ("log", "linear"):
            raise ValueError(f"Argument `scale` must be 'log' or 'linear'. Received: scale={self.scale!r}")
        if self.unit not in UNITS:
            raise ValueError(f"Argument `unit` must be one of {UNITS}. Received: unit={self.unit!r}")
        if self.level == "layer" and self.cadence not in CADENCES:
            raise ValueError(f"Layer quantity {self.name!r} needs a cadence in {CADENCES}. Received: {self.cadence!r}")

    @property
    def log(self) -> bool:
        """Whether values span decades (geometric means, log axes)."""
        return self.scale == "log"

    def format(self, x) -> str:
        """One value, written for a table ("" when missing)."""
        if x is None or (_is_number(x) and math.isnan(x)):
            return ""
        if not _is_number(x):
            return str(x)
        if self.unit == "seconds":
            return f"{x:.2f} s"
        if self.unit == "accuracy":
            return f"{x:.4f}"
        if self.unit == "count":
            return f"{x:,.0f}"
        if self.direction == "one" or self.scale == "log":
            return f"{x:.3g}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"
        return f"{x:.3f}"

    def format_change(self, x) -> str:
        """A change between two values, in the units its tolerance is stated in."""
        if not _is_number(x) or math.isnan(x):
            return ""
        if self.direction == "one":
            return f"{x:+.2f} dec"
        if self.unit == "seconds":
            return f"x{x:.2f}"
        if self.unit == "accuracy":
            return f"{x:+.4f}"
        return f"{x:+.3f}"

    def format_tolerance(self, x) -> str:
        """A tolerance, in the units of `format_change`."""
        if not _is_number(x) or math.isnan(x):
            return ""
        if self.direction == "one":
            return f"{x:g} dec"
        if self.unit == "seconds":
            return f"x{x:g}"
        return f"{x:g}"

    @property
    def change_kind(self) -> str:
        """How `vgbench compare` measures a change: ``"drop"``, ``"increase"``, ``"decades"`` or ``"factor"``."""
        if self.direction == "one":
            return "decades"
        if self.unit == "seconds":
            return "factor"
        return "drop" if self.direction == "higher" else "increase"


def _is_number(x) -> bool:
    import numbers

    return isinstance(x, numbers.Real) and not isinstance(x, bool)


# --------------------------------------------------------------------------- #
# Per-layer quantities, computed inside the instrumented train step
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class LayerValues:
    """What a per-layer compute function may read, for one layer at one step.

    Attributes:
        kernel_grad: gradient of the layer's main weight (the optimizer's,
            loss scaling undone).
        bias_grad: gradient of its bias, or None when it has none.
        kernel: the main weight's current value (after the update).
        previous_kernel: its value before this step's update, or None at
            step 0 (no update yet).
        output: the layer's output (after its activation), ``(batch, units)``;
            None where it could not be recorded (the quantities reading it
            are then NaN).
        activation: the `models.activations.Activation` of the layer, or None.
        preact: the layer's pre-activation z, the input of its activation
            layer (after a normalization that precedes the activation; the
            logits for the output layer), ``(batch, units)`` on the activation
            cadence and ``(batch, ...)`` on the gradient cadence; None where
            it could not be recorded.
        preact_grad: ∂L/∂z of the loss L the optimizer minimizes (the batch
            mean of the per-example losses, loss scaling undone), of the
            shape of ``preact``; None on the activation cadence and where
            ``preact`` is None.
        batch_size: the number of examples in the batch (a scalar float32
            tensor).
        activation_slope: PReLU only: the learned slope of the negative side,
            flattened like the units of ``preact``; None otherwise.
    """

    kernel_grad: Any = None
    bias_grad: Any = None
    kernel: Any = None
    previous_kernel: Any = None
    output: Any = None
    activation: Any = None
    preact: Any = None
    preact_grad: Any = None
    batch_size: Any = None
    activation_slope: Any = None


def _nan():
    from keras import ops

    return ops.convert_to_tensor(float("nan"), "float32")


def half_sum_sq(x):
    """Σx²/2 of a tensor: one fused kernel (``tf.nn.l2_loss``) on TensorFlow, where square+sum are two ops."""
    import keras
    from keras import ops

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.nn.l2_loss(x)
    return 0.5 * ops.sum(ops.square(x))


def _norm_from_half_sum_sq(raw, values):
    """‖x‖ = sqrt(2 · l2_loss(x)), for every layer at once."""
    from keras import ops

    return ops.sqrt(2.0 * raw)


def kernel_grad_norm(v: LayerValues):
    """L2 norm of the gradient of the layer's main weight (``finish`` takes the square root)."""
    return half_sum_sq(v.kernel_grad)


def bias_grad_norm(v: LayerValues):
    """L2 norm of the gradient of the layer's bias, NaN without one (``finish`` takes the square root)."""
    return _nan() if v.bias_grad is None else half_sum_sq(v.bias_grad)


def _flat_norm(x):
    from keras import ops

    return ops.sqrt(ops.sum(ops.square(ops.reshape(x, (-1,)))))


def kernel_norm(v: LayerValues):
    """L2 norm of the layer's main weight."""
    return _flat_norm(v.kernel)


def update_ratio(v: LayerValues):
    """‖ΔW‖/‖W‖ of this step's update (NaN at step 0)."""
    if v.previous_kernel is None:
        return _nan()
    old = v.previous_kernel
    return _flat_norm(v.kernel - old) / _flat_norm(old)


def act_mean(v: LayerValues):
    """Mean of the layer's outputs over the batch and units."""
    from keras import ops

    if v.output is None:
        return _nan()
    return ops.mean(v.output)


def act_std(v: LayerValues):
    """Standard deviation of the layer's outputs over the batch and units."""
    from keras import ops

    if v.output is None:
        return _nan()
    return ops.std(v.output)


def act_rms(v: LayerValues):
    """Root mean square of the layer's outputs."""
    from keras import ops

    if v.output is None:
        return _nan()
    return ops.sqrt(ops.mean(ops.square(v.output)))


def saturated_fraction(v: LayerValues):
    """Saturating activations: share of outputs whose derivative is below 1% of its maximum."""
    from keras import ops

    spec = v.activation
    if spec is None or spec.family != "saturating" or v.output is None:
        return _nan()
    d = spec.derivative_from_output(v.output)
    return ops.mean(ops.cast(d < SATURATION_THRESHOLD * spec.max_derivative, "float32"))


def _per_example_sizes(values, field):
    """Number of values per example of a tensor field of every layer's `LayerValues` (static where known)."""
    from keras import ops

    tensors = [getattr(v, field) for v in values]

    def static(t):
        # A layer whose tensor is not recorded has a NaN value: any size will do.
        if t is None:
            return 1
        dims = list(t.shape[1:])
        return None if any(d is None for d in dims) else math.prod(dims)

    sizes = [static(t) for t in tensors]
    if any(n is None for n in sizes):
        return ops.stack(
            [
                ops.convert_to_tensor(1.0) if t is None else ops.cast(ops.size(t) // ops.shape(t)[0], "float32")
                for t in tensors
            ]
        )
    return ops.convert_to_tensor(sizes, "float32")


def backward_rms(v: LayerValues):
    """RMS of the back-propagated signal: of ``batch_size · ∂L/∂z`` over the batch and the units.

    L is the batch mean of the per-example losses, so each example's row of
    ``batch_size · ∂L/∂z`` is the gradient of that example's own loss with
    respect to its pre-activation (times its sample weight, when there are
    any; with batch normalization before the activation, the row also holds
    what the example's pre-activation does to the others' losses through the
    batch statistics). It exists for every layer, with or without bias.
    ``compute`` gives l2_loss(∂L/∂z) (NaN where z is not recorded); ``finish`` the RMS.
    """
    return _nan() if v.preact_grad is None else half_sum_sq(v.preact_grad)


def _backward_rms_finish(raw, values):
    from keras import ops

    # rms(B·g) = sqrt(B² · Σg² / (B · units)) = sqrt(B · 2·l2_loss(g) / units)
    return ops.sqrt(raw * (2.0 * values[0].batch_size) / _per_example_sizes(values, "preact_grad"))


def preact_rms(v: LayerValues):
    """RMS of the pre-activations z over the batch and the units: the forward signal's length √q.

    ``compute`` gives l2_loss(z) (NaN where z is not recorded); ``finish`` the RMS.
    """
    return _nan() if v.preact is None else half_sum_sq(v.preact)


def _preact_rms_finish(raw, values):
    from keras import ops

    return ops.sqrt(raw * 2.0 / (_per_example_sizes(values, "preact") * values[0].batch_size))


def dead_fraction(v: LayerValues):
    """Share of units whose activation has derivative exactly 0 for every example of the batch.

    The derivative is that of the layer's activation at its pre-activation,
    in float32 (`models.activations.Activation.derivative`; the mask where it
    is 0 comes from `Activation.zero_derivative`): such a unit passes no
    gradient back, whatever the loss. ReLU units are dead where
    z <= 0, relu6 also where z >= 6; leaky ReLU, PReLU with a positive slope,
    ELU and SELU never are (0.0); saturating ones only in float underflow.
    NaN for a layer without activation (the output layer).
    """
    from keras import ops

    spec = v.activation
    if spec is None or v.preact is None:
        return _nan()
    zero = spec.zero_derivative(v.preact, slope=v.activation_slope)
    return ops.mean(ops.cast(ops.all(zero, axis=0), "float32"))


def inactive_fraction(v: LayerValues):
    """ReLU family: share of units on the negative side (z <= 0) for every example of the batch.

    A leaky ReLU unit counted here still passes gradient through its slope:
    this is inactivity, not death (see `dead_fraction`).
    """
    from keras import ops

    spec = v.activation
    if spec is None or spec.family != "relu" or v.preact is None:
        return _nan()
    return ops.mean(ops.cast(ops.all(v.preact <= 0.0, axis=0), "float32"))


_FRACTION = (0.0, 1.0)

# fmt: off
LAYER_QUANTITIES: dict[str, Quantity] = {
    q.name: q
    for q in (
        Quantity(
            KERNEL_GRAD_NORM, "layer", "kernel gradient norm", kernel_grad_norm, "grad",
            scale="log", unit="norm", size_column="kernel_size", finish=_norm_from_half_sum_sq,
        ),
        Quantity(
            BIAS_GRAD_NORM, "layer", "bias gradient norm", bias_grad_norm, "grad",
            scale="log", unit="norm", size_column="bias_size", finish=_norm_from_half_sum_sq,
        ),
        Quantity(
            BACKWARD_RMS, "layer", "backward signal RMS", backward_rms, "grad",
            scale="log", unit="norm", finish=_backward_rms_finish,
        ),
        Quantity(
            PREACT_RMS, "layer", "pre-activation RMS", preact_rms, "act",
            scale="log", unit="norm", finish=_preact_rms_finish,
        ),
        Quantity(KERNEL_NORM, "layer", "kernel norm", kernel_norm, "act", unit="norm"),
        Quantity(UPDATE_RATIO, "layer", "update ratio ‖ΔW‖/‖W‖", update_ratio, "act", scale="log", unit="ratio"),
        Quantity(ACT_MEAN, "layer", "activation mean", act_mean, "act"),
        Quantity(ACT_STD, "layer", "activation std", act_std, "act", scale="log"),
        Quantity(ACT_RMS, "layer", "activation RMS", act_rms, "act", scale="log"),
        Quantity(
            SATURATED_FRACTION, "layer", "saturated fraction", saturated_fraction, "act",
            direction="lower", unit="fraction", bounds=_FRACTION,
        ),
        Quantity(
            DEAD_FRACTION, "layer", "dead fraction", dead_fraction, "act",
            direction="lower", unit="fraction", bounds=_FRACTION,
        ),
        Quantity(
            INACTIVE_FRACTION, "layer", "inactive fraction", inactive_fraction, "act",
            direction="lower", unit="fraction", bounds=_FRACTION,
        ),
    )
}
# fmt: on

# The columns of layers.parquet that say where a value was measured.
LAYER_KEY_COLUMNS = ["run_id", "step", "epoch", "layer_index", "layer_name"]


def cadence_fields(cadence: str) -> tuple[str, ...]:
    """Names of the per-layer quantities recorded at a cadence, in the buffers' order."""
    return tuple(name for name, q in LAYER_QUANTITIES.items() if q.cadence == cadence)


def layer_columns() -> list[str]:
    """The columns of layers.parquet: the keys, then every per-layer quantity by cadence."""
    return [*LAYER_KEY_COLUMNS, *(name for c in CADENCES for name in cadence_fields(c))]
