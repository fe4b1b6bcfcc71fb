"""Mean-field theory against the measured backward signal at initialization on real MNIST."""

from __future__ import annotations

import pytest

from vgbench.bench import data as data_mod
from vgbench.bench import theory

pytestmark = pytest.mark.mnist

PAIRS = [
    ("sigmoid", "glorot_uniform"),
    ("relu", "glorot_uniform"),
    ("relu", "he_normal"),
    ("gelu", "he_normal"),
    ("gelu", "glorot_uniform"),
    ("selu", "lecun_normal"),
    ("tanh", "glorot_uniform"),
]


@pytest.fixture(scope="module")
def mnist(mnist_path):
    return data_mod.load_dataset("mnist", mnist_path)


@pytest.mark.parametrize(("activation", "initializer"), PAIRS)
def test_measured_backward_factor_at_init_is_the_predicted_one(mnist, measure_at_init, activation, initializer):
    # Depth 20, width 256, batch 256, standardized inputs, no update. The theory
    # predicts the expectation over initializations: the mean over three seeds
    # (one network's factor is one draw; for gelu + He the draws spread over
    # 0.97-1.00, all above the prediction 0.94).
    measured = []
    for seed in (0, 1, 2):
        config, _, row = measure_at_init(mnist, activation, initializer, train_samples=2048, seed=seed)
        measured.append(row["backward_factor_init"])
    measured = sum(measured) / len(measured)

    # Step 0 is measured on the first batch_size training examples: each starts the recursions from its own q_0.
    arrays = data_mod.prepare(mnist, preprocessing="standardize", train_samples=2048, test_samples=256)
    probe = arrays.x_train[: config.batch_size]
    predicted = theory.predict_config(config, theory.example_second_moments(probe))
    assert predicted.applicable
    assert abs(measured - predicted.factor) <= 0.05, (measured, predicted.factor)
    # Standardization makes E[x²] over the training examples 1; the batch's mean is close to it.
    assert theory.input_second_moment(arrays.x_train) == pytest.approx(1.0, abs=1e-6)
