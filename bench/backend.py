"""The Keras backend a process trains on: chosen once, before Keras is imported, and recorded with every run.

Keras 3 runs one model on TensorFlow or JAX and reads ``KERAS_BACKEND``
once per process, when it is first imported. vgbench chooses the backend
the Keras way (``--backend``, else ``$KERAS_BACKEND``, else TensorFlow),
sets the variable before anything imports Keras (`select`), and passes it
on to every worker process it starts. A run's config names its backend
(`bench.config.RunConfig.backend`), so a JAX run and a TensorFlow run of
one configuration are two runs.
"""

from __future__ import annotations

import os
import sys

from vgbench.bench.errors import UsageError
from vgbench.bench.utils import shorten

BACKENDS = ("tensorflow", "jax")
DEFAULT_BACKEND = "tensorflow"
ENV = "KERAS_BACKEND"

# The packages whose versions shape a backend's numbers, beside Keras.
PACKAGES = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib")}


def default_backend() -> str:
    """The backend when none is named: ``$KERAS_BACKEND`` when set, else TensorFlow."""
    return (os.environ.get(ENV) or "").strip().lower() or DEFAULT_BACKEND


def check(name, source: str = "backend") -> str:
    """The canonical name of a backend.

    Args:
        name: ``"tensorflow"`` or ``"jax"`` (any case).
        source: what the value came from, for the message (an argument or
            the environment variable).

    Raises:
        UsageError: another value; the message names it and the valid ones.
    """
    text = name.strip().lower() if isinstance(name, str) else name
    if text not in BACKENDS:
        raise UsageError(
            f"Argument `{source}` must be one of {', '.join(BACKENDS)}. Received: {source}={shorten(repr(name))}"
        )
    return text


def resolve(name=None, flag: str = "--backend") -> str:
    """The backend of an invocation: ``name`` when given, else `default_backend` (checked alike)."""
    if name is None:
        return check(default_backend(), ENV)
    return check(name, flag)


def loaded() -> str | None:
    """The backend Keras runs on in this process, or None when Keras is not imported yet."""
    keras = sys.modules.get("keras")
    if keras is None:
        return None
    try:
        return keras.backend.backend()
    except AttributeError:  # a partly imported keras
        return os.environ.get(ENV) or DEFAULT_BACKEND


def select(name: str) -> str:
    """Makes this process (and the processes it starts) run Keras on ``name``; call it before Keras is imported.

    Raises:
        UsageError: Keras is already imported here with another backend.
    """
    name = check(name)
    current = loaded()
    if current is not None and current != name:
        raise UsageError(
            f"Keras is already imported in this process with the {current} backend; cannot switch to {name}. "
            f"Set {ENV}={name} before importing keras, or run in a new process."
        )
    os.environ[ENV] = name
    if name == "jax":
        use_compilation_cache()
    return name


def use_compilation_cache() -> None:
    """Lets JAX keep its compiled steps on disk, for this process and those it starts.

    Each run builds a new model, so XLA compiles its train, test and step-0
    functions again; the compiled code depends on the architecture alone (not
    on the seed, initializer or learning rate, which are values), so the runs
    of a suite that share an architecture reuse one compilation, and so do
    later suites. A compiled function is the same code whether compiled now
    or read back, and gives the same numbers. ``$JAX_COMPILATION_CACHE_DIR``
    chooses the folder (default: ``$XDG_CACHE_HOME/vgbench/jax``, else
    ``~/.cache/vgbench/jax``); every compilation is kept, however short.
    """
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(base, "vgbench", "jax")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def with_backend(runs):
    """``runs`` (a runs table) with a ``backend`` column; runs recorded before the field existed ran TensorFlow."""
    runs = runs.copy()
    if "backend" in runs.columns:
        runs["backend"] = runs["backend"].fillna(DEFAULT_BACKEND).astype(str)
    else:
        runs["backend"] = DEFAULT_BACKEND
    return runs


def describe_runs(runs) -> dict:
    """{backend: {package: version}} of the runs in a runs table, from their provenance columns.

    The backend is the one Keras ran on (``keras_backend``), else the one the
    config asked for, else TensorFlow (runs recorded before either existed).
    """
    if runs is None or not len(runs):
        return {}
    asked = with_backend(runs)["backend"]
    ran = runs["keras_backend"].fillna(asked) if "keras_backend" in runs.columns else asked
    out = {}
    for name in sorted(set(ran.astype(str))):
        mine = runs[ran.astype(str) == name]
        packages = {}
        for package in ("keras", *PACKAGES.get(name, ())):
            column = f"{package}_version"
            if column in mine.columns:
                values = sorted({str(v) for v in mine[column].dropna() if str(v) not in ("", "unknown")})
                if values:
                    packages[package] = ", ".join(values)
        out[name] = packages
    return out
