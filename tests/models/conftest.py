"""Fixtures for the model tests: a fixed batch of real MNIST images."""

import os
from pathlib import Path

import numpy as np
import pytest

# The shared data directory sits next to the repository checkout.
DEFAULT_MNIST = Path(__file__).parents[2] / ".." / "shared" / "data" / "mnist.npz"
BATCH_SIZE = 256


@pytest.fixture(scope="session")
def mnist_batch():
    """The first 256 MNIST training images and their labels.

    Returns:
        `(x, y)`: `x` float32 of shape (256, 784) in [0, 1], `y` int32 of
        shape (256,).
    """
    path = Path(os.environ.get("VGBENCH_MNIST") or DEFAULT_MNIST)
    if not path.is_file():
        message = (
            f"MNIST not found at {path}. Set VGBENCH_MNIST=/path/to/mnist.npz "
            "(the Keras layout, with x_train and y_train) to run this test."
        )
        # A CI runner without the data must not pass by skipping.
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    with np.load(path) as data:
        x = data["x_train"][:BATCH_SIZE].reshape(BATCH_SIZE, -1)
        y = data["y_train"][:BATCH_SIZE]
    return x.astype("float32") / 255.0, y.astype("int32")
