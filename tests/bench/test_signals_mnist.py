"""The failure modes at initialization on real MNIST, told apart by the backward and forward signals."""

from __future__ import annotations

import pytest

from vgbench.bench import data as data_mod
from vgbench.bench import metrics

pytestmark = pytest.mark.mnist


@pytest.fixture(scope="module")
def at_init(mnist_path, measure_at_init):
    """run_metrics rows and layer tables at step 0: depth 20, width 256, batch 256, standardized inputs."""
    ds = data_mod.load_dataset("mnist", mnist_path)
    out = {}
    for activation, initializer in [
        ("gelu", "glorot_uniform"),
        ("relu", "he_normal"),
        ("sigmoid", "glorot_uniform"),
        ("leaky_relu", "he_normal"),
    ]:
        _, record, row = measure_at_init(ds, activation, initializer, train_samples=1024)
        layers = metrics.hidden(record.layers).set_index("layer_index")
        out[activation] = (row, layers)
    return out


def test_gelu_forward_collapse_is_named_where_the_kernel_gradient_looks_flat(at_init):
    row, _ = at_init["gelu"]
    flags = metrics.flags(row)
    assert "forward collapse@init" in flags
    assert 0.3 < row["grad_factor_init"] < 1.5  # what the kernel gradient alone shows
    collapse = flags[flags.index("forward collapse@init")]
    assert collapse.numbers["kernel_flat"] and collapse.numbers["forward_factor"] < 0.7
    relu, _ = at_init["relu"]
    assert "forward collapse@init" not in metrics.flags(relu)
    assert 0.8 < relu["forward_factor_init"] < 1.25


def test_sigmoid_backward_signal_vanishes(at_init):
    row, _ = at_init["sigmoid"]
    assert row["backward_factor_init"] <= 0.25
    assert "vanishing@init" in metrics.flags(row)


def test_dead_units_accumulate_with_depth_for_relu_and_never_for_leaky_relu(at_init):
    # Real images, not a synthetic batch: dead ReLU units at init come from
    # examples that become alike with depth (their correlation grows layer
    # after layer), so a unit's sign turns the same for the whole batch; i.i.d.
    # noise inputs would understate that.
    _, relu = at_init["relu"]
    dead = relu["dead_fraction"]
    assert dead.loc[0] < 0.02
    assert dead.loc[15:19].mean() > 0.1 > dead.loc[0:4].mean()
    _, leaky = at_init["leaky_relu"]
    assert (leaky["dead_fraction"] == 0.0).all()
    assert leaky["inactive_fraction"].loc[15:19].mean() > 0.05  # on the negative side, still passing gradient
