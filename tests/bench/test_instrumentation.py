"""GradientNormLogger against plain GradientTape references, on real Keras models."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from vgbench import models
from vgbench.bench.instrumentation import GradientNormLogger
from vgbench.bench.results import HISTORY_COLUMNS, LAYER_COLUMNS


def _data(n=64, shape=(784,), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, *shape), dtype=np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int32)
    return x, y


def _compiled(lr=0.01, **kw):
    keras.utils.set_random_seed(0)
    kw.setdefault("input_shape", (784,))
    model = models.build_model(**kw)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def _reference_norms(model, x, y):
    """Kernel and bias gradient norms per layer from a plain GradientTape."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    layers = [h.weight_layer for h in models.hidden_layers(model)] + [models.output_layer(model)]
    variables = []
    for layer in layers:
        variables.append(layer.kernel)
        variables.append(layer.bias if getattr(layer, "bias", None) is not None else layer.kernel)
    grads = tape.gradient(loss, variables)
    out = []
    for i, layer in enumerate(layers):
        k = float(tf.norm(grads[2 * i]))
        b = float(tf.norm(grads[2 * i + 1])) if getattr(layer, "bias", None) is not None else np.nan
        out.append((k, b))
    return np.array(out)


CASES = {
    "mlp": dict(arch="mlp", depth=4, width=16, activation="tanh", initializer="glorot_uniform"),
    "mlp-batchnorm": dict(arch="mlp", depth=4, width=16, activation="relu", initializer="he_normal", norm="batchnorm"),
    "cnn": dict(arch="cnn", depth=3, width=4, activation="relu", initializer="he_normal", input_shape=(28, 28, 1)),
    "cnn-batchnorm": dict(
        arch="cnn",
        depth=3,
        width=4,
        activation="elu",
        initializer="glorot_uniform",
        norm="batchnorm",
        input_shape=(28, 28, 1),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logged_norms_match_plain_gradient_tape(case):
    kw = CASES[case]
    model = _compiled(**kw)
    x, y = _data(32, kw.get("input_shape", (784,)))
    # Reference first: the logged step-1 gradients are those of the initial weights.
    ref = _reference_norms(model, x, y)
    logger = GradientNormLogger(probe_data=(x, y), log_every=1, act_every=1)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=[logger])
    df = logger.layers
    for step in (0, 1):
        got = df[df.step == step].sort_values("layer_index")[["kernel_grad_norm", "bias_grad_norm"]].to_numpy()
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-5, equal_nan=True)
    if "batchnorm" in case:
        # The weight layer before batch norm has no bias: NaN, not a number.
        assert df[(df.layer_name != "output")]["bias_grad_norm"].isna().all()
    else:
        assert df["bias_grad_norm"].notna().all()


def test_tables_follow_the_contract_and_cadence():
    model = _compiled(arch="mlp", depth=3, width=8, activation="sigmoid", initializer="glorot_uniform")
    x, y = _data(128)
    logger = GradientNormLogger(
        probe_data=(x[:16], y[:16]), test_data=(x[:32], y[:32]), log_every=2, act_every=3, run_id="r1"
    )
    model.fit(
        x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[logger], validation_data=(x[:32], y[:32])
    )
    layers, history = logger.layers, logger.history
    assert list(layers.columns[: len(LAYER_COLUMNS)]) == LAYER_COLUMNS
    assert list(history.columns[: len(HISTORY_COLUMNS)]) == HISTORY_COLUMNS
    assert set(layers.run_id) == {"r1"}
    # 4 layers (3 hidden + output) per recorded step; output is index = depth.
    assert sorted(layers.layer_index.unique()) == [0, 1, 2, 3]
    assert set(layers[layers.layer_index == 3].layer_name) == {"output"}
    steps = sorted(layers.step.unique())
    expected = sorted({0} | {s for s in range(1, 17) if s % 2 == 0 or s % 3 == 0})
    assert steps == expected
    grads = layers.groupby("step")["kernel_grad_norm"].apply(lambda s: s.notna().all())
    assert all(grads[s] == (s == 0 or s % 2 == 0) for s in steps)
    acts = layers.groupby("step")["act_std"].apply(lambda s: s.notna().all())
    assert all(acts[s] == (s == 0 or s % 3 == 0) for s in steps)
    # update_ratio is undefined at initialization, measured on activation steps.
    assert layers[layers.step == 0]["update_ratio"].isna().all()
    assert layers[layers.step == 3]["update_ratio"].notna().all()
    # Epochs: step 0 is epoch 0; 8 steps per epoch.
    assert (layers[layers.step.between(1, 8)].epoch == 1).all()
    assert (layers[layers.step > 8].epoch == 2).all()
    # History: step 0 plus one row per epoch, with test metrics.
    assert history.step.tolist() == [0, 8, 16]
    assert history.test_accuracy.notna().all() and history.train_loss.notna().all()


def test_update_ratio_is_the_sgd_step():
    lr = 0.1
    model = _compiled(lr=lr, arch="mlp", depth=2, width=8, activation="tanh", initializer="glorot_uniform")
    x, y = _data(16)
    logger = GradientNormLogger(probe_data=(x, y), log_every=1, act_every=1)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[logger])
    df = logger.layers.set_index(["step", "layer_index"])
    for i in range(3):
        # Plain SGD: ΔW = -lr·g, so ‖ΔW‖/‖W‖ = lr·‖g‖/‖W_0‖.
        expected = lr * df.loc[(1, i), "kernel_grad_norm"] / df.loc[(0, i), "kernel_norm"]
        assert df.loc[(1, i), "update_ratio"] == pytest.approx(expected, rel=1e-4)


def test_step_zero_is_measured_before_any_update():
    model = _compiled(arch="mlp", depth=3, width=8, activation="relu", initializer="he_normal")
    x, y = _data(16)
    before = [w.copy() for w in model.get_weights()]
    logger = GradientNormLogger(probe_data=(x, y))
    logger.set_model(model)
    logger.set_params({"epochs": 0, "steps": 1})
    logger.on_train_begin()
    logger.on_train_end()
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    df = logger.layers
    assert df.step.unique().tolist() == [0]
    assert (
        df[["kernel_grad_norm", "kernel_norm", "act_mean", "act_std", "act_rms", "dead_fraction"]]
        .iloc[:3]
        .notna()
        .all()
        .all()
    )


def test_saturated_fraction_of_a_saturated_sigmoid_net():
    x, y = _data(64)
    fractions = {}
    for init in ("random_normal(stddev=5.0)", "glorot_uniform"):
        model = _compiled(arch="mlp", depth=4, width=32, activation="sigmoid", initializer=init)
        logger = GradientNormLogger(probe_data=(x, y))
        model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[logger])
        h = logger.layers[(logger.layers.step == 0) & (logger.layers.layer_name != "output")]
        fractions[init] = h.saturated_fraction.to_numpy()
        # A sigmoid unit is dead only where its float32 derivative underflows
        # to exactly 0 for every example: a subset of its saturated outputs.
        assert (h.dead_fraction.to_numpy() <= fractions[init]).all()
        assert h.inactive_fraction.isna().all()  # not a ReLU-family activation
        if init == "glorot_uniform":
            assert (h.dead_fraction == 0.0).all()
    assert (fractions["random_normal(stddev=5.0)"][1:] > 0.5).all()
    assert (fractions["glorot_uniform"] < 0.05).all()


def test_dead_fraction_of_a_net_with_dead_relus():
    model = _compiled(arch="mlp", depth=3, width=16, activation="relu", initializer="he_normal")
    layer = models.hidden_layers(model)[1].weight_layer
    layer.bias.assign(np.full(16, -1e3, np.float32))  # every unit of layer 1 off for every input
    x, y = _data(32)
    logger = GradientNormLogger(probe_data=(x, y))
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[logger])
    init = logger.layers[logger.layers.step == 0].set_index("layer_index")
    assert init.loc[1, "dead_fraction"] == 1.0
    assert init.loc[0, "dead_fraction"] < 0.5
    # Nothing flows back through a dead layer: the gradients below it are zero.
    assert init.loc[0, "kernel_grad_norm"] == 0.0
    assert np.isnan(init.loc[1, "saturated_fraction"])


def test_divergence_stops_training_and_keeps_the_records():
    model = _compiled(lr=1e4, arch="mlp", depth=6, width=32, activation="relu", initializer="random_normal(stddev=1.0)")
    x, y = _data(256)
    logger = GradientNormLogger(probe_data=(x[:32], y[:32]))
    model.fit(x, y, batch_size=32, epochs=5, shuffle=False, verbose=0, callbacks=[logger])
    assert logger.diverged_step is not None and logger.diverged_step >= 1
    steps_taken = int(model.optimizer.iterations.numpy())
    assert steps_taken == logger.diverged_step < 40  # stopped right after the step
    df = logger.layers
    assert df.step.max() == logger.diverged_step
    assert np.isfinite(df[df.step == 0].kernel_grad_norm).all()


def test_divergence_with_tensorboard_histograms_is_a_result_not_a_crash(tmp_path):
    # The gradient histograms (written only for TensorBoard) see the diverging step's NaNs.
    model = _compiled(lr=1e4, arch="mlp", depth=6, width=32, activation="relu", initializer="random_normal(stddev=1.0)")
    x, y = _data(256)
    logger = GradientNormLogger(probe_data=(x[:32], y[:32]), act_every=1, tensorboard_dir=str(tmp_path))
    model.fit(x, y, batch_size=32, epochs=5, shuffle=False, verbose=0, callbacks=[logger])
    assert logger.diverged_step is not None and logger.layers.step.max() == logger.diverged_step


def test_gradient_histograms_count_nan_in_no_bin():
    from vgbench.bench.measures import _histogram_fixed_width

    x = tf.constant([np.nan, -10.0, -1.0, 0.5, 1.0, 10.0, np.inf, np.nan])
    counts = _histogram_fixed_width(x, -1.0, 1.0, 4).numpy()
    # Bins of width 0.5 from -1: -10 and -1 in the first; 0.5, 1, 10 and inf in the last; the NaNs nowhere.
    assert counts.tolist() == [2, 0, 0, 4]


def test_callback_is_reusable_and_restores_the_model():
    model = _compiled(arch="mlp", depth=2, width=8, activation="relu", initializer="he_normal")
    x, y = _data(64)
    logger = GradientNormLogger(probe_data=(x[:16], y[:16]))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[logger])
    first = logger.layers.copy()
    assert "train_step" not in model.__dict__
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[logger])
    second = logger.layers
    # State reset: the second fit's tables hold only its own steps (5..8 after 4 steps).
    assert sorted(first.step.unique()) == [0, 1, 2, 3, 4]
    assert sorted(second.step.unique()) == [0, 5, 6, 7, 8]
    assert not pd.Series(second.kernel_grad_norm).isna().all()
    # Plain fit afterwards runs Keras' own train step.
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 12


def test_invalid_cadence_is_rejected():
    with pytest.raises(ValueError, match="log_every"):
        GradientNormLogger(log_every=0)
    with pytest.raises(ValueError, match="act_every"):
        GradientNormLogger(act_every=-1)


def test_several_steps_per_execution_record_every_step():
    # With steps_per_execution > 1 the cadence is decided inside the graph.
    keras.utils.set_random_seed(0)
    model = models.build_model(
        "mlp", depth=3, width=8, activation="tanh", initializer="glorot_uniform", input_shape=(784,)
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=4,
    )
    x, y = _data(128)
    logger = GradientNormLogger(probe_data=(x[:16], y[:16]), log_every=2, act_every=4)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[logger])
    df = logger.layers
    assert sorted(df.step.unique()) == [0, 2, 4, 6, 8]
    assert df[df.step == 4].act_std.notna().all() and df[df.step == 2].act_std.isna().all()
    assert df[df.step == 2].kernel_grad_norm.notna().all()


def _reference_signals(model, x, y):
    """Per layer (hidden, then output): RMS of z and of B·∂L/∂z, from a layer-by-layer forward pass.

    The model is walked layer by layer (no functional tap), keeping the input
    of every activation layer and the logits; one plain GradientTape gives
    ∂L/∂z for each.
    """
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        h = tf.convert_to_tensor(x)
        zs = []
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if layer.name.endswith("_act"):
                zs.append(h)
            h = layer(h, training=True)
        zs.append(h)  # the logits
        loss = loss_fn(y, h)
    grads = tape.gradient(loss, zs)
    batch = x.shape[0]
    rms = lambda t: float(tf.sqrt(tf.reduce_mean(tf.square(t))))  # noqa: E731
    return np.array([(rms(z), batch * rms(g)) for z, g in zip(zs, grads)])


@pytest.mark.parametrize("case", ["mlp", "mlp-batchnorm", "cnn"])
def test_backward_and_forward_signals_match_plain_gradient_tape(case):
    kw = CASES[case]
    model = _compiled(**kw)
    x, y = _data(32, kw.get("input_shape", (784,)))
    ref = _reference_signals(model, x, y)
    assert ref.shape == (kw["depth"] + 1, 2)
    logger = GradientNormLogger(probe_data=(x, y), log_every=1, act_every=1)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=[logger])
    df = logger.layers
    # Step 0 on the probe batch; step 1's gradients are those of the same weights on the same batch.
    for step in (0, 1):
        got = df[df.step == step].sort_values("layer_index")[["preact_rms", "backward_rms"]].to_numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-4)
    assert (ref > 0).all()


def _init_layers(model, x, y):
    logger = GradientNormLogger(probe_data=(x, y))
    logger.set_model(model)
    logger.set_params({"epochs": 0, "steps": 1})
    logger.on_train_begin()
    logger.on_train_end()
    return logger.layers.set_index("layer_index")


def test_dead_units_from_the_derivative_at_the_pre_activation():
    x, y = _data(32)
    # relu6: units pushed above 6 pass no gradient either; they are not inactive.
    model = _compiled(arch="mlp", depth=3, width=16, activation="relu6", initializer="he_normal")
    models.hidden_layers(model)[1].weight_layer.bias.assign(np.full(16, 1e3, np.float32))
    models.hidden_layers(model)[2].weight_layer.bias.assign(np.full(16, -1e3, np.float32))
    df = _init_layers(model, x, y)
    assert df.loc[1, "dead_fraction"] == 1.0 and df.loc[1, "inactive_fraction"] == 0.0
    assert df.loc[2, "dead_fraction"] == 1.0 and df.loc[2, "inactive_fraction"] == 1.0
    assert np.isnan(df.loc[3, "dead_fraction"])  # the output layer has no activation
    # Leaky ReLU and PReLU units on the negative side still pass gradient: inactive, not dead.
    for activation in ("leaky_relu", "prelu"):
        model = _compiled(arch="mlp", depth=3, width=16, activation=activation, initializer="he_normal")
        models.hidden_layers(model)[1].weight_layer.bias.assign(np.full(16, -1e3, np.float32))
        df = _init_layers(model, x, y)
        assert (df.loc[[0, 1, 2], "dead_fraction"] == 0.0).all(), activation
        assert df.loc[1, "inactive_fraction"] == 1.0
        assert df.loc[0, "kernel_grad_norm"] > 0.0
    # Leaky ReLU with slope 0 is a ReLU: its negative side is dead.
    model = _compiled(
        arch="mlp", depth=3, width=16, activation="leaky_relu(negative_slope=0.0)", initializer="he_normal"
    )
    models.hidden_layers(model)[1].weight_layer.bias.assign(np.full(16, -1e3, np.float32))
    assert _init_layers(model, x, y).loc[1, "dead_fraction"] == 1.0
