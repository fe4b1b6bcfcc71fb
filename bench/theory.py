"""Mean-field predictions of the signal and the gradient of a deep MLP at initialization.

What the measured numbers should be, computed from the configuration alone
(numpy and scipy only: importing or calling this module never imports
TensorFlow or Keras).

The network is the MLP of `models.build_model`: input (784 values) →
`depth` Dense hidden layers (`width` units each, or `width_schedule`) →
`num_classes` logits, every kernel drawn from the same initializer with that
layer's own fan-in and fan-out, biases drawn with variance σ_b² (zero today:
vgbench starts biases at zero). Hidden layer l computes the pre-activation
`z_l = h_(l-1) W_l + b_l` and `h_l = φ(z_l)`, with `h_(-1) = x`; the logits are
`y = h_(depth-1) W_depth + b_depth`.

Forward pass (Poole et al. 2016). Over random weights, each unit's
pre-activation is a centred Gaussian whose variance `q_l` follows

    q_0     = σ_w,0²·E[x²] + σ_b²
    q_(l+1) = σ_w,l+1²·E[φ(√q_l·z)²] + σ_b²,      z ~ N(0, 1)

with `σ_w,l² = fan_in(W_l)·Var(W_l)`. `E[x²]` (the input second moment) is
the mean of x² over training examples and coordinates after the run's
preprocessing: 1.0 for standardized inputs (the `default` suite), about 0.10
for MNIST scaled to [0, 1]. `q_0` holds for any input distribution; the
later `q_l` assume the Gaussian limit of wide layers. `preact_rms` is `√q_l`,
the RMS of `z_l` over examples and units.

Backward pass (Schoenholz et al. 2017). The per-example gradient with
respect to a pre-activation is `δ_l = φ′(z_l) ⊙ W_(l+1) δ_(l+1)`, with
`W_(l+1)` of shape `(n_l, n_(l+1))` and `δ_depth = ∂ℓ/∂y`. Component i sums
`n_(l+1) = fan_out(W_(l+1))` terms, so (with weights independent of the
forward pass, the usual gradient-independence assumption)

    E[δ_l²] = χ_l·E[δ_(l+1)²],    χ_l = fan_out(W_(l+1))·Var(W_(l+1))·E[φ′(√q_l·z)²]

It is the *next* layer's fan-out that counts, not the layer's own fan-in:
for square hidden layers the two agree and `χ_l` is the paper's
`σ_w²·E[φ′²]`; between the last hidden layer and the 10 logits, or after
the 784-wide input, they do not. `backward_rms` of hidden layer l is the
predicted RMS over examples and units of `δ_l`, in units of the RMS of the
gradient with respect to the logits (which the loss sets, not the network):
`backward_rms_l = √(χ_l·χ_(l+1)···χ_(depth-1))`.

Summaries, over the hidden layers:

- `factor`: the per-layer factor of the backward pass, by how much `δ`'s RMS
  is multiplied at each layer it crosses on its way to the input (below 1:
  vanishing). Estimated like the measurement: the least-squares slope of
  `log backward_rms_l` on the number of layers crossed, `depth - 1 - l`,
  exponentiated. With equal layers it is `√χ`. `Prediction.layer_factors`
  gives the plain per-layer `√χ_l` between consecutive hidden layers.
- `forward_factor`: the same estimator on `√q_l` against `l`.
- `q_star`: the fixed point of the hidden-layer map
  `q ↦ σ_w²·E[φ(√q·z)²] + σ_b²` of a square `width × width` layer, the one
  the recursion reaches from `q_0` (the map is increasing, so it converges
  monotonically to the nearest fixed point on its side). `inf` when q grows
  without bound. NaN when the map is degenerate: for the positively
  homogeneous activations (relu, leaky_relu, prelu, linear) with σ_b² = 0 it
  is `q ↦ c·q`, so q = 0 is its only fixed point for `c < 1`, every q is one
  for `c = 1`, and none is for `c > 1`; the mean-field φ′(0) at q = 0 is not
  even defined for them. Their χ does not depend on q, which is all the
  gradient needs.
- `chi1`: `σ_w²·E[φ′(√q*·z)²]` at that fixed point (its limit as q → ∞ when
  `q_star` is inf, any q for the degenerate case), with σ_w² the square
  hidden layer's.
- `depth_scale`: `ξ = -1/ln χ₁`, the number of layers over which the
  gradient changes by a factor e: inf at χ₁ = 1, negative when it grows.
- `phase`: `"ordered"` (χ₁ < 1, gradients vanish), `"critical"`
  (|χ₁ - 1| ≤ `CRITICAL_TOLERANCE`) or `"chaotic"` (χ₁ > 1, they explode).

Where the theory does not apply the `Prediction` says so (`applicable`
False, `reason` why) instead of giving numbers: normalization, residual and
dropout fixes change both recursions; the CNN's convolutions, pooling and
global average are not this MLP; weights with a non-zero mean give every unit
the same shift, outside the zero-mean theory; an activation or initializer
whose registry entry has no mean-field form cannot be integrated (the entry
says why). Gradient clipping rescales the whole gradient, so
per-layer ratios are still predicted.

Integrals. `E[f(√q·z)]` is computed exactly where it has a closed form: the
piecewise-linear activations (relu, relu6, leaky_relu, prelu, hard_sigmoid,
linear) use truncated-Gaussian moments, so ReLU's `E[φ′²]` is exactly 1/2.
The others use Gauss–Legendre quadrature against the normal density on
pieces of [-10, 10]: split at their kinks (elu and selu at 0, softsign's
|x| at 0), at fixed z (0, ±1, ..., ±8) and at x = ±0.25, ±0.5, ..., ±1024,
where the activations bend, so that a large q, which turns a sigmoid into a
step in z, is resolved as well as a small one. Both agree with adaptive
quadrature to 1e-11 or better for q from 1e-8 to 1e6.

References:
    - Poole, Lahiri, Raghu, Sohl-Dickstein, Ganguli (2016), "Exponential
      expressivity in deep neural networks through transient chaos".
    - Schoenholz, Gilmer, Ganguli, Sohl-Dickstein (2017), "Deep Information
      Propagation".
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import optimize, special

from vgbench.models import activations as activations_lib
from vgbench.models import initializers as initializers_lib
from vgbench.models import registry

__all__ = [
    "CRITICAL_TOLERANCE",
    "DEFAULT_INPUT_SECOND_MOMENT",
    "example_second_moments",
    "LayerPrediction",
    "Prediction",
    "fixed_point",
    "format_table",
    "input_second_moment",
    "moments",
    "phi",
    "phi_prime",
    "predict",
    "predict_config",
    "predict_grid",
    "weight_variance",
]

# |χ₁ - 1| within this is "critical": the depth scale is then at least ~100
# layers, twice the deepest network the shipped suites train.
CRITICAL_TOLERANCE = 0.01
# Standardized inputs, as the `default` suite uses.
DEFAULT_INPUT_SECOND_MOMENT = 1.0
INPUT_DIM = 784
NUM_CLASSES = 10

# Fixes that change the recursions themselves; clipnorm only rescales the
# whole gradient after it is computed.
_FIXES_OUTSIDE_THEORY = {
    "batchnorm": "batch normalization rescales every pre-activation to unit variance",
    "batchnorm_after": "batch normalization rescales every activation to unit variance",
    "layernorm": "layer normalization rescales every pre-activation to unit variance",
    "residual": "residual connections add the skipped signal to both recursions",
    "dropout": "dropout masks and rescales the units",
}

# ---------------------------------------------------------------- activations

_TINY_Q = 1e-300  # q = 0 is evaluated as the limit q → 0+.
_Z_MAX = 10.0  # The normal mass beyond is 1.5e-23.
_Z_POINTS = np.array([-8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0])
_X_SCALES = 2.0 ** np.arange(-2, 11)
_X_POINTS = np.concatenate([-_X_SCALES, _X_SCALES])
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)
_SQRT_2PI = math.sqrt(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class _PiecewiseLinear:
    """The exact integrals of a `models.activations.PiecewiseLinear` form."""

    pieces: tuple[tuple[float, float, float, float], ...]  # (lo, hi, slope, intercept)

    @property
    def homogeneous(self) -> bool:
        return all(c == 0 and lo in (-math.inf, 0.0) and hi in (0.0, math.inf) for lo, hi, _, c in self.pieces)

    def phi(self, x):
        x = np.asarray(x, dtype=np.float64)
        out = np.zeros_like(x)
        for lo, hi, a, c in self.pieces:
            out = np.where((x >= lo) & (x < hi), a * x + c, out)
        return out

    def phi_prime(self, x):
        x = np.asarray(x, dtype=np.float64)
        out = np.zeros_like(x)
        for lo, hi, a, _ in self.pieces:
            out = np.where((x >= lo) & (x < hi), a, out)
        return out

    def moments(self, q):
        # Truncated-Gaussian moments of x ~ N(0, q) on each [lo, hi], in z = x/√q.
        lo, hi, a, c = (np.array(column) for column in zip(*self.pieces))
        q = np.maximum(q, _TINY_Q)[..., None]
        s = np.sqrt(q)
        u, v = lo / s, hi / s
        mass = special.ndtr(v) - special.ndtr(u)
        first = s * (_pdf(u) - _pdf(v))
        second = q * (mass + _zpdf(u) - _zpdf(v))
        m2 = np.sum(a * a * second + 2.0 * a * c * first + c * c * mass, axis=-1)
        d2 = np.sum(a * a * mass, axis=-1)
        return m2, d2


@dataclasses.dataclass(frozen=True)
class _Smooth:
    """The integrals of a `models.activations.Smooth` form, by piecewise Gauss–Legendre quadrature."""

    f: Callable[[np.ndarray], np.ndarray]
    df: Callable[[np.ndarray], np.ndarray]
    homogeneous: bool = False

    def phi(self, x):
        return self.f(np.asarray(x, dtype=np.float64))

    def phi_prime(self, x):
        return self.df(np.asarray(x, dtype=np.float64))

    def moments(self, q):
        s = np.sqrt(np.maximum(q, _TINY_Q))
        shape = s.shape
        s = s.reshape(-1, 1)
        ends = np.broadcast_to([-_Z_MAX, _Z_MAX], (len(s), 2))
        z_points = np.broadcast_to(_Z_POINTS, (len(s), len(_Z_POINTS)))
        x_points = np.clip(_X_POINTS / s, -_Z_MAX, _Z_MAX)
        cuts = np.sort(np.concatenate([ends, z_points, x_points], axis=1), axis=1)
        mid = 0.5 * (cuts[:, 1:] + cuts[:, :-1])
        half = 0.5 * (cuts[:, 1:] - cuts[:, :-1])
        # Points clipped to ±_Z_MAX leave empty pieces: skip those empty in every row.
        keep = np.any(half > 0, axis=0)
        mid, half = mid[:, keep], half[:, keep]
        z = mid[..., None] + half[..., None] * _GL_NODES
        w = half[..., None] * _GL_WEIGHTS * np.exp(-0.5 * z * z) / _SQRT_2PI
        x = s[..., None] * z
        with np.errstate(over="ignore", under="ignore"):
            m2 = np.sum(w * self.f(x) ** 2, axis=(1, 2))
            d2 = np.sum(w * self.df(x) ** 2, axis=(1, 2))
        return m2.reshape(shape), d2.reshape(shape)


def _pdf(t):
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.exp(-0.5 * t * t) / _SQRT_2PI
    return np.where(np.isinf(t), 0.0, out)


def _zpdf(t):
    """t·pdf(t), 0 at ±inf."""
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = t * _pdf(t)
    return np.where(np.isinf(t), 0.0, out)


@functools.lru_cache(maxsize=256)
def _model_of(name: str):
    """The integrals of an activation's mean-field form (`models.activations`), or None without one."""
    form = activations_lib.get(name).meanfield
    if form is None:
        return None
    if isinstance(form, activations_lib.PiecewiseLinear):
        return _PiecewiseLinear(form.pieces)
    return _Smooth(form.f, form.df)


def _modelled_activations() -> list[str]:
    return [name for name in activations_lib.names() if not activations_lib.get(name).no_meanfield]


def _model(activation):
    act = activations_lib.get(activation)
    model = _model_of(act.name)
    if model is None:
        raise ValueError(
            f"No mean-field model for activation '{act.name}' ({act.no_meanfield}). "
            f"Modelled activations: {', '.join(_modelled_activations())}"
        )
    return model


def phi(activation, x) -> np.ndarray:
    """Evaluates an activation in numpy, as Keras computes it.

    Args:
        activation: An activation spec or `models.activations.Activation`.
        x: Array-like of floats.

    Returns:
        `φ(x)` in float64; `prelu` uses its initial slope.
    """
    return _model(activation).phi(x)


def phi_prime(activation, x) -> np.ndarray:
    """Evaluates an activation's derivative in numpy (the right-hand one at kinks)."""
    return _model(activation).phi_prime(x)


def moments(activation, q) -> tuple[np.ndarray, np.ndarray]:
    """Computes the two Gaussian integrals of the recursions.

    Args:
        activation: An activation spec or `models.activations.Activation`.
        q: Variance(s) of the pre-activation, array-like of non-negative floats.

    Returns:
        `(E[φ(√q·z)²], E[φ′(√q·z)²])` for `z ~ N(0, 1)`, arrays of `q`'s shape.
        At q = 0 they are the limits q → 0+.
    """
    q = np.asarray(q, dtype=np.float64)
    return _model(activation).moments(q)


# ---------------------------------------------------------------- initializers

_MODES = ("fan_in", "fan_out", "fan_avg")
_DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform", "normal")


@dataclasses.dataclass(frozen=True)
class _Init:
    name: str
    base: str
    params: Mapping[str, Any] | None  # None: no model for this initializer


def _resolve_initializer(spec) -> _Init:
    """Parses an initializer spec like `models.initializers.get`, without Keras."""
    if isinstance(spec, initializers_lib.Initializer):
        spec = spec.name
    name, kwargs = registry.parse_spec(spec)
    base = registry.resolve_name("initializer", name, initializers_lib.names(), initializers_lib.ALIASES)
    described = initializers_lib.meanfield(base)
    if described is None:
        # Registered but not modelled: its parameters cannot be checked here.
        return _Init(registry.canonical(base, kwargs), base, None)
    bound = registry.bind_params("initializer", base, kwargs, described.defaults)
    params = {**described.defaults, **bound}
    # The checks Keras' VarianceScaling constructor makes.
    problem = None
    if base == "variance_scaling":
        if not params["scale"] > 0:
            problem = f"Argument `scale` must be positive float. Received: scale={params['scale']}"
        elif params["mode"] not in _MODES:
            problem = f"Invalid `mode` argument: {params['mode']}. Please use one of {set(_MODES)}"
        elif params["distribution"].lower() not in _DISTRIBUTIONS:
            problem = (
                f"Invalid `distribution` argument: {params['distribution']}. "
                f"Please use one of {set(_DISTRIBUTIONS[:3])}"
            )
    if problem is not None:
        raise ValueError(f"Invalid spec {spec!r} for initializer '{base}': {problem}")
    return _Init(registry.canonical(base, bound), base, params)


def weight_variance(initializer, fan_in: int, fan_out: int) -> tuple[float, float]:
    """Returns the mean and the variance of one kernel entry.

    Follows `keras.initializers`: the VarianceScaling family (Glorot, He,
    LeCun) has variance `scale / n` for all three distributions (its
    truncated normal is widened by 1/0.8796 to make up for the truncation);
    `truncated_normal(stddev=s)` is not widened, so its variance is
    `0.7737·s²`; `orthogonal(gain=g)` has orthonormal columns (rows when
    fan_in < fan_out), so `g² / max(fan_in, fan_out)`.

    Args:
        initializer: An initializer spec or `models.initializers.Initializer`.
        fan_in: Rows of the kernel.
        fan_out: Columns of the kernel.

    Returns:
        `(mean, variance)`.
    """
    mean, scale, n = _variance_terms(_resolve_initializer(initializer), fan_in, fan_out)
    return mean, scale / n


def _variance_terms(init: _Init, fan_in: int, fan_out: int) -> tuple[float, float, float]:
    """(mean, a, n) with variance a / n, so that fan·a/n is exact when n == fan."""
    if init.params is None:
        modelled = [name for name in initializers_lib.names() if initializers_lib.meanfield(name) is not None]
        raise ValueError(
            f"No mean-field model for initializer '{init.base}' ({initializers_lib.no_meanfield(init.base)}). "
            f"Modelled initializers: {', '.join(modelled)}"
        )
    return initializers_lib.meanfield(init.base).variance(init.params, fan_in, fan_out)


# ---------------------------------------------------------------- predictions


@dataclasses.dataclass(frozen=True)
class LayerPrediction:
    """The prediction for one hidden layer.

    Attributes:
        layer_index: 0 nearest the input.
        sigma_w2: `fan_in·Var(W_l)` of this layer's kernel.
        sigma_b2: The bias variance.
        q: `E[z_l²]`, the second moment of the pre-activation.
        chi: `E[δ_l²] / E[δ_(l+1)²] = fan_out(W_(l+1))·Var(W_(l+1))·E[φ′(z_l)²]`;
            for the last hidden layer, relative to the logits' gradient.
        backward_sigma_w2: `fan_out(W_(l+1))·Var(W_(l+1))`, the next layer's.
        preact_rms: `√q`.
        backward_rms: RMS of `∂ℓ/∂z_l` in units of the RMS of `∂ℓ/∂logits`.
    """

    layer_index: int
    sigma_w2: float
    sigma_b2: float
    q: float
    chi: float
    backward_sigma_w2: float
    preact_rms: float
    backward_rms: float

    def to_dict(self) -> dict:
        """The layer as JSON-ready values (NaN → None, ±inf → "inf"/"-inf")."""
        return {k: _json_value(v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The mean-field prediction for one (activation, initializer) MLP.

    When `applicable` is False, `reason` says why and the numbers are NaN.
    See the module docstring for the definitions.
    """

    activation: str
    initializer: str
    depth: int
    width: int
    sigma_b2: float
    input_second_moment: float
    input_dim: int = INPUT_DIM
    applicable: bool = True
    reason: str = ""
    sigma_w2: float = math.nan
    q_star: float = math.nan
    chi1: float = math.nan
    depth_scale: float = math.nan
    phase: str = "not applicable"
    factor: float = math.nan
    forward_factor: float = math.nan
    layers: tuple[LayerPrediction, ...] = ()

    @property
    def layer_factors(self) -> np.ndarray:
        """`√χ_l` for l = 0 .. depth-2: backward factor from hidden layer l+1 to l."""
        return np.sqrt([layer.chi for layer in self.layers[:-1]])

    def to_dict(self) -> dict:
        """The prediction as JSON-ready values: NaN → None, ±inf → "inf"/"-inf"."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "layers":
                out["layers"] = [layer.to_dict() for layer in value]
            else:
                out[field.name] = _json_value(value)
        return out


def _json_value(value):
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    if isinstance(value, np.integer):
        return int(value)
    return value


def _check_int(arg: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Argument `{arg}` must be a positive integer. Received: {arg}={value!r}")
    return int(value)


def _check_number(arg: str, value) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.floating, np.integer))
    if not ok or not math.isfinite(value) or value < 0:
        raise ValueError(f"Argument `{arg}` must be a non-negative finite number. Received: {arg}={value!r}")
    return float(value)


def _check_moments(value) -> np.ndarray:
    """The input second moment(s) as a 1-d float64 array: one value, or one per example."""
    if np.ndim(value) == 0:
        return np.array([_check_number("input_second_moment", value)])
    try:
        m = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        m = np.array([np.nan])
    if m.size == 0 or not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError(
            "Argument `input_second_moment` must be a non-negative finite number or a non-empty sequence of them. "
            f"Received: input_second_moment={_short_repr(value)}"
        )
    return m


def _short_repr(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _widths(depth: int, width: int, width_schedule) -> list[int]:
    if width_schedule is None:
        return [width] * depth
    widths = list(width_schedule)
    if len(widths) != depth:
        raise ValueError(
            f"Argument `width_schedule` must hold `depth` ({depth}) positive integers. "
            f"Received: width_schedule={width_schedule!r}"
        )
    return [_check_int("width_schedule", w) for w in widths]


@dataclasses.dataclass(frozen=True)
class _Net:
    """The per-layer variances of one initializer in one MLP."""

    init: _Init
    forward: np.ndarray  # σ_w,l² = fan_in·Var(W_l), l = 0 .. depth
    backward: np.ndarray  # fan_out·Var(W_l), l = 0 .. depth
    square: float  # σ_w² of a width × width layer
    mean_free: bool


def _net(init: _Init, widths: list[int], input_dim: int, num_classes: int, square_width: int) -> _Net | None:
    if init.params is None:
        return None
    shapes = list(zip([input_dim, *widths], [*widths, num_classes]))
    terms = [_variance_terms(init, fan_in, fan_out) for fan_in, fan_out in shapes]
    forward = np.array([a * (fan_in / n) for (fan_in, _), (_, a, n) in zip(shapes, terms)])
    backward = np.array([a * (fan_out / n) for (_, fan_out), (_, a, n) in zip(shapes, terms)])
    _, a, n = _variance_terms(init, square_width, square_width)
    return _Net(init, forward, backward, a * (square_width / n), all(mean == 0 for mean, _, _ in terms))


def predict(
    activation,
    initializer,
    *,
    depth: int,
    width: int,
    sigma_b2: float = 0.0,
    input_second_moment: float | Sequence[float] = DEFAULT_INPUT_SECOND_MOMENT,
    input_dim: int = INPUT_DIM,
    num_classes: int = NUM_CLASSES,
    width_schedule: Sequence[int] | None = None,
) -> Prediction:
    """Predicts the forward and backward signal of one MLP at initialization.

    Args:
        activation: A registered activation spec, e.g. `"elu(alpha=0.5)"`.
        initializer: A registered kernel initializer spec.
        depth: Number of hidden layers.
        width: Units of every hidden layer.
        sigma_b2: Variance of the bias initializer (0 for vgbench's zeros).
        input_second_moment: `E[x²]` of the preprocessed inputs, or one
            value per example (`example_second_moments`): each example is
            then propagated with its own `q_0` and the per-layer second
            moments are averaged over them, as an RMS over a batch is.
        input_dim: Size of one input (784 for MNIST).
        num_classes: Number of logits.
        width_schedule: Optional per-layer widths that replace `width`; the
            fixed point then refers to a square layer of the last width.

    Returns:
        The `Prediction`; not applicable (with the reason) for a registered
        activation or initializer without a model here, or for weights with
        a non-zero mean.

    Raises:
        UnknownNameError: For a name that is not in the registries.
        ValueError: For a malformed spec or an invalid number.
    """
    return predict_grid(
        [activation],
        [initializer],
        depth=depth,
        width=width,
        sigma_b2=sigma_b2,
        input_second_moment=input_second_moment,
        input_dim=input_dim,
        num_classes=num_classes,
        width_schedule=width_schedule,
    )[0]


def predict_grid(
    activations: Sequence,
    initializers: Sequence,
    *,
    depth: int,
    width: int,
    sigma_b2: float = 0.0,
    input_second_moment: float | Sequence[float] = DEFAULT_INPUT_SECOND_MOMENT,
    input_dim: int = INPUT_DIM,
    num_classes: int = NUM_CLASSES,
    width_schedule: Sequence[int] | None = None,
) -> list[Prediction]:
    """Predicts every (activation, initializer) pair, activation-major.

    The same as `predict` on each pair, with the recursions of one activation
    run for all initializers at once.

    Returns:
        One `Prediction` per pair, in the order of `itertools.product`.
    """
    depth = _check_int("depth", depth)
    width = _check_int("width", width)
    input_dim = _check_int("input_dim", input_dim)
    num_classes = _check_int("num_classes", num_classes)
    sigma_b2 = _check_number("sigma_b2", sigma_b2)
    m_in = _check_moments(input_second_moment)
    widths = _widths(depth, width, width_schedule)
    acts = [activations_lib.get(a) for a in activations]
    inits = [_resolve_initializer(i) for i in initializers]
    nets = [_net(init, widths, input_dim, num_classes, widths[-1]) for init in inits]
    common = dict(
        depth=depth, width=width, sigma_b2=sigma_b2, input_second_moment=float(np.mean(m_in)), input_dim=input_dim
    )
    out = []
    for act in acts:
        model = _model_of(act.name)
        reasons = [_why_not(act, model, init, net) for init, net in zip(inits, nets)]
        usable = [net for net, reason in zip(nets, reasons) if not reason]
        results = iter(_recursions(model, usable, sigma_b2, m_in) if usable else ())
        for init, net, reason in zip(inits, nets, reasons):
            base = dict(activation=act.name, initializer=init.name, **common)
            if reason:
                out.append(Prediction(**base, applicable=False, reason=reason))
            else:
                out.append(_summarize(model, net, *next(results), base, sigma_b2))
    return out


def _why_not(act, model, init: _Init, net: _Net | None) -> str:
    """Why the theory does not cover a pair, or "" when it does."""
    if model is None:
        return f"no mean-field model for activation '{act.name}': {act.no_meanfield}"
    if net is None:
        return f"no mean-field model for initializer '{init.name}': {initializers_lib.no_meanfield(init.base)}"
    if not net.mean_free:
        return (
            f"initializer '{init.name}' draws weights with a non-zero mean, which shifts every unit alike; "
            "the theory assumes zero-mean weights"
        )
    return ""


def _recursions(model, nets: list[_Net], sigma_b2: float, m_in: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(q, χ) per hidden layer for each net, run together.

    With one input second moment these are the recursions themselves. With
    one per example, every example runs its own recursions and they are
    combined as the measurement's RMS over a batch combines them: q_l is the
    mean over examples of their q_l, and χ_l the ratio of consecutive means
    of E[δ²] (each example's δ² being the product of its own χ's).
    """
    forward = np.stack([n.forward for n in nets])[:, :, None]  # (k, depth + 1, 1)
    backward = np.stack([n.backward for n in nets])[:, :, None]
    depth = forward.shape[1] - 1
    q = np.empty((len(nets), depth, len(m_in)))
    chi = np.empty((len(nets), depth, len(m_in)))
    q_l = forward[:, 0] * m_in + sigma_b2  # (k, examples)
    for layer in range(depth):
        q[:, layer] = q_l
        m2, d2 = model.moments(q_l)
        chi[:, layer] = backward[:, layer + 1] * d2
        q_l = forward[:, layer + 1] * m2 + sigma_b2
    if len(m_in) == 1:
        return list(zip(q[..., 0], chi[..., 0]))
    with np.errstate(divide="ignore"):
        # log E[δ_l²] per example, summed from the output side, then averaged over examples.
        log_back2 = np.cumsum(np.log(chi)[:, ::-1], axis=1)[:, ::-1]
        mean_log = special.logsumexp(log_back2, axis=2) - math.log(len(m_in))
    next_log = np.concatenate([mean_log[:, 1:], np.zeros((len(nets), 1))], axis=1)
    with np.errstate(invalid="ignore"):
        chi_mean = np.exp(mean_log - next_log)
    # A layer whose every example underflowed passes the underflow on.
    chi_mean = np.where(np.isneginf(mean_log), 0.0, chi_mean)
    return list(zip(q.mean(axis=2), chi_mean))


def _slope(y: np.ndarray) -> float:
    """Least-squares slope of y against 0, 1, ..., len(y) - 1."""
    x = np.arange(len(y), dtype=np.float64)
    x -= x.mean()
    return float(np.dot(x, y - y.mean()) / np.dot(x, x))


def _summarize(model, net: _Net, q: np.ndarray, chi: np.ndarray, base: dict, sigma_b2: float) -> Prediction:
    depth = len(q)
    with np.errstate(divide="ignore"):
        log_chi = np.log(chi)
        # log backward_rms_l = ½·Σ_(k ≥ l) log χ_k, summed from the output side.
        log_back = 0.5 * np.cumsum(log_chi[::-1])[::-1]
        log_fwd = 0.5 * np.log(q)
    factor = forward_factor = math.nan
    if depth >= 2:
        # Regressed on layers crossed from the last hidden layer, so that
        # below 1 means the gradient shrinks on its way to the input.
        if np.isfinite(log_back[-1]):
            factor = 0.0 if np.isneginf(log_back).any() else math.exp(_slope(log_back[::-1]))
        if np.isfinite(log_fwd[0]):
            forward_factor = 0.0 if np.isneginf(log_fwd).any() else math.exp(_slope(log_fwd))
    layers = tuple(
        LayerPrediction(
            layer_index=i,
            sigma_w2=float(net.forward[i]),
            sigma_b2=sigma_b2,
            q=float(q[i]),
            chi=float(chi[i]),
            backward_sigma_w2=float(net.backward[i + 1]),
            preact_rms=float(math.sqrt(q[i])),
            backward_rms=float(np.exp(log_back[i])),
        )
        for i in range(depth)
    )
    q_star, chi1 = _fixed_point(model, base["activation"], net.square, sigma_b2, float(q[0]))
    return Prediction(
        **base,
        sigma_w2=net.square,
        q_star=q_star,
        chi1=chi1,
        depth_scale=_depth_scale(chi1),
        phase=_phase(chi1),
        factor=factor,
        forward_factor=forward_factor,
        layers=layers,
    )


def _depth_scale(chi1: float) -> float:
    if math.isnan(chi1):
        return math.nan
    if chi1 == 1.0:
        return math.inf
    if chi1 == 0.0:
        return 0.0
    return -1.0 / math.log(chi1)


def _phase(chi1: float) -> str:
    if math.isnan(chi1):
        return "undefined"
    if abs(chi1 - 1.0) <= CRITICAL_TOLERANCE:
        return "critical"
    return "ordered" if chi1 < 1.0 else "chaotic"


# ---------------------------------------------------------------- fixed points

_Q_GRID = np.logspace(-12, 12, 241)
_X_INFINITY = 1e300  # Where φ′ is evaluated for its limits at ±∞.


@functools.lru_cache(maxsize=256)
def _grid_second_moments(name: str) -> np.ndarray:
    """E[φ²] on `_Q_GRID`: shared by every initializer and bias variance."""
    return _model_of(name).moments(_Q_GRID)[0]


def fixed_point(activation, sigma_w2: float, sigma_b2: float = 0.0, q_start: float = 1.0) -> tuple[float, float]:
    """Finds the fixed point of the hidden-layer map and χ₁ there.

    Args:
        activation: An activation spec.
        sigma_w2: `fan_in·Var(W)` of a square hidden layer.
        sigma_b2: The bias variance.
        q_start: The q the recursion starts from; the map is increasing, so
            it converges to the nearest fixed point on the side it moves to.

    Returns:
        `(q_star, chi1)`. `q_star` is inf when q grows without bound (χ₁ is
        then the limit q → ∞) and NaN for a positively homogeneous activation
        with `sigma_b2 == 0`, whose χ does not depend on q. Where the map
        moves q by less than double precision over a whole range (relu6 with
        σ_w² = 2 below q ≈ 0.4, where clipping at 6 is a 1e-20 effect), the
        first such q from `q_start` is returned: the recursion stalls there.
    """
    sigma_w2 = _check_number("sigma_w2", sigma_w2)
    sigma_b2 = _check_number("sigma_b2", sigma_b2)
    q_start = _check_number("q_start", q_start)
    act = activations_lib.get(activation)
    return _fixed_point(_model(act), act.name, sigma_w2, sigma_b2, q_start)


def _fixed_point(model, name: str, sigma_w2: float, sigma_b2: float, q_start: float) -> tuple[float, float]:
    def chi_at(q: float) -> float:
        return float(sigma_w2 * model.moments(np.array([q]))[1][0])

    if model.homogeneous and sigma_b2 == 0.0:
        return math.nan, chi_at(1.0)

    def gap(q: float) -> float:  # F(q) - q
        return float(sigma_w2 * model.moments(np.array([q]))[0][0] + sigma_b2 - q)

    grid_gap = sigma_w2 * _grid_second_moments(name) + sigma_b2 - _Q_GRID
    start_gap = gap(q_start)
    if start_gap == 0.0:
        return q_start, chi_at(q_start)
    if start_gap > 0:
        above = np.flatnonzero((_Q_GRID > q_start) & (grid_gap <= 0))
        if not len(above):
            # As q → ∞, E[φ′(√q·z)²] tends to the mean of φ′(±∞)².
            with np.errstate(all="ignore"):
                tails = model.phi_prime(np.array([-_X_INFINITY, _X_INFINITY]))
            return math.inf, float(sigma_w2 * np.mean(tails**2))
        hi = float(_Q_GRID[above[0]])
        lo = float(_Q_GRID[above[0] - 1]) if above[0] > 0 and _Q_GRID[above[0] - 1] > q_start else q_start
    else:
        below = np.flatnonzero((_Q_GRID < q_start) & (grid_gap >= 0))
        if len(below):
            lo = float(_Q_GRID[below[-1]])
        elif sigma_b2 == 0.0 and float(model.phi(0.0)) == 0.0:
            return 0.0, chi_at(0.0)
        else:
            lo = 0.0  # F(0) = σ_w²·φ(0)² + σ_b² > 0: a root below the grid.
        nxt = below[-1] + 1 if len(below) else 0
        hi = float(_Q_GRID[nxt]) if nxt < len(_Q_GRID) and _Q_GRID[nxt] < q_start else q_start
    if gap(lo) == 0.0:
        return lo, chi_at(lo)
    if gap(hi) == 0.0:
        return hi, chi_at(hi)
    q_star = optimize.brentq(gap, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
    return q_star, chi_at(q_star)


# ---------------------------------------------------------------- runs and data


def predict_config(
    config,
    input_second_moment: float | Sequence[float] = DEFAULT_INPUT_SECOND_MOMENT,
    *,
    sigma_b2: float | None = None,
    input_dim: int | None = None,
    num_classes: int = NUM_CLASSES,
) -> Prediction:
    """Predicts one run from its `bench.config.RunConfig`.

    Args:
        config: A `RunConfig` (only `arch`, `depth`, `width`, `activation`,
            `initializer`, `bias_initializer`, `fix` and `dataset` are read).
        input_second_moment: `E[x²]` of the run's preprocessed training
            inputs (see `input_second_moment`), or one value per example of
            the batch measured at step 0 (see `example_second_moments`).
        sigma_b2: The bias variance; by default that of the config's
            `bias_initializer` (0 for `zeros`, stddev² for `random_normal`),
            see `bias_variance`.
        input_dim: Size of one input; by default 784 for MNIST and
            Fashion-MNIST, unknown (not applicable) for `tfds:NAME`.
        num_classes: Number of logits.

    Returns:
        The `Prediction`, not applicable for the CNN and for fixes other
        than `clipnorm`.
    """
    reason = None
    if sigma_b2 is None:
        bias_spec = getattr(config, "bias_initializer", "zeros")
        mean, sigma_b2 = bias_variance(bias_spec, config.width)
        if mean != 0.0:
            sigma_b2 = math.nan
            reason = f"bias_initializer={bias_spec!r} has mean {mean:g}; the theory models zero-mean biases"
    base = dict(
        activation=config.activation,
        initializer=config.initializer,
        depth=config.depth,
        width=config.width,
        sigma_b2=float(sigma_b2),
        input_second_moment=float(np.mean(_check_moments(input_second_moment))),
        input_dim=input_dim or INPUT_DIM,
    )
    if reason is not None:
        return Prediction(**base, applicable=False, reason=reason)
    if config.arch != "mlp":
        reason = f"arch={config.arch!r}: the theory models the MLP, not convolutions, pooling and a global average"
        return Prediction(**base, applicable=False, reason=reason)
    fixes = [name.split("(")[0] for name in config.fix.split("+") if name != "none"]
    outside = [name for name in fixes if name in _FIXES_OUTSIDE_THEORY]
    if outside:
        name = outside[0]
        return Prediction(**base, applicable=False, reason=f"fix '{name}': {_FIXES_OUTSIDE_THEORY[name]}")
    if input_dim is None:
        if config.dataset not in ("mnist", "fashion_mnist"):
            reason = f"the input size of dataset {config.dataset!r} is unknown here; pass input_dim"
            return Prediction(**base, applicable=False, reason=reason)
        input_dim = INPUT_DIM
    return predict(
        config.activation,
        config.initializer,
        depth=config.depth,
        width=config.width,
        sigma_b2=sigma_b2,
        input_second_moment=input_second_moment,
        input_dim=input_dim,
        num_classes=num_classes,
    )


def example_second_moments(x) -> np.ndarray:
    """Returns each example's `E[x²]`, the mean of its x² over coordinates (float64, one per row).

    The recursions start every example from its own `q_0 = σ_w,0²·E[x²]`;
    for activations whose χ depends on q (gelu, swish, tanh, ...) the
    spread of these values across examples moves the batch's backward and
    forward factors away from the prediction at their mean.

    Args:
        x: Preprocessed inputs, one example per row (e.g. the batch
            `bench.train` measures at step 0: the first `batch_size`
            training examples).
    """
    x = np.asarray(x)
    if x.size == 0:
        raise ValueError(f"Argument `x` must hold at least one value. Received: x.shape={x.shape}")
    x = x.reshape(len(x), -1)
    return np.mean(np.square(x, dtype=np.float64), axis=1)


def bias_variance(initializer, units: int) -> tuple[float, float]:
    """Returns the mean and the variance σ_b² of one bias entry drawn by `initializer`.

    A bias is a vector of `units` entries; Keras counts both its fans as
    `units`, which matters for the VarianceScaling family only.

    Args:
        initializer: An initializer spec or `models.initializers.Initializer`.
        units: The bias's length (the layer's width).

    Returns:
        `(mean, variance)`.
    """
    return weight_variance(initializer, units, units)


def input_second_moment(x) -> float:
    """Returns `E[x²]`, the mean of x² over examples and coordinates (in float64).

    Args:
        x: The preprocessed training inputs, e.g. `bench.data.prepare(...).x_train`.
    """
    x = np.asarray(x)
    if x.size == 0:
        raise ValueError(f"Argument `x` must hold at least one value. Received: x.shape={x.shape}")
    return float(np.mean(np.square(x, dtype=np.float64)))


# ---------------------------------------------------------------- finite width

# Measured (docs/isometry.md): GELU + He at depth 20 on standardized MNIST, batch 256, widths 64-2048, 6-17 seeds
# each: the backward factor's seed-to-seed SD is about this over √width, and the mean over seeds lies +0.002 to
# +0.048 above the prediction, without shrinking like 1/width.
SEED_SD_TIMES_SQRT_WIDTH = 0.5


def finite_width_note(width: int) -> str:
    """What one network of this width adds to the infinite-width numbers, as measured; one line of text."""
    width = _check_int("width", width)
    return (
        f"These are infinite-width limits. One network of width {width} scatters around them: its measured "
        f"backward factor varies from seed to seed by about {SEED_SD_TIMES_SQRT_WIDTH:g}/sqrt(width) = "
        f"{SEED_SD_TIMES_SQRT_WIDTH / math.sqrt(width):.3f} (SD) where chi depends on q along a forward collapse "
        "(gelu + He at depth 20, widths 64-2048), and the mean of several seeds lies up to 0.05 above the "
        "prediction there (0.01-0.015 at widths 1024-2048); ReLU + He, whose chi does not depend on q, agrees "
        "within 0.01."
    )


# ---------------------------------------------------------------- rendering


def _fmt(value: float, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


def format_table(predictions: Sequence[Prediction]) -> str:
    """Renders predictions as a plain-text table, one row per pair.

    Columns: σ_w² of a square hidden layer, q*, χ₁, the predicted backward
    and forward per-layer factors, the depth scale and the phase; pairs the
    theory does not cover say why instead.
    """
    header = ("activation", "initializer", "sigma_w2", "q*", "chi1", "factor", "fwd factor", "depth scale", "phase")
    rows = []
    notes = []
    for p in predictions:
        if not p.applicable:
            rows.append((p.activation, p.initializer, "-", "-", "-", "-", "-", "-", "n/a"))
            notes.append(f"{p.activation} + {p.initializer}: not applicable, because {p.reason}")
            continue
        rows.append(
            (
                p.activation,
                p.initializer,
                _fmt(p.sigma_w2),
                _fmt(p.q_star),
                _fmt(p.chi1),
                _fmt(p.factor),
                _fmt(p.forward_factor),
                _fmt(p.depth_scale, ".3g"),
                p.phase,
            )
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, *notes])
