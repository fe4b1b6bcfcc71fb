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


@pytest.fixture(scope="session")
def measure_at_init():
    """A function training nothing, measuring step 0 of a depth-20, width-256 MLP on standardized MNIST.

    ``measure_at_init(data, activation, initializer, train_samples, seed=0)``
    returns ``(config, record, row)``: the `RunConfig` (batch 256), the run's
    record and its `metrics.run_metrics` row as a dict.
    """
    from vgbench.bench import metrics
    from vgbench.bench.config import RunConfig
    from vgbench.bench.train import train_run

    def measure(data, activation, initializer, train_samples, seed=0):
        config = RunConfig(
            depth=20,
            width=256,
            activation=activation,
            initializer=initializer,
            batch_size=256,
            max_steps=0,
            preprocessing="standardize",
            train_samples=train_samples,
            test_samples=256,
            seed=seed,
        )
        record = train_run(config, data=data)
        assert record.result["status"] == "ok", record.result.get("error")
        runs = record.layers[["run_id"]].drop_duplicates().assign(status="ok", depth=config.depth)
        return config, record, metrics.run_metrics(runs, record.layers).iloc[0].to_dict()

    return measure
