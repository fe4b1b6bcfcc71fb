"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before any test module imports Keras: the environment TensorFlow reads when it starts.
import vgbench  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist.npz"


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    """Path of the real MNIST file: ``$VGBENCH_MNIST``, else ``../shared/data/mnist.npz``.

    Skipped when the file is missing, except on CI (``CI=true`` or ``CI=1``),
    where a missing file must fail rather than silently skip the real-data
    tests.
    """
    env = os.environ.get("VGBENCH_MNIST", "").strip()
    path = Path(env).expanduser() if env else DEFAULT_MNIST
    if not path.is_file():
        if os.environ.get("CI", "").strip().lower() in ("true", "1"):
            pytest.fail(f"real MNIST not found at {path}: CI must provide it (set VGBENCH_MNIST=/path/to/mnist.npz)")
        pytest.skip("real MNIST not found: set VGBENCH_MNIST=/path/to/mnist.npz (see README)")
    return path
