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

Keras is imported only when parameters are checked or an initializer is
made, so listing names stays cheap.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
from collections.abc import Callable, Mapping
from typing import Any

from vgbench.models import registry

__all__ = ["ALIASES", "Initializer", "get", "names"]

# Registry name -> class name in keras.initializers.
_REGISTRY: dict[str, str] = {
    "random_normal": "RandomNormal",
    "random_uniform": "RandomUniform",
    "truncated_normal": "TruncatedNormal",
    "glorot_uniform": "GlorotUniform",
    "glorot_normal": "GlorotNormal",
    "he_uniform": "HeUniform",
    "he_normal": "HeNormal",
    "lecun_uniform": "LecunUniform",
    "lecun_normal": "LecunNormal",
    "orthogonal": "Orthogonal",
    "variance_scaling": "VarianceScaling",
    "zeros": "Zeros",
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


def _keras_class(base: str) -> type:
    import keras

    return getattr(keras.initializers, _REGISTRY[base])


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
