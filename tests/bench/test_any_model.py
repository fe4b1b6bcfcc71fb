"""GradientNormLogger on models not built by `models/`: plain Keras models of every kind, against plain GradientTape."""

from __future__ import annotations

import json
import math
import warnings

import keras
import model_zoo
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import vgbench  # noqa: F401  (before keras: portable numerics)
from vgbench import models
from vgbench.bench import results
from vgbench.bench.instrumentation import GradientNormLogger, accuracy_metric
from vgbench.bench.results import LAYER_COLUMNS, VARIABLE_COLUMNS
from vgbench.bench.summaries import HISTOGRAM_EDGES

L = keras.layers
SPARSE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _x(n, shape, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype("float32")


def _y(n, classes=3, seed=1):
    return np.random.default_rng(seed).integers(0, classes, n).astype("int32")


def _dense(g):
    return tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g


def _reference_norms(model, x, y, loss_fn):
    """{variable path: gradient norm} of every trainable variable, from one plain GradientTape pass."""
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_weights)
    # A variable the loss does not depend on has no gradient: norm 0.
    return {
        v.path: float(tf.norm(_dense(g))) if g is not None else 0.0
        for v, g in zip(model.trainable_weights, grads, strict=True)
    }


def _fit(model, x, y, loss_fn=SPARSE, metrics=(), steps=2, **logger_kw):
    """Compiles with SGD, checks nothing changes the weights' gradients, fits ``steps`` full-batch steps."""
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss_fn, metrics=list(metrics))
    ref = _reference_norms(model, x, y, loss_fn)
    logger_kw.setdefault("act_every", 1)
    logger = GradientNormLogger(probe_data=(x, y), log_every=1, run_id="r", **logger_kw)
    fit = model.fit(x, y, batch_size=len(x), epochs=steps, shuffle=False, verbose=0, callbacks=[logger])
    return logger, ref, fit


def _check(logger, ref, names, main=None):
    """Every layer in call order; step-0 and step-1 per-variable norms as the plain tape's (same batch and weights)."""
    layers, var = logger.layers, logger.variables
    assert list(layers.columns[: len(LAYER_COLUMNS)]) == LAYER_COLUMNS
    assert list(var.columns) == VARIABLE_COLUMNS
    for step in (0, 1):
        got = layers[layers.step == step].sort_values("layer_index")
        assert got.layer_name.tolist() == names
        assert got.layer_index.tolist() == list(range(len(names)))
        v = var[var.step == step].set_index("variable_path")
        assert sorted(v.index) == sorted(ref)
        np.testing.assert_allclose([v.grad_norm[k] for k in ref], list(ref.values()), rtol=1e-4)
        # The variables table places each variable under its layer's row.
        index = dict(zip(got.layer_name, got.layer_index, strict=True))
        assert (v.layer_index == v.layer_name.map(index)).all()
        if main is not None:
            # kernel_grad_norm reports the layer's main weight, bias_grad_norm its bias.
            for name, (kernel, bias) in main.items():
                row = got.set_index("layer_name").loc[name]
                assert row.kernel_grad_norm == pytest.approx(ref[kernel], rel=1e-4), name
                if bias is None:
                    assert math.isnan(row.bias_grad_norm), name
                else:
                    assert row.bias_grad_norm == pytest.approx(ref[bias], rel=1e-4), name
    steps = sorted(var.step.unique())
    assert steps == [0, 1, 2]
    assert (
        var["size"] == var.variable_path.map({v.path: int(np.prod(v.shape)) for v in logger.model.trainable_weights})
    ).all()


def _rms(t):
    return float(tf.sqrt(tf.reduce_mean(tf.square(tf.cast(t, tf.float32)))))


# --------------------------------------------------------------------------- #
# Model kinds
# --------------------------------------------------------------------------- #


def test_sequential_dense_with_inner_activations_signals_match_a_layer_by_layer_reference():
    keras.utils.set_random_seed(0)
    model = model_zoo.sequential()
    x, y = _x(16, (6,)), _y(16)
    # Reference: the same network written out by hand, z = h·W + b, h' = f(z).
    with tf.GradientTape() as tape:
        h, zs = tf.constant(x), []
        for layer in model.layers:
            z = tf.matmul(h, layer.kernel) + layer.bias
            zs.append(z)
            h = layer.activation(z)
        loss = SPARSE(y, h)
    dzs = tape.gradient(loss, zs)
    logger, ref, _ = _fit(model, x, y)
    names = ["seq/d0", "seq/d1", "seq/out"]
    main = {n: (f"{n}/kernel", f"{n}/bias") for n in names}
    _check(logger, ref, names, main)
    init = logger.layers[logger.layers.step == 0].set_index("layer_name")
    for name, z, dz, act in zip(names, zs, dzs, ("relu", "tanh", None), strict=True):
        row = init.loc[name]
        assert row.preact_rms == pytest.approx(_rms(z), rel=1e-4)
        assert row.backward_rms == pytest.approx(len(x) * _rms(dz), rel=1e-4)
        out = keras.activations.get(act)(z) if act else z
        assert row.act_mean == pytest.approx(float(tf.reduce_mean(out)), rel=1e-4, abs=1e-7)
        if act == "relu":
            assert row.dead_fraction == pytest.approx(float(np.mean(np.all(z.numpy() <= 0, axis=0))))
            assert row.inactive_fraction == row.dead_fraction
        elif act == "tanh":
            assert row.dead_fraction == 0.0 and not math.isnan(row.saturated_fraction)
        else:
            assert math.isnan(row.dead_fraction)  # a linear layer has no activation to be dead
    # Restored: the layers are plain Keras layers again after fit.
    assert all("call" not in layer.__dict__ for layer in model.layers)
    assert model.layers[0].activation is keras.activations.relu


def test_functional_conv_stack_with_a_skip_connection():
    keras.utils.set_random_seed(0)
    model = model_zoo.conv_skip()
    x, y = _x(8, (8, 8, 1)), _y(8)
    logger, ref, _ = _fit(model, x, y)
    names = [model.get_layer(n).path for n in ("c0", "c1", "out")]
    _check(logger, ref, names, {n: (f"{n}/kernel", f"{n}/bias") for n in names})
    init = logger.layers[logger.layers.step == 0].set_index("layer_name")
    assert init.loc[names[0]].dead_fraction >= 0.0 and init.loc[names[0]].act_std > 0


def test_subclassed_model_in_call_order_not_attribute_order():
    keras.utils.set_random_seed(0)
    model = model_zoo.MyMLP()
    x, y = _x(16, (5,)), _y(16)
    model(x)
    logger, ref, _ = _fit(model, x, y)
    _check(logger, ref, ["my_mlp/body", "my_mlp/head"])
    init = logger.layers[logger.layers.step == 0].set_index("layer_name")
    assert 0.0 <= init.loc["my_mlp/body"].saturated_fraction <= 1.0


def test_embedding_and_lstm():
    keras.utils.set_random_seed(0)
    model = model_zoo.embedding_lstm()
    h = model.get_layer("lstm").output
    x = np.random.default_rng(0).integers(0, 20, (16, 5)).astype("int32")
    y = _y(16)
    # The LSTM's z is its output (its activations are inside the cell): checked against a functional tap.
    tap = keras.Model(model.inputs, [h, model.output])
    with tf.GradientTape() as tape:
        h, logits = tap(x, training=True)
        loss = SPARSE(y, logits)
    dh = tape.gradient(loss, h)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every output here can be recorded: no warning
        logger, ref, _ = _fit(model, x, y)
    emb, lstm, out = (model.get_layer(n).path for n in ("emb", "lstm", "out"))
    main = {
        emb: (f"{emb}/embeddings", None),
        lstm: (f"{lstm}/lstm_cell/kernel", f"{lstm}/lstm_cell/bias"),
        out: (f"{out}/kernel", f"{out}/bias"),
    }
    _check(logger, ref, list(main), main)
    var = logger.variables
    assert set(var[var.layer_name == lstm].variable) == {
        "lstm_cell/kernel",
        "lstm_cell/recurrent_kernel",
        "lstm_cell/bias",
    }
    row = logger.layers[logger.layers.step == 0].set_index("layer_name").loc[lstm]
    assert row.backward_rms == pytest.approx(len(x) * _rms(dh), rel=1e-4)
    assert row.preact_rms == pytest.approx(_rms(h), rel=1e-4)
    assert math.isnan(row.dead_fraction)


def test_batch_normalization_gamma_and_beta():
    keras.utils.set_random_seed(0)
    model = model_zoo.batchnorm()
    x, y = _x(16, (6,)), _y(16)
    moving = [v.numpy().copy() for v in model.non_trainable_weights]
    logger, ref, _ = _fit(model, x, y)
    main = {
        "bnnet/d0": ("bnnet/d0/kernel", None),
        "bnnet/bn": ("bnnet/bn/gamma", "bnnet/bn/beta"),
        "bnnet/out": ("bnnet/out/kernel", "bnnet/out/bias"),
    }
    _check(logger, ref, list(main), main)
    assert ref["bnnet/bn/gamma"] > 0 and ref["bnnet/bn/beta"] > 0
    assert not all(np.array_equal(a, v.numpy()) for a, v in zip(moving, model.non_trainable_weights, strict=True))


def test_separable_and_depthwise_convolutions():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 2))
    h = L.SeparableConv2D(4, 3, activation="relu", name="sep")(inp)
    h = L.DepthwiseConv2D(3, activation="elu", name="dw")(h)
    out = L.Dense(3, name="out")(L.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out, name="sepnet")
    x, y = _x(8, (8, 8, 2)), _y(8)
    logger, ref, _ = _fit(model, x, y)
    sep, dw, o = (model.get_layer(n).path for n in ("sep", "dw", "out"))
    main = {
        sep: (f"{sep}/depthwise_kernel", f"{sep}/bias"),
        dw: (f"{dw}/kernel", f"{dw}/bias"),
        o: (f"{o}/kernel", f"{o}/bias"),
    }
    _check(logger, ref, [sep, dw, o], main)
    assert {"depthwise_kernel", "pointwise_kernel", "bias"} == set(
        logger.variables.query("layer_name == @sep").variable
    )


def test_multi_head_attention():
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 8))
    h = L.MultiHeadAttention(2, 4, name="mha")(inp, inp)
    out = L.Dense(3, name="out")(L.GlobalAveragePooling1D()(h))
    model = keras.Model(inp, out, name="attn")
    x, y = _x(8, (4, 8)), _y(8)
    logger, ref, _ = _fit(model, x, y)
    mha = model.get_layer("mha").path
    _check(logger, ref, [mha, model.get_layer("out").path])
    names = set(logger.variables.query("layer_name == @mha").variable)
    assert names == {f"{p}/{w}" for p in ("query", "key", "value", "attention_output") for w in ("kernel", "bias")}
    row = logger.layers[logger.layers.step == 0].set_index("layer_name").loc[mha]
    assert row.backward_rms > 0 and row.act_std > 0


class Scale(keras.layers.Layer):
    """A user-defined layer with a weight of its own."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


class Block(keras.layers.Layer):
    """A user-defined layer made of Keras layers, with no weight of its own."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.a = L.Dense(8, activation="relu", name="a")
        self.b = L.Dense(8, name="b")

    def call(self, x):
        return self.b(self.a(x))


def test_user_defined_layers():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6,)), Block(name="block"), Scale(name="scale"), L.Dense(3, name="out")], name="user"
    )
    x, y = _x(16, (6,)), _y(16)
    logger, ref, _ = _fit(model, x, y)
    block = model.get_layer("block")
    names = [block.a.path, block.b.path, "user/scale", "user/out"]
    main = {"user/scale": ("user/scale/scale", None), block.a.path: (f"{block.a.path}/kernel", f"{block.a.path}/bias")}
    _check(logger, ref, names, main)


def test_a_shared_layer_counts_once_with_the_gradient_of_both_calls():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    shared = L.Dense(6, activation="tanh", name="shared")
    out = L.Dense(3, name="out")(shared(shared(inp)))
    model = keras.Model(inp, out, name="tied")
    x, y = _x(16, (6,)), _y(16)
    first = np.tanh(x @ shared.kernel.numpy() + shared.bias.numpy())
    logger, ref, _ = _fit(model, x, y)
    _check(logger, ref, ["shared", "out"] if shared.path == "shared" else [shared.path, model.get_layer("out").path])
    row = logger.layers[logger.layers.step == 0].set_index("layer_index").loc[0]
    # Its activations are those of its first call.
    assert row.act_mean == pytest.approx(float(first.mean()), rel=1e-4)
    assert row.act_rms == pytest.approx(float(np.sqrt((first**2).mean())), rel=1e-4)


def test_a_layer_the_forward_pass_never_calls_warns_and_keeps_its_gradients():
    class Partial(keras.Model):
        def __init__(self):
            super().__init__(name="partial")
            self.used = L.Dense(3, name="used")
            self.spare = L.Dense(3, name="spare")

        def call(self, x):
            return self.used(x)

    keras.utils.set_random_seed(0)
    model = Partial()
    x, y = _x(16, (4,)), _y(16)
    model(x)
    model.spare.build((None, 4))
    used, spare = model.used.path, model.spare.path
    with pytest.warns(UserWarning, match=f"no activation statistics or backward signal for {spare} \\(not called"):
        logger, ref, _ = _fit(model, x, y, steps=1)
    df = logger.layers[logger.layers.step == 0].set_index("layer_name")
    assert df.loc[used].layer_index == 0 and df.loc[spare].layer_index == 1
    assert df.loc[spare].kernel_grad_norm == 0.0 and df.loc[used].kernel_grad_norm > 0.0
    assert math.isnan(df.loc[spare].backward_rms) and math.isnan(df.loc[spare].act_mean)


def test_models_from_the_factory_keep_their_blocks_and_list_norm_weights_under_them():
    keras.utils.set_random_seed(0)
    model = models.build_model(
        "mlp", depth=3, width=8, activation="prelu", initializer="he_normal", norm="batchnorm", input_shape=(6,)
    )
    x, y = _x(16, (6,)), _y(16, classes=10)
    logger, ref, _ = _fit(model, x, y)
    names = ["hidden_0", "hidden_1", "hidden_2", "output"]
    _check(logger, ref, names, {n: (f"{n}/kernel", None) for n in names[:-1]})
    var = logger.variables[logger.variables.step == 0]
    assert set(var[var.layer_name == "hidden_1"].variable) == {
        "kernel",
        "hidden_1_norm/gamma",
        "hidden_1_norm/beta",
        "hidden_1_act/alpha",
    }


# --------------------------------------------------------------------------- #
# Losses, labels and metrics
# --------------------------------------------------------------------------- #


def _mlp(inputs=6, outputs=3, name="net"):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((inputs,)), L.Dense(8, activation="relu", name="d0"), L.Dense(outputs, name="out")], name=name
    )


def test_accuracy_compiled_as_acc_fills_the_history():
    model = _mlp()
    x, y = _x(32, (6,)), _y(32)
    logits = model(x).numpy()
    logger, _, fit = _fit(model, x, y, metrics=["acc"], steps=3)
    h = logger.history
    assert h.step.tolist() == [0, 1, 2, 3]
    assert h.train_accuracy.iloc[0] == pytest.approx(float(np.mean(logits.argmax(-1) == y)))
    np.testing.assert_allclose(h.train_accuracy.iloc[1:], fit.history["acc"], rtol=1e-6)
    assert h.train_accuracy.notna().all()


def test_one_hot_labels_with_categorical_crossentropy():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="c0")(inp)
    s = L.Add()([a, L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(a)])
    model = keras.Model(inp, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(s)), name="onehot")
    x, labels = _x(16, (8, 8, 1)), _y(16)
    y = np.eye(3, dtype="float32")[labels]
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True)
    logits = model(x).numpy()
    logger, ref, fit = _fit(model, x, y, loss_fn=loss_fn, metrics=["categorical_accuracy", "auc"])
    _check(logger, ref, [model.get_layer(n).path for n in ("c0", "c1", "out")])
    h = logger.history
    assert h.train_loss.iloc[0] == pytest.approx(float(loss_fn(y, logits)), rel=1e-5)
    assert h.train_accuracy.iloc[0] == pytest.approx(float(np.mean(logits.argmax(-1) == labels)))
    np.testing.assert_allclose(h.train_accuracy.iloc[1:], fit.history["categorical_accuracy"], rtol=1e-6)
    # Other compiled metrics are kept, step 0 included.
    np.testing.assert_allclose(h["metric:auc"].iloc[1:], fit.history["auc"], rtol=1e-6)
    assert 0.0 <= h["metric:auc"].iloc[0] <= 1.0


def test_regression_with_mse_has_no_accuracy():
    model = _mlp(outputs=1)
    x = _x(16, (6,))
    y = _x(16, (1,), seed=3)
    pred = model(x).numpy()
    logger, ref, fit = _fit(model, x, y, loss_fn=keras.losses.MeanSquaredError(), metrics=["mae"])
    _check(logger, ref, ["net/d0", "net/out"])
    h = logger.history
    assert h.train_accuracy.isna().all() and h.test_accuracy.isna().all()
    assert h.train_loss.iloc[0] == pytest.approx(float(np.mean((pred - y) ** 2)), rel=1e-5)
    assert h["metric:mae"].iloc[0] == pytest.approx(float(np.mean(np.abs(pred - y))), rel=1e-5)
    np.testing.assert_allclose(h["metric:mae"].iloc[1:], fit.history["mae"], rtol=1e-6)


def test_binary_labels_and_the_accuracy_metric_rule():
    model = _mlp(outputs=1)
    x = _x(16, (6,))
    y = (np.random.default_rng(2).random((16, 1)) > 0.5).astype("float32")
    logits = model(x).numpy()
    loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)
    logger, ref, _ = _fit(model, x, y, loss_fn=loss_fn, metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)])
    assert logger.history.train_accuracy.iloc[0] == pytest.approx(float(np.mean((logits > 0) == y)))
    assert accuracy_metric(["loss", "auc", "binary_accuracy", "val_loss"]) == "binary_accuracy"
    assert accuracy_metric(["loss", "top_k_categorical_accuracy", "out_acc"]) == "out_acc"
    assert accuracy_metric(["loss", "mae"]) is None


# --------------------------------------------------------------------------- #
# Results layout and TensorBoard
# --------------------------------------------------------------------------- #


def test_variables_table_round_trips_through_the_results_layout(tmp_path):
    model = _mlp()
    x, y = _x(16, (6,)), _y(16)
    logger, _, _ = _fit(model, x, y)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": results.SCHEMA_VERSION}))
    record = results.RunRecord(
        "r", {"seed": 0}, results.empty_result(), logger.layers, logger.history, logger.variables
    )
    results.write_run(tmp_path, record)
    loaded = results.load_results(tmp_path)
    pd.testing.assert_frame_equal(loaded.variables.reset_index(drop=True), logger.variables, check_dtype=False)
    assert (tmp_path / "variables.parquet").is_file()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "runs" / "r" / "variables.parquet"), logger.variables)
    # A results directory written before the table existed still loads.
    (tmp_path / "variables.parquet").unlink()
    (tmp_path / "runs" / "r" / "variables.parquet").unlink()
    old = results.load_results(tmp_path)
    assert len(old.layers) == len(logger.layers)
    assert old.variables.empty and list(old.variables.columns) == VARIABLE_COLUMNS


def test_tensorboard_events_hold_the_tables_numbers(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = _mlp()
    x, y = _x(16, (6,)), _y(16)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=SPARSE)
    with tf.GradientTape() as tape:
        loss = SPARSE(y, model(x, training=True))
    g0 = tape.gradient(loss, model.get_layer("d0").trainable_weights)
    logger = GradientNormLogger(probe_data=(x, y), act_every=2, run_id="run-1", tensorboard_dir=tmp_path)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[logger])
    acc = EventAccumulator(str(tmp_path / "run-1"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    layers = logger.layers
    for name in ("net/d0", "net/out"):
        for q in ("kernel_grad_norm", "backward_rms", "dead_fraction", "act_std"):
            table = layers[layers.layer_name == name].dropna(subset=[q])
            if table.empty:  # NaN (no activation) is not written
                assert f"{q}/{name}" not in tags["scalars"]
                continue
            events = acc.Scalars(f"{q}/{name}")
            assert [e.step for e in events] == table.step.tolist()
            np.testing.assert_allclose([e.value for e in events], table[q].to_numpy(), rtol=1e-6)
    assert "dead_fraction/net/out" not in tags["scalars"] and "dead_fraction/net/d0" in tags["scalars"]
    # Histograms of log10|g| on the activation cadence, over all of the layer's weights.
    hist = acc.Histograms("grad_log10/net/d0")
    assert [h.step for h in hist] == [0, 2, 4]
    counts0 = np.array(hist[0].histogram_value.bucket)
    assert counts0.sum() == 6 * 8 + 8
    values = np.log10(np.maximum(np.concatenate([np.abs(g.numpy()).ravel() for g in g0]), 1e-30))
    expected, _ = np.histogram(np.clip(values, HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1] - 1e-9), HISTOGRAM_EDGES)
    # A value within float error of a bin edge may fall either side of it.
    assert np.abs(counts0 - expected).sum() <= 2


def test_a_users_own_models_and_bench_modules_do_not_shadow_vgbench(tmp_path):
    # vgbench installs one top-level package: a script next to a user's own
    # models.py and bench.py (first on sys.path) still gets vgbench's.
    import subprocess
    import sys

    for name in ("models", "bench"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('the user\\'s own {name}.py was imported')\n")
    (tmp_path / "train.py").write_text(
        "import vgbench\n"
        "import keras, numpy as np\n"
        "from vgbench.bench.instrumentation import GradientNormLogger\n"
        "from vgbench.models import build_model\n"
        "model = build_model('mlp', depth=3, width=8, activation='relu', initializer='he_normal',"
        " input_shape=(6,), num_classes=3, seed=0)\n"
        "model.compile('sgd', 'sparse_categorical_crossentropy')\n"
        "x = np.random.default_rng(0).normal(size=(32, 6)).astype('float32')\n"
        "y = np.arange(32) % 3\n"
        "logger = GradientNormLogger(probe_data=(x, y))\n"
        "model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[logger])\n"
        "print(sorted(int(s) for s in logger.layers['step'].unique()), logger.layers['layer_name'].nunique())\n"
    )
    run = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["[0,", "1,", "2]", "4"]
    # `python -m vgbench` puts the working directory first on sys.path too.
    cli = subprocess.run(
        [sys.executable, "-m", "vgbench", "list"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "relu" in cli.stdout
