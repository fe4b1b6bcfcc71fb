"""Registry of kernel initializers.

Usage:

>>> init = get("kaiming_normal")
>>> init.name
'he_normal'
>>> kernel_initializer = init.make(seed=3)

Parameters are those of the Keras class's constructor, read from its
signature, except `seed` (given to `Initializer.make`) and the axis
arguments, so a spec accepts exactly what Keras accepts:
`"random_normal(stddev=0.01)"`, `"orthogonal(gain=2.0)"`,
`"variance_scaling(scale=2.0, mode='fan_in', distribution='truncated_normal')"`.

Each entry also carries its mean-field description (`meanfield`): the
constructor defaults and the variance of one kernel entry, which
`bench.theory` reads without importing Keras. An entry without one says why
(`no_meanfield`).

Keras is imported only when parameters are checked or an initializer is
made, so listing names stays cheap.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import types
from collections.abc import Callable, Mapping
from typing import Any

from vgbench.models import registry

__all__ = ["ALIASES", "Initializer", "MeanField", "get", "meanfield", "names", "no_meanfield"]

# tf.random.truncated_normal redraws values beyond 2 standard deviations:
# the variance of N(0, 1) truncated to [-2, 2].
_TRUNCATED_VARIANCE = 1.0 - 4.0 * math.exp(-2.0) / math.sqrt(2.0 * math.pi) / math.erf(math.sqrt(2.0))


@dataclasses.dataclass(frozen=True)
class MeanField:
    """What the mean-field theory (`bench.theory`) needs of an initializer, without importing Keras.

    Attributes:
        defaults: The Keras constructor's defaults, repeated here (`Initializer.params`
            reads them from Keras' signature; a test checks that the two agree).
        variance: ``(params, fan_in, fan_out) -> (mean, a, n)``: the mean of
            one kernel entry and its variance as ``a / n``, so that
            ``fan·a/n`` is exact when ``n == fan``.
    """

    defaults: Mapping[str, Any]
    variance: Callable[[Mapping[str, Any], int, int], tuple[float, float, float]]


@dataclasses.dataclass(frozen=True)
class _Entry:
    keras_class: str  # the class in keras.initializers
    # The mean-field description, or why there is none: exactly one of the two.
    meanfield: MeanField | None = None
    no_meanfield: str = ""

    def __post_init__(self):
        if (self.meanfield is None) == (not self.no_meanfield):
            raise ValueError("An initializer entry needs either a mean-field description or the reason it has none")


def _scaling(scale: float | None = None, mode: str | None = None) -> MeanField:
    """The VarianceScaling family: variance ``scale / n`` for all three distributions, n from the mode.

    Keras widens its truncated normal by 1/0.8796 to make up for the
    truncation. The presets (Glorot, He, LeCun) fix scale and mode; their
    distribution does not change the variance.
    """

    def variance(p, fan_in, fan_out):
        s, m = (scale, mode) if scale is not None else (float(p["scale"]), p["mode"])
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[m]
        return 0.0, s, max(1.0, float(n))

    defaults = {} if scale is not None else {"scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal"}
    return _fixed(defaults, variance)


def _fixed(defaults: dict, variance) -> MeanField:
    return MeanField(types.MappingProxyType(defaults), variance)


_REGISTRY: dict[str, _Entry] = {
    "random_normal": _Entry(
        "RandomNormal",
        _fixed({"mean": 0.0, "stddev": 0.05}, lambda p, fi, fo: (float(p["mean"]), float(p["stddev"]) ** 2, 1.0)),
    ),
    "random_uniform": _Entry(
        "RandomUniform",
        _fixed(
            {"minval": -0.05, "maxval": 0.05},
            lambda p, fi, fo: (
                0.5 * (float(p["minval"]) + float(p["maxval"])),
                (float(p["maxval"]) - float(p["minval"])) ** 2 / 12.0,
                1.0,
            ),
        ),
    ),
    # Not widened like VarianceScaling's: variance 0.7737·stddev².
    "truncated_normal": _Entry(
        "TruncatedNormal",
        _fixed(
            {"mean": 0.0, "stddev": 0.05},
            lambda p, fi, fo: (float(p["mean"]), float(p["stddev"]) ** 2 * _TRUNCATED_VARIANCE, 1.0),
        ),
    ),
    "glorot_uniform": _Entry("GlorotUniform", _scaling(1.0, "fan_avg")),
    "glorot_normal": _Entry("GlorotNormal", _scaling(1.0, "fan_avg")),
    "he_uniform": _Entry("HeUniform", _scaling(2.0, "fan_in")),
    "he_normal": _Entry("HeNormal", _scaling(2.0, "fan_in")),
    "lecun_uniform": _Entry("LecunUniform", _scaling(1.0, "fan_in")),
    "lecun_normal": _Entry("LecunNormal", _scaling(1.0, "fan_in")),
    # Orthonormal columns (rows when fan_in < fan_out): variance gain² / max(fan_in, fan_out).
    "orthogonal": _Entry(
        "Orthogonal", _fixed({"gain": 1.0}, lambda p, fi, fo: (0.0, float(p["gain"]) ** 2, float(max(fi, fo))))
    ),
    "variance_scaling": _Entry("VarianceScaling", _scaling()),
    "zeros": _Entry("Zeros", _fixed({}, lambda p, fi, fo: (0.0, 0.0, 1.0))),
}

ALIASES: dict[str, str] = {
    "xavier_uniform": "glorot_uniform",
    "xavier_normal": "glorot_normal",
    "kaiming_uniform": "he_uniform",
    "kaiming_normal": "he_normal",
}

# Constructor arguments that are not part of a spec: the seed comes from the
# model builder, and the axis arguments describe the kernel layout, which the
# layer already knows.
_NOT_PARAMS = frozenset({"self", "seed", "input_axes", "output_axes"})

# base -> ((parameters, test of their values, what they must be), ...): constraints that
# the Keras constructors do not check, although a value outside them makes no
# distribution (a negative standard deviation) or an empty interval; Keras
# would build such an initializer and every run would fail or draw nonsense.
_CHECKS: dict[str, tuple[tuple[tuple[str, ...], Callable[..., bool], str], ...]] = {
    "random_normal": ((("stddev",), lambda stddev: stddev > 0, "stddev > 0"),),
    "truncated_normal": ((("stddev",), lambda stddev: stddev > 0, "stddev > 0"),),
    "random_uniform": ((("minval", "maxval"), lambda minval, maxval: minval < maxval, "minval < maxval"),),
}


def names() -> list[str]:
    """Returns the canonical base names of all initializers, sorted."""
    return sorted(_REGISTRY)


def meanfield(base: str) -> MeanField | None:
    """The mean-field description of a registered initializer (by base name), or None without one."""
    return _REGISTRY[base].meanfield


def no_meanfield(base: str) -> str:
    """Why a registered initializer has no mean-field description ("" when it has one)."""
    return _REGISTRY[base].no_meanfield


def _keras_class(base: str) -> type:
    import keras

    return getattr(keras.initializers, _REGISTRY[base].keras_class)


@functools.cache
def _defaults(base: str) -> Mapping[str, Any]:
    signature = inspect.signature(_keras_class(base).__init__)
    return types.MappingProxyType(
        {
            name: param.default
            for name, param in signature.parameters.items()
            if name not in _NOT_PARAMS
            and param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            and param.default is not inspect.Parameter.empty
        }
    )


@functools.cache
def _takes_seed(base: str) -> bool:
    return "seed" in inspect.signature(_keras_class(base).__init__).parameters


@dataclasses.dataclass(frozen=True)
class Initializer:
    """A resolved initializer: a registry entry with bound parameters.

    Build instances with `get()`.

    Attributes:
        name: Canonical spec, e.g. `"random_normal(stddev=0.01)"`;
            `get(name)` returns an equal instance.
        base: Registry name without parameters, e.g. `"random_normal"`.
        kwargs: Parameters that differ from their defaults (read-only).
    """

    name: str
    base: str
    kwargs: Mapping[str, Any] = dataclasses.field(hash=False)

    def __str__(self) -> str:
        return self.name

    @property
    def params(self) -> dict[str, Any]:
        """All parameters, defaults included."""
        return {**_defaults(self.base), **self.kwargs}

    def make(self, seed: int):
        """Creates the Keras initializer.

        Args:
            seed: A non-negative integer. Initializers made with the same
                seed produce the same values for the same shape; `zeros`
                ignores it.

        Returns:
            A new `keras.initializers.Initializer`.
        """
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"Argument `seed` must be a non-negative integer. Received: seed={seed!r}")
        kwargs = dict(self.kwargs)
        if _takes_seed(self.base):
            kwargs["seed"] = seed
        return _keras_class(self.base)(**kwargs)


def get(spec: str | Initializer) -> Initializer:
    """Looks up an initializer by spec.

    Args:
        spec: A name, alias or spec with parameters, e.g. `"xavier_uniform"`
            or `"orthogonal(gain=2.0)"` (case-insensitive); an `Initializer`
            is returned unchanged.

    Returns:
        The `Initializer`.

    Raises:
        UnknownNameError: For an unknown name or parameter name.
        ValueError: For a malformed spec or a value Keras rejects.
    """
    if isinstance(spec, Initializer):
        return spec
    name, kwargs = registry.parse_spec(spec)
    base = registry.resolve_name("initializer", name, _REGISTRY, ALIASES)
    bound = registry.bind_params("initializer", base, kwargs, _defaults(base))
    init = Initializer(
        name=registry.canonical(base, bound),
        base=base,
        kwargs=types.MappingProxyType(bound),
    )
    params = init.params
    for keys, test, expected in _CHECKS.get(base, ()):
        if not test(*(params[key] for key in keys)):
            received = ", ".join(f"{key}={params[key]!r}" for key in keys)
            raise ValueError(f"Parameters of initializer '{base}' must satisfy {expected}. Received: {received}")
    # Keras checks values (a mode, a positive scale) in the constructor; doing
    # it here reports a bad spec when it is read, not when a model is built.
    try:
        init.make(seed=0)
    except (ValueError, TypeError) as e:
        detail = " ".join(str(e).split())
        raise ValueError(f"Invalid spec {registry.shorten(repr(spec))} for initializer '{base}': {detail}") from None
    return init
