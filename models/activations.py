"""Registry of hidden-layer activation functions.

Usage:

>>> act = get("LeakyReLU(negative_slope=0.1)")
>>> act.name, act.base, act.family
('leaky_relu(negative_slope=0.1)', 'leaky_relu', 'relu')
>>> layer = act.layer("hidden_0_act")

Families group the activations by how they can make gradients vanish:

- `"saturating"`: bounded, with a derivative that goes to 0 on both sides
  (sigmoid, hard_sigmoid, tanh, softsign). Their derivative can be computed
  from the layer's output alone (`derivative_from_output`), which is how
  saturation is measured without recording pre-activations.
- `"relu"`: piecewise linear, derivative 1 on the positive side and 0 (or
  the leak) on the negative side (relu, relu6, leaky_relu, prelu).
- `"smooth"`: smooth, unbounded above (elu, selu, gelu, swish, mish,
  softplus).
- `"linear"`: the identity, a baseline without any nonlinearity.

Each entry also carries its mean-field form (`Activation.meanfield`): the
activation as numpy functions, which `bench.theory` integrates against a
Gaussian to predict the signal and the gradient at initialization. An entry
without one says why (`Activation.no_meanfield`), so a new activation cannot
leave the theory silently.

Keras is imported only when a layer is built or a function is applied, and
numpy and scipy only when a mean-field form is built, so listing and
validating names stays cheap.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Mapping
from typing import Any

from vgbench.models import registry

__all__ = [
    "ALIASES",
    "Activation",
    "FAMILIES",
    "PRELU_INITIAL_SLOPE",
    "PiecewiseLinear",
    "SELU_ALPHA",
    "SELU_SCALE",
    "Smooth",
    "get",
    "names",
]

FAMILIES = ("saturating", "relu", "smooth", "linear")

# He et al. (2015) start every PReLU slope at 0.25. Keras' own default (0)
# would make a fresh PReLU network identical to a ReLU one, which defeats
# comparing the two at initialization.
PRELU_INITIAL_SLOPE = 0.25

# keras.activations.selu (tf.nn.selu) constants.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

_INF = float("inf")
_SQRT_2PI = math.sqrt(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class PiecewiseLinear:
    """The mean-field form of a piecewise-linear activation, integrated exactly by `bench.theory`.

    Attributes:
        pieces: ``(lo, hi, slope, intercept)`` for each piece ``[lo, hi)`` of
            the real line, on which ``φ(x) = slope·x + intercept``.
    """

    pieces: tuple[tuple[float, float, float, float], ...]


@dataclasses.dataclass(frozen=True)
class Smooth:
    """The mean-field form of any other activation, integrated by quadrature in `bench.theory`.

    Attributes:
        f: ``φ`` as a numpy function of a float64 array, computing what
            keras.activations computes.
        df: ``φ′`` likewise (the right-hand derivative at a kink).
    """

    f: Callable[[Any], Any]
    df: Callable[[Any], Any]


# Builds an entry's mean-field form from its bound parameters, the numpy
# module and scipy.special (given as arguments, so that neither is imported
# to list or validate names).
_MeanFieldBuilder = Callable[[Mapping[str, Any], Any, Any], "PiecewiseLinear | Smooth"]


@dataclasses.dataclass(frozen=True)
class _Entry:
    family: str
    params: Mapping[str, Any] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    max_derivative: float | None = None
    # {param: (test, what the value must be)}: the checks the Keras layer's
    # constructor makes, repeated here so that a bad value is reported when
    # the spec is read rather than when every run builds its model, without
    # importing Keras.
    checks: Mapping[str, tuple[Callable[[Any], bool], str]] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({})
    )
    # The mean-field form, or why there is none: exactly one of the two.
    meanfield: _MeanFieldBuilder | None = None
    no_meanfield: str = ""

    def __post_init__(self):
        if (self.meanfield is None) == (not self.no_meanfield):
            raise ValueError("An activation entry needs either a mean-field form or the reason it has none")


def _params(**defaults: Any) -> Mapping[str, Any]:
    return types.MappingProxyType(defaults)


def _relu_like(negative_slope: float) -> PiecewiseLinear:
    return PiecewiseLinear(((-_INF, 0.0, negative_slope, 0.0), (0.0, _INF, 1.0, 0.0)))


def _elu_form(np, alpha: float, scale: float = 1.0) -> Smooth:
    return Smooth(
        f=lambda x: scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0))),
        df=lambda x: scale * np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0))),
    )


def _gelu_form(np, sp) -> Smooth:
    # keras.activations.gelu defaults to the exact form, x·Φ(x).
    def df(x):
        with np.errstate(over="ignore", invalid="ignore"):
            pdf = np.where(np.isinf(x), 0.0, np.exp(-0.5 * x * x) / _SQRT_2PI)
        return sp.ndtr(x) + x * pdf

    return Smooth(lambda x: x * sp.ndtr(x), df)


def _swish_form(np, sp) -> Smooth:
    def df(x):
        s = sp.expit(x)
        return s + x * s * (1.0 - s)

    return Smooth(lambda x: x * sp.expit(x), df)


def _mish_form(np, sp) -> Smooth:
    def df(x):
        t = np.tanh(np.logaddexp(0.0, x))
        return t + x * (1.0 - t * t) * sp.expit(x)

    return Smooth(lambda x: x * np.tanh(np.logaddexp(0.0, x)), df)


_REGISTRY: dict[str, _Entry] = {
    "sigmoid": _Entry(
        "saturating",
        max_derivative=0.25,
        meanfield=lambda p, np, sp: Smooth(sp.expit, lambda x: sp.expit(x) * sp.expit(-x)),
    ),
    # Keras 3: relu6(x + 3) / 6, i.e. slope 1/6 on (-3, 3) and flat outside.
    "hard_sigmoid": _Entry(
        "saturating",
        max_derivative=1.0 / 6.0,
        meanfield=lambda p, np, sp: PiecewiseLinear(
            ((-_INF, -3.0, 0.0, 0.0), (-3.0, 3.0, 1.0 / 6.0, 0.5), (3.0, _INF, 0.0, 1.0))
        ),
    ),
    "tanh": _Entry(
        "saturating", max_derivative=1.0, meanfield=lambda p, np, sp: Smooth(np.tanh, lambda x: 1.0 - np.tanh(x) ** 2)
    ),
    "softsign": _Entry(
        "saturating",
        max_derivative=1.0,
        meanfield=lambda p, np, sp: Smooth(lambda x: x / (1.0 + np.abs(x)), lambda x: 1.0 / (1.0 + np.abs(x)) ** 2),
    ),
    "relu": _Entry("relu", meanfield=lambda p, np, sp: _relu_like(0.0)),
    "relu6": _Entry(
        "relu",
        meanfield=lambda p, np, sp: PiecewiseLinear(
            ((-_INF, 0.0, 0.0, 0.0), (0.0, 6.0, 1.0, 0.0), (6.0, _INF, 0.0, 6.0))
        ),
    ),
    # 0.2 is the default of keras.activations.leaky_relu (the LeakyReLU layer
    # defaults to 0.3); the layer is always given the value explicitly.
    "leaky_relu": _Entry(
        "relu",
        _params(negative_slope=0.2),
        checks=types.MappingProxyType({"negative_slope": (lambda v: v >= 0, "non-negative")}),
        meanfield=lambda p, np, sp: _relu_like(float(p["negative_slope"])),
    ),
    # A fresh PReLU layer: every slope at its initial value.
    "prelu": _Entry("relu", meanfield=lambda p, np, sp: _relu_like(PRELU_INITIAL_SLOPE)),
    "elu": _Entry("smooth", _params(alpha=1.0), meanfield=lambda p, np, sp: _elu_form(np, float(p["alpha"]))),
    "selu": _Entry("smooth", meanfield=lambda p, np, sp: _elu_form(np, SELU_ALPHA, SELU_SCALE)),
    "gelu": _Entry("smooth", meanfield=lambda p, np, sp: _gelu_form(np, sp)),
    "swish": _Entry("smooth", meanfield=lambda p, np, sp: _swish_form(np, sp)),
    "mish": _Entry("smooth", meanfield=lambda p, np, sp: _mish_form(np, sp)),
    "softplus": _Entry("smooth", meanfield=lambda p, np, sp: Smooth(lambda x: np.logaddexp(0.0, x), sp.expit)),
    "linear": _Entry("linear", meanfield=lambda p, np, sp: PiecewiseLinear(((-_INF, _INF, 1.0, 0.0),))),
}

ALIASES: dict[str, str] = {
    "silu": "swish",
    "leakyrelu": "leaky_relu",
    "hardsigmoid": "hard_sigmoid",
    "identity": "linear",
}


def names() -> list[str]:
    """Returns the canonical base names of all activations, sorted."""
    return sorted(_REGISTRY)


@dataclasses.dataclass(frozen=True)
class Activation:
    """A resolved activation: a registry entry with bound parameters.

    Build instances with `get()`.

    Attributes:
        name: Canonical spec, e.g. `"leaky_relu(negative_slope=0.1)"`;
            `get(name)` returns an equal instance.
        base: Registry name without parameters, e.g. `"leaky_relu"`.
        kwargs: Parameters that differ from their defaults (read-only).
        family: One of `FAMILIES`.
    """

    name: str
    base: str
    kwargs: Mapping[str, Any] = dataclasses.field(hash=False)
    family: str

    def __str__(self) -> str:
        return self.name

    @property
    def params(self) -> dict[str, Any]:
        """All parameters, defaults included."""
        return {**_REGISTRY[self.base].params, **self.kwargs}

    def layer(self, name: str):
        """Creates a new, unbuilt activation layer.

        Args:
            name: The layer name, e.g. `"hidden_3_act"`.

        Returns:
            A `keras.layers.Layer`. For `prelu` it is a `keras.layers.PReLU`
            with one learned slope per unit, each starting at
            `PRELU_INITIAL_SLOPE`.
        """
        import keras

        params = self.params
        if self.base == "leaky_relu":
            return keras.layers.LeakyReLU(negative_slope=params["negative_slope"], name=name)
        if self.base == "elu":
            return keras.layers.ELU(alpha=params["alpha"], name=name)
        if self.base == "prelu":
            return keras.layers.PReLU(
                alpha_initializer=keras.initializers.Constant(PRELU_INITIAL_SLOPE),
                name=name,
            )
        return keras.layers.Activation(self.base, name=name)

    def __call__(self, x):
        """Applies the function to a tensor or array.

        Meant for plotting the function and, through the backend's automatic
        differentiation, its derivative. `prelu` has no fixed function, so its initial one is used:
        slope `PRELU_INITIAL_SLOPE` for negative inputs.

        Args:
            x: A tensor or array; integers are converted to floats.

        Returns:
            A backend tensor of the same shape.
        """
        import keras
        from keras import ops

        x = ops.convert_to_tensor(x)
        if not keras.backend.is_float_dtype(x.dtype):
            x = ops.cast(x, keras.backend.floatx())
        params = self.params
        if self.base == "leaky_relu":
            return keras.activations.leaky_relu(x, negative_slope=params["negative_slope"])
        if self.base == "elu":
            return keras.activations.elu(x, alpha=params["alpha"])
        if self.base == "prelu":
            return ops.where(x >= 0, x, PRELU_INITIAL_SLOPE * x)
        return keras.activations.get(self.base)(x)

    @property
    def meanfield(self) -> PiecewiseLinear | Smooth | None:
        """The activation as numpy functions, for the mean-field theory (`bench.theory`).

        A `PiecewiseLinear` or `Smooth` form with this activation's
        parameters (`prelu`: its initial slope), or None for an entry
        without one (`no_meanfield` says why).
        """
        build = _REGISTRY[self.base].meanfield
        if build is None:
            return None
        import numpy as np
        from scipy import special

        return build(self.params, np, special)

    @property
    def no_meanfield(self) -> str:
        """Why the entry has no mean-field form ("" when it has one)."""
        return _REGISTRY[self.base].no_meanfield

    @property
    def max_derivative(self) -> float | None:
        """The largest value of the derivative for the saturating family.

        At most this factor per layer multiplies a gradient flowing back
        through the activation: 0.25 for sigmoid, 1/6 for hard_sigmoid, 1 for
        tanh and softsign. `None` for the other families.
        """
        return _REGISTRY[self.base].max_derivative

    @property
    def derivative_from_output(self) -> Callable[[Any], Any] | None:
        """The derivative as a function of the output, for saturating ones.

        Returns a function `y -> f'(x)` where `y = f(x)`, built from
        `keras.ops` so it can run inside a compiled step of any backend on a
        recorded activation, or `None` outside the saturating family:

        - sigmoid: `y * (1 - y)`
        - tanh: `1 - y**2`
        - softsign: `(1 - |y|)**2`
        - hard_sigmoid: `1/6` where `0 < y < 1`, else `0` (the clipped parts
          are flat, as in the gradient TensorFlow computes).
        """
        return _DERIVATIVES_FROM_OUTPUT.get(self.base)

    def derivative(self, z, slope=None):
        """The derivative f'(z) at the pre-activation `z`, as backpropagation computes it.

        Built from `keras.ops` (and the backend's automatic differentiation)
        in `z`'s dtype, so it can run inside a compiled step of either
        backend. A value is exactly 0 only where the gradient the backend
        propagates through the activation is exactly 0, which is how dead
        units are told apart from merely small ones:

        - relu: 0 for `z <= 0`; relu6: 0 for `z <= 0` or `z >= 6`;
          hard_sigmoid: 0 outside `(-3, 3)` (its flat regions);
        - leaky_relu and prelu: the slope for `z <= 0`, never 0 unless the
          slope is;
        - elu, selu: `alpha * exp(z)` for `z <= 0`, 0 only where `exp`
          underflows (`z < -87` in float32);
        - the others (sigmoid, tanh, softsign, gelu, swish, mish, softplus,
          linear): the automatic derivative of the function, 0 only in float
          underflow (e.g. sigmoid for `z > 17` in float32).

        Args:
            z: The pre-activation, a tensor or array.
            slope: prelu only: its learned slope (a tensor broadcastable to
                `z`); defaults to `PRELU_INITIAL_SLOPE`.

        Returns:
            A tensor of the shape of `z`.
        """
        import keras
        from keras import ops

        z = ops.convert_to_tensor(z)
        if not keras.backend.is_float_dtype(z.dtype):
            z = ops.cast(z, keras.backend.floatx())
        one, zero = ops.ones_like(z), ops.zeros_like(z)
        params = self.params
        if self.base == "relu":
            return ops.where(z > 0, one, zero)
        if self.base == "relu6":
            return ops.where(ops.logical_and(z > 0, z < 6), one, zero)
        if self.base == "hard_sigmoid":
            return ops.where(ops.logical_and(z > -3, z < 3), one / 6.0, zero)
        if self.base in ("leaky_relu", "prelu"):
            if self.base == "leaky_relu":
                slope = params["negative_slope"]
            elif slope is None:
                slope = PRELU_INITIAL_SLOPE
            return ops.where(z > 0, one, ops.cast(slope, z.dtype) * one)
        if self.base in ("elu", "selu"):
            alpha = params["alpha"] if self.base == "elu" else SELU_ALPHA
            scale = 1.0 if self.base == "elu" else SELU_SCALE
            return scale * ops.where(z > 0, one, alpha * ops.exp(ops.minimum(z, 0.0)))
        return _autodiff(self, z)

    def zero_derivative(self, z, slope=None):
        """Where the derivative at the pre-activation `z` is exactly 0: ``derivative(z, slope) == 0``, cheaper.

        For the piecewise-linear activations the mask comes from comparisons
        of `z` alone (relu: not ``z > 0``, NaN included, as in `derivative`),
        with no derivative tensor built; the others compare `derivative`
        with 0. This is what `dead_fraction` reads on every activation step,
        where the full derivative of a convolution's output costs a quarter
        of a training step.

        Args:
            z: The pre-activation, a tensor or array.
            slope: prelu only: its learned slope, as in `derivative`.

        Returns:
            A boolean tensor of the shape of `z`.
        """
        import keras
        from keras import ops

        z = ops.convert_to_tensor(z)
        if not keras.backend.is_float_dtype(z.dtype):
            z = ops.cast(z, keras.backend.floatx())
        if self.base == "relu":
            return ops.logical_not(z > 0)
        if self.base == "relu6":
            return ops.logical_not(ops.logical_and(z > 0, z < 6))
        if self.base == "hard_sigmoid":
            return ops.logical_not(ops.logical_and(z > -3, z < 3))
        if self.base in ("leaky_relu", "prelu"):
            if self.base == "leaky_relu":
                slope = self.params["negative_slope"]
            elif slope is None:
                slope = PRELU_INITIAL_SLOPE
            flat = ops.equal(ops.cast(slope, z.dtype), 0)  # the negative side passes no gradient
            return ops.logical_and(ops.logical_not(z > 0), flat)
        return ops.equal(self.derivative(z, slope=slope), 0)


def _autodiff(fn, z):
    """Elementwise derivative of `fn` at `z` by automatic differentiation, on the backend Keras runs.

    Differentiation itself has no `keras.ops` form; `fn` is elementwise, so
    the vector-Jacobian product with ones is the derivative at every element.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(z)
            y = fn(z)
        return tape.gradient(y, z)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        y, vjp = jax.vjp(fn, z)
        return vjp(jnp.ones_like(y))[0]
    if backend == "torch":
        import torch

        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            y = fn(z)
            return torch.autograd.grad(y, z, torch.ones_like(y))[0]
    raise NotImplementedError(f"No automatic derivative of activations on the {backend!r} backend")


def _sigmoid_derivative(y):
    return y * (1.0 - y)


def _tanh_derivative(y):
    return 1.0 - y * y


def _softsign_derivative(y):
    from keras import ops

    return ops.square(1.0 - ops.abs(y))


def _hard_sigmoid_derivative(y):
    from keras import ops

    y = ops.convert_to_tensor(y)
    inside = ops.logical_and(y > 0.0, y < 1.0)
    return ops.where(inside, ops.cast(1.0 / 6.0, y.dtype), ops.zeros_like(y))


_DERIVATIVES_FROM_OUTPUT: dict[str, Callable[[Any], Any]] = {
    "sigmoid": _sigmoid_derivative,
    "hard_sigmoid": _hard_sigmoid_derivative,
    "tanh": _tanh_derivative,
    "softsign": _softsign_derivative,
}


def get(spec: str | Activation) -> Activation:
    """Looks up an activation by spec.

    Args:
        spec: A name, alias or spec with parameters, e.g. `"silu"` or
            `"elu(alpha=0.5)"` (case-insensitive); an `Activation` is
            returned unchanged.

    Returns:
        The `Activation`.

    Raises:
        UnknownNameError: For an unknown name or parameter name.
        ValueError: For a malformed spec, a parameter of the wrong type or a
            value the Keras layer rejects.
    """
    if isinstance(spec, Activation):
        return spec
    name, kwargs = registry.parse_spec(spec)
    base = registry.resolve_name("activation", name, _REGISTRY, ALIASES)
    entry = _REGISTRY[base]
    bound = registry.bind_params("activation", base, kwargs, entry.params)
    for key, value in bound.items():
        test, expected = entry.checks.get(key, (None, None))
        if test is not None and not test(value):
            raise ValueError(f"Parameter '{key}' of activation '{base}' must be {expected}. Received: {key}={value!r}")
    return Activation(
        name=registry.canonical(base, bound),
        base=base,
        kwargs=types.MappingProxyType(bound),
        family=entry.family,
    )
