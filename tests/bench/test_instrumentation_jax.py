"""GradientNormLogger on Keras' JAX backend: the tables and numbers of the TensorFlow path.

This process runs Keras on TensorFlow (Keras reads its backend once, at
import); the JAX side runs in one subprocess with ``KERAS_BACKEND=jax``
(`_JAX_SCRIPT`), fed with the weights the TensorFlow side started from, and
hands back its tables as parquet files and its other findings as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import model_zoo
import numpy as np
import pandas as pd
import pytest

import vgbench  # noqa: F401  (before keras: portable numerics)
from vgbench import models
from vgbench.bench.instrumentation import GradientNormLogger
from vgbench.bench.quantities import cadence_fields
from vgbench.bench.train import measure_at_init

REPO_ROOT = Path(__file__).resolve().parents[2]

# float32 on two backends: the same math, other kernels and summation orders.
RTOL, ATOL = 2e-4, 1e-6

# Step-0 cases: factory models with weights built here and loaded on JAX.
FACTORY = {
    "mlp-relu": dict(arch="mlp", activation="relu", initializer="he_normal"),
    "mlp-sigmoid": dict(arch="mlp", activation="sigmoid", initializer="glorot_uniform"),
    "mlp-gelu": dict(arch="mlp", activation="gelu", initializer="he_normal"),
    "mlp-selu": dict(arch="mlp", activation="selu", initializer="lecun_normal"),
    "mlp-leaky": dict(arch="mlp", activation="leaky_relu(negative_slope=0.1)", initializer="he_normal"),
    "mlp-batchnorm-prelu": dict(arch="mlp", activation="prelu", initializer="he_normal", norm="batchnorm"),
    "mlp-layernorm-residual": dict(
        arch="mlp", activation="tanh", initializer="glorot_uniform", norm="layernorm", residual_every=1
    ),
    "cnn": dict(arch="cnn", activation="relu", initializer="he_normal", input_shape=(12, 12, 1), width=4),
}

_JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    from pathlib import Path

    import vgbench  # noqa: F401
    import keras
    import numpy as np

    from vgbench import models
    from vgbench.bench.instrumentation import GradientNormLogger
    from vgbench.bench.train import measure_at_init

    assert keras.backend.backend() == "jax", keras.backend.backend()
    work = Path(sys.argv[1])
    spec = json.loads((work / "spec.json").read_text())
    found = {}
    SPARSE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


    def load(model, name):
        w = np.load(work / f"{name}.weights.npz")
        model.set_weights([w[f"w{i}"] for i in range(len(w.files))])


    def save(logger, name):
        logger.layers.to_parquet(work / f"{name}.jax.layers.parquet")
        logger.variables.to_parquet(work / f"{name}.jax.variables.parquet")
        logger.history.to_parquet(work / f"{name}.jax.history.parquet")


    def compiled(model, lr=0.01, optimizer="sgd", spe=1):
        opt = keras.optimizers.Adam(lr) if optimizer == "adam" else keras.optimizers.SGD(lr)
        model.compile(optimizer=opt, loss=SPARSE, metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                      steps_per_execution=spe)
        return model


    # Step 0 of the factory models, from the TensorFlow side's weights and probe batch.
    for name, kw in spec["factory"].items():
        probe = np.load(work / f"{name}.probe.npz")
        model = compiled(models.build_model(**kw))
        load(model, name)
        logger = GradientNormLogger(probe_data=(probe["x"], probe["y"]), run_id=name)
        measure_at_init(model, logger)
        save(logger, name)

    # Models of every kind: step 0 from the same weights, then two steps.
    sys.path.insert(0, spec["tests_dir"])
    from model_zoo import zoo

    for name, (model, x, y) in zoo().items():
        compiled(model)
        load(model, "zoo-" + name)
        logger = GradientNormLogger(probe_data=(x, y), log_every=1, act_every=1, run_id=name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, y, batch_size=len(x), epochs=2, shuffle=False, verbose=0, callbacks=[logger])
        found["zoo-warnings-" + name] = [str(w.message) for w in caught if "GradientNormLogger" in str(w.message)]
        save(logger, "zoo-" + name)

    # A short fit, and the same fit without the logger, from the same weights.
    fit = spec["fit"]
    data = np.load(work / "fit.data.npz")
    x, y = data["x"], data["y"]
    weights = {}
    for with_logger in (True, False):
        model = compiled(models.build_model(**fit["model"]), optimizer="adam", lr=1e-3)
        load(model, "fit")
        callbacks = []
        if with_logger:
            logger = GradientNormLogger(probe_data=(x[:32], y[:32]), log_every=fit["log_every"],
                                        act_every=fit["act_every"], run_id="fit")
            callbacks = [logger]
        hist = model.fit(x, y, batch_size=fit["batch_size"], epochs=fit["epochs"], shuffle=False, verbose=0,
                         validation_data=(x[:64], y[:64]), callbacks=callbacks)
        weights[with_logger] = [np.asarray(v) for v in model.weights]
        found[f"fit-loss-{with_logger}"] = hist.history["loss"]
        found[f"fit-iterations-{with_logger}"] = int(model.optimizer.iterations.numpy())
    save(logger, "fit")
    np.savez(work / "fit.logged.npz", *weights[True])
    np.savez(work / "fit.plain.npz", *weights[False])
    found["fit-weight-names"] = [v.path for v in model.weights]

    # Several steps per execution.
    model = compiled(models.build_model(**fit["model"]), spe=3)
    load(model, "fit")
    logger = GradientNormLogger(probe_data=(x[:32], y[:32]), log_every=1, act_every=2, run_id="spe")
    model.fit(x[:256], y[:256], batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=[logger])
    found["spe-iterations"] = int(model.optimizer.iterations.numpy())
    save(logger, "spe")

    # Divergence: a learning rate no network survives.
    model = compiled(models.build_model(**fit["model"]), lr=1e12)
    load(model, "fit")
    logger = GradientNormLogger(probe_data=(x[:32], y[:32]), log_every=1, act_every=1, run_id="div")
    model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0, callbacks=[logger])
    found["diverged_step"] = logger.diverged_step
    found["diverged-iterations"] = int(model.optimizer.iterations.numpy())
    save(logger, "div")

    (work / "found.json").write_text(json.dumps(found))
    """
)

FIT = {
    "model": dict(arch="mlp", depth=3, width=16, activation="relu", initializer="he_normal", norm="batchnorm",
                  input_shape=(20,)),
    "log_every": 2,
    "act_every": 3,
    "batch_size": 32,
    "epochs": 2,
}  # fmt: skip


def _compiled(model, lr=0.01, optimizer="sgd"):
    opt = keras.optimizers.Adam(lr) if optimizer == "adam" else keras.optimizers.SGD(lr)
    model.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def _save_weights(model, path):
    np.savez(path, **{f"w{i}": w for i, w in enumerate(model.get_weights())})


def _factory_kwargs(kw):
    out = dict(depth=3, width=16, input_shape=(20,)) | kw
    return out


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    """The TensorFlow side (in this process) and the JAX side (one subprocess) of every scenario."""
    work = tmp_path_factory.mktemp("jax")
    rng = np.random.default_rng(0)
    tf_side = {}
    spec = {"factory": {}, "tests_dir": str(REPO_ROOT / "tests"), "fit": FIT}
    for name, kw in FACTORY.items():
        kw = _factory_kwargs(kw)
        spec["factory"][name] = kw
        keras.utils.set_random_seed(1)
        model = _compiled(models.build_model(**kw))
        _save_weights(model, work / f"{name}.weights.npz")
        x = rng.standard_normal((32, *kw["input_shape"])).astype("float32")
        y = rng.integers(0, 10, 32).astype("int32")
        np.savez(work / f"{name}.probe.npz", x=x, y=y)
        logger = GradientNormLogger(probe_data=(x, y), run_id=name)
        measure_at_init(model, logger)
        tf_side[name] = logger
    for name, (model, x, y) in model_zoo.zoo().items():
        _compiled(model)
        _save_weights(model, work / f"zoo-{name}.weights.npz")
        logger = GradientNormLogger(probe_data=(x, y), log_every=1, act_every=1, run_id=name)
        model.fit(x, y, batch_size=len(x), epochs=2, shuffle=False, verbose=0, callbacks=[logger])
        tf_side["zoo-" + name] = logger
    keras.utils.set_random_seed(2)
    model = _compiled(models.build_model(**FIT["model"]), optimizer="adam", lr=1e-3)
    _save_weights(model, work / "fit.weights.npz")
    x = rng.standard_normal((320, 20)).astype("float32")
    y = rng.integers(0, 10, 320).astype("int32")
    np.savez(work / "fit.data.npz", x=x, y=y)
    logger = GradientNormLogger(
        probe_data=(x[:32], y[:32]), log_every=FIT["log_every"], act_every=FIT["act_every"], run_id="fit"
    )
    model.fit(
        x, y, batch_size=FIT["batch_size"], epochs=FIT["epochs"], shuffle=False, verbose=0,
        validation_data=(x[:64], y[:64]), callbacks=[logger],
    )  # fmt: skip
    tf_side["fit"] = logger
    (work / "spec.json").write_text(json.dumps(spec))

    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT, str(work)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    def jax_table(name, table):
        return pd.read_parquet(work / f"{name}.jax.{table}.parquet")

    return {
        "tf": tf_side,
        "jax": jax_table,
        "found": json.loads((work / "found.json").read_text()),
        "work": work,
    }


def _assert_same_layers(tf_layers, jax_layers, steps=None):
    keys = ["step", "layer_index", "layer_name"]
    if steps is not None:
        tf_layers = tf_layers[tf_layers.step.isin(steps)]
        jax_layers = jax_layers[jax_layers.step.isin(steps)]
    a = tf_layers.sort_values(keys).reset_index(drop=True)
    b = jax_layers.sort_values(keys).reset_index(drop=True)
    assert a[keys].equals(b[keys])
    for col in (*cadence_fields("grad"), *cadence_fields("act")):
        np.testing.assert_allclose(b[col], a[col], rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=col)


def _assert_same_variables(tf_vars, jax_vars, steps=None):
    keys = ["step", "layer_index", "layer_name", "variable", "variable_path", "size"]
    if steps is not None:
        tf_vars = tf_vars[tf_vars.step.isin(steps)]
        jax_vars = jax_vars[jax_vars.step.isin(steps)]
    a = tf_vars.sort_values(keys[:5]).reset_index(drop=True)
    b = jax_vars.sort_values(keys[:5]).reset_index(drop=True)
    assert a[keys].equals(b[keys])
    np.testing.assert_allclose(b.grad_norm, a.grad_norm, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", list(FACTORY))
def test_step_zero_is_the_same_on_both_backends(sides, name):
    tf_logger = sides["tf"][name]
    layers = sides["jax"](name, "layers")
    assert list(layers.columns) == list(tf_logger.layers.columns)
    assert set(layers.step) == {0}
    _assert_same_layers(tf_logger.layers, layers)
    _assert_same_variables(tf_logger.variables, sides["jax"](name, "variables"))
    # The step-0 history: the loss and accuracy of the probe batch.
    history = sides["jax"](name, "history")
    np.testing.assert_allclose(history.train_loss, tf_logger.history.train_loss, rtol=RTOL)
    np.testing.assert_allclose(history.train_accuracy, tf_logger.history.train_accuracy)


@pytest.mark.parametrize("name", ["sequential", "conv-skip", "subclassed", "lstm", "batchnorm"])
def test_models_of_every_kind_give_the_same_layers_and_numbers(sides, name):
    tf_logger = sides["tf"]["zoo-" + name]
    layers, variables = sides["jax"]("zoo-" + name, "layers"), sides["jax"]("zoo-" + name, "variables")
    assert sides["found"]["zoo-warnings-" + name] == []
    order = ["layer_index", "layer_name"]
    assert (
        layers[layers.step == 0][order].values.tolist()
        == tf_logger.layers[tf_logger.layers.step == 0][order].values.tolist()
    )
    assert sorted(set(layers.step)) == [0, 1, 2]
    assert np.isfinite(layers[list(cadence_fields("grad"))[:1]].to_numpy()).all()
    assert np.isfinite(variables.grad_norm).all()
    # Step 0 and step 1 read the initial weights (and step 1's update ratio
    # the first update): the same numbers on both backends.
    _assert_same_layers(tf_logger.layers, layers, steps=[0, 1])
    _assert_same_variables(tf_logger.variables, variables, steps=[0, 1])


def test_a_short_fit_has_the_tables_of_the_tensorflow_path(sides):
    tf_logger = sides["tf"]["fit"]
    for table in ("layers", "variables", "history"):
        got, want = sides["jax"]("fit", table), getattr(tf_logger, table)
        assert list(got.columns) == list(want.columns), table
        assert got.dtypes.astype(str).tolist() == want.dtypes.astype(str).tolist(), table
        assert got.step.tolist() == want.step.tolist(), table
    layers = sides["jax"]("fit", "layers")
    per_epoch = 320 // FIT["batch_size"]
    steps = range(1, FIT["epochs"] * per_epoch + 1)
    grad = list(cadence_fields("grad"))
    act = [c for c in cadence_fields("act") if c not in ("saturated_fraction",)]  # relu: NaN by definition
    recorded_grad = layers.dropna(subset=grad[:1])
    recorded_act = layers.dropna(subset=["kernel_norm"])
    assert sorted(set(recorded_grad.step)) == [0, *(s for s in steps if s % FIT["log_every"] == 0)]
    assert sorted(set(recorded_act.step)) == [0, *(s for s in steps if s % FIT["act_every"] == 0)]
    hidden = recorded_act[recorded_act.layer_name != "output"]
    assert np.isfinite(recorded_grad[["kernel_grad_norm", "backward_rms"]].to_numpy()).all()
    with_bias = recorded_grad[recorded_grad.bias_size > 0]  # batch norm: the hidden layers have none
    assert len(with_bias) and np.isfinite(with_bias.bias_grad_norm).all()
    assert np.isfinite(hidden[hidden.step > 0][act].to_numpy()).all()
    # Steps 0 and 1 start from the same weights on both backends.
    _assert_same_layers(tf_logger.layers, layers, steps=[0])
    _assert_same_variables(tf_logger.variables, sides["jax"]("fit", "variables"), steps=[0])


def test_the_logger_does_not_change_training(sides):
    found, work = sides["found"], sides["work"]
    logged, plain = np.load(work / "fit.logged.npz"), np.load(work / "fit.plain.npz")
    assert len(logged.files) == len(plain.files) == len(found["fit-weight-names"])
    for i, name in enumerate(found["fit-weight-names"]):
        # Weights, Adam's moments' effect, batch-norm moving statistics: what the optimizer and Keras produced.
        np.testing.assert_allclose(logged[f"arr_{i}"], plain[f"arr_{i}"], rtol=1e-5, atol=1e-7, err_msg=name)
    assert found["fit-iterations-True"] == found["fit-iterations-False"] == FIT["epochs"] * 10
    np.testing.assert_allclose(found["fit-loss-True"], found["fit-loss-False"], rtol=1e-6)


def test_several_steps_per_execution_record_every_step(sides):
    layers = sides["jax"]("spe", "layers")
    assert sides["found"]["spe-iterations"] == 8
    assert sorted(set(layers.dropna(subset=["kernel_grad_norm"]).step)) == list(range(9))
    assert sorted(set(layers.dropna(subset=["kernel_norm"]).step)) == [0, 2, 4, 6, 8]


def test_divergence_is_a_result(sides):
    found = sides["found"]
    step = found["diverged_step"]
    assert step is not None and step >= 1
    layers = sides["jax"]("div", "layers")
    assert layers.step.max() <= step
    # Training stopped within a few steps of it, far before its 30 steps.
    assert found["diverged-iterations"] < 30
    assert found["diverged-iterations"] <= step + 3
