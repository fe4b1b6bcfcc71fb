"""Where a number came from: code version, packages and machine.

Each run records the code and package versions of the process that trained
it (in its result row), and each results directory records the same for the
latest invocation (in manifest.json). Computed once per process.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

from vgbench.bench import backend

PACKAGES = (
    "vgbench",
    "tensorflow-cpu",
    "tensorflow",
    "jax",
    "jaxlib",
    "keras",
    "numpy",
    "pandas",
    "pyarrow",
    "tensorflow-datasets",
    "seaborn",
    "ray",
)


@functools.cache
def git_sha() -> str:
    """The commit of the vgbench checkout ("+dirty" when modified), or "unknown"."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict:
    """Installed versions of the packages that shape the numbers."""
    return dict(_package_versions())


@functools.cache
def _package_versions() -> tuple:
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return tuple(out.items())


def platform_info() -> dict:
    info = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu_count": os.cpu_count(),
        "processor": cpu_name(),
    }
    try:
        import tensorflow as tf

        info["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception:  # provenance must never break a run
        info["gpus"] = []
    return info


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def backend_versions(name: str) -> dict:
    """{package: version} of the packages of backend ``name`` that are installed."""
    have = package_versions()
    out = {}
    for package in backend.PACKAGES.get(name, ()):
        version = have.get(package)
        if package == "tensorflow":
            version = have.get("tensorflow-cpu") or version
        if version is not None:
            out[package] = version
    return out


def run_provenance() -> dict:
    """The per-run provenance columns of runs.parquet.

    ``keras_backend`` is the backend Keras actually ran on in this process
    (the config's ``backend`` says which was asked for); a JAX run also
    records ``jax_version`` and ``jaxlib_version``. TensorFlow's version is
    recorded on every backend: its `tf.data` feeds the batches.
    """
    versions = package_versions()
    keras_backend = backend.loaded() or backend.default_backend()
    out = {
        "git_sha": git_sha(),
        "vgbench_version": versions.get("vgbench", "unknown"),
        "tensorflow_version": versions.get("tensorflow-cpu") or versions.get("tensorflow", "unknown"),
        "keras_version": versions.get("keras", "unknown"),
        "keras_backend": keras_backend,
    }
    if keras_backend != "tensorflow":
        out.update({f"{p}_version": v for p, v in backend_versions(keras_backend).items()})
    return out
