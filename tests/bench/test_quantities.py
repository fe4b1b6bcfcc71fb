"""The quantity registry: one entry defines a column everywhere it appears."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vgbench.bench import compare, metrics, quantities, results

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_layer_columns_come_from_the_registry():
    names = list(quantities.LAYER_QUANTITIES)
    assert results.LAYER_COLUMNS[: len(quantities.LAYER_KEY_COLUMNS)] == quantities.LAYER_KEY_COLUMNS
    assert sorted(results.LAYER_COLUMNS[len(quantities.LAYER_KEY_COLUMNS) :]) == sorted(names)
    # Grouped by cadence, in the order the instrumentation's buffers hold them.
    grad, act = quantities.cadence_fields("grad"), quantities.cadence_fields("act")
    assert results.LAYER_COLUMNS[len(quantities.LAYER_KEY_COLUMNS) :] == [*grad, *act]


def test_compare_metrics_and_tolerances_come_from_the_registry():
    compared = [name for name, q in metrics.METRICS.items() if q.tolerance is not None]
    assert list(compare.METRICS) == ["status", *compared]
    for name in compared:
        q, m = metrics.METRICS[name], compare.METRICS[name]
        assert compare.DEFAULT_TOLERANCES[name] == q.tolerance
        assert (m.gating, m.definition) == (q.gating, q.definition)
    assert set(metrics.METRIC_COLUMNS) == {n for n, q in metrics.METRICS.items() if q.compute is not None}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(level="step"), "level"),
        (dict(direction="up"), "direction"),
        (dict(scale="log2"), "scale"),
        (dict(unit="furlongs"), "unit"),
        (dict(cadence=None), "cadence"),
    ],
)
def test_a_bad_entry_is_refused_naming_the_argument(kwargs, message):
    args = dict(name="x", level="layer", label="x", cadence="grad") | kwargs
    with pytest.raises(ValueError, match=message):
        quantities.Quantity(**args)


def test_change_formats_follow_the_unit():
    ratio = metrics.METRICS["grad_ratio_final"]
    assert ratio.change_kind == "decades" and ratio.format_change(0.53) == "+0.53 dec"
    assert metrics.METRICS["wall_time_s"].format(20) == "20.00 s"
    assert metrics.METRICS["test_accuracy"].change_kind == "drop"
    assert metrics.METRICS["dead_fraction_final"].change_kind == "increase"


# A new quantity added by one entry (and its compute function) before the
# project's modules derive their tables: the instrumentation records it, the
# results layout stores it, and a new metric computed from it reaches compare.
_NEW_QUANTITY = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from vgbench.bench import quantities

    def kernel_grad_max(v):
        import tensorflow as tf
        return tf.reduce_max(tf.abs(v.kernel_grad))

    quantities.LAYER_QUANTITIES["kernel_grad_max"] = quantities.Quantity(
        "kernel_grad_max", "layer", "largest kernel gradient", kernel_grad_max, "grad", scale="log", unit="norm")

    from vgbench.bench import metrics
    metrics.METRICS["kernel_grad_max_init"] = quantities.Quantity(
        "kernel_grad_max_init", "run", "largest first-layer gradient at step 0",
        lambda ctx: ctx.layers[(ctx.layers.step == 0) & (ctx.layers.layer_index == 0)]
        .set_index("run_id")["kernel_grad_max"],
        direction="lower", unit="norm", tolerance=1.0)
    metrics.METRIC_COLUMNS.append("kernel_grad_max_init")

    import keras, tensorflow as tf
    from vgbench import models
    from vgbench.bench import compare, results
    from vgbench.bench.instrumentation import GradientNormLogger

    keras.utils.set_random_seed(0)
    model = models.build_model("mlp", depth=3, width=8, activation="tanh", initializer="glorot_uniform",
                               input_shape=(12,))
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.random((16, 12), dtype=np.float32)
    y = rng.integers(0, 10, 16).astype(np.int32)
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x, training=True))
    kernels = [h.weight_layer.kernel for h in models.hidden_layers(model)] + [models.output_layer(model).kernel]
    reference = [float(tf.reduce_max(tf.abs(g))) for g in tape.gradient(loss, kernels)]

    logger = GradientNormLogger(probe_data=(x, y), run_id="r")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[logger])
    layers = logger.layers
    m = metrics.run_metrics(layers[["run_id"]].drop_duplicates(), layers)
    print(json.dumps({
        "in_layer_columns": "kernel_grad_max" in results.LAYER_COLUMNS,
        "step0": layers[layers.step == 0].sort_values("layer_index")["kernel_grad_max"].tolist(),
        "steps": sorted(set(layers.dropna(subset=["kernel_grad_max"]).step.tolist())),
        "reference": reference,
        "metric": float(m["kernel_grad_max_init"].iloc[0]),
        "compared": compare.DEFAULT_TOLERANCES.get("kernel_grad_max_init"),
    }))
    """
)


def test_one_new_entry_reaches_instrumentation_results_metrics_and_compare():
    import json

    import numpy as np

    proc = subprocess.run(
        [sys.executable, "-c", _NEW_QUANTITY], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["in_layer_columns"]
    np.testing.assert_allclose(got["step0"], got["reference"], rtol=1e-5)
    assert got["steps"] == [0, 1, 2]  # recorded on the gradient cadence, every step
    assert got["metric"] == pytest.approx(got["reference"][0], rel=1e-5)
    assert got["compared"] == 1.0
