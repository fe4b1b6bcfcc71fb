"""`vgbench diagnose` and `bench.diagnose.diagnose` on models of one's own; the CLI a newcomer reads."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import vgbench  # noqa: F401  (before keras: portable numerics)

# isort: split
import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml

from vgbench.bench import data
from vgbench.bench.cli import main, make_parser
from vgbench.bench.config import RunConfig
from vgbench.bench.diagnose import diagnose
from vgbench.bench.errors import UsageError
from vgbench.bench.lock import DirectoryLock
from vgbench.bench.results import HISTORY_COLUMNS, LAYER_COLUMNS, VARIABLE_COLUMNS, load_results

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SUITE = yaml.safe_load((REPO_ROOT / "bench" / "suites" / "default.yaml").read_text())["defaults"]
TINY = ["--train-samples", "256", "--test-samples", "128", "--batch-size", "32", "--act-every", "2"]


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A compiled Sequential model on flat 784-vectors and an uncompiled functional CNN, saved as .keras."""
    root = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(1)
    seq = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="tiny_seq",
    )
    seq.compile(optimizer=keras.optimizers.SGD(0.05), loss=_loss(), metrics=["accuracy"])
    seq.save(root / "seq.keras")
    inp = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inp)
    out = keras.layers.Dense(10)(keras.layers.Flatten()(x))
    keras.Model(inp, out, name="tiny_func").save(root / "func.keras")
    inp = keras.Input((32, 32, 3))
    keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(inp)), name="rgb").save(root / "rgb.keras")
    (root / "text.keras").write_text("not a model")
    return root


def _one_line_exit_2(capsys, argv, *fragments, out=None):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vgbench: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    if out is not None:
        assert not Path(out).exists()
    return err


@pytest.mark.mnist
def test_saved_sequential_model_gives_the_tables_and_a_report(saved, mnist_path, tmp_path, capsys):
    out, tb = tmp_path / "out", tmp_path / "tb"
    argv = ["diagnose", saved / "seq.keras", "--data", mnist_path, "--steps", "3", *TINY]
    assert main([*map(str, argv), "--out", str(out), "--tensorboard", str(tb)]) == 0
    printed = capsys.readouterr().out
    assert "tiny_seq: run custom-tiny_seq-" in printed and "3 steps" in printed and "index.html" in printed

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["suite"] == "diagnose"
    assert manifest["model"]["sha256"] == hashlib.sha256((saved / "seq.keras").read_bytes()).hexdigest()
    assert manifest["data"]["checksum"] == data.load_dataset("mnist", mnist_path).checksum
    runs = pd.read_parquet(out / "runs.parquet")
    layers = pd.read_parquet(out / "layers.parquet")
    history = pd.read_parquet(out / "history.parquet")
    variables = pd.read_parquet(out / "variables.parquet")
    assert len(runs) == 1 and [p.name for p in (out / "runs").iterdir()] == list(runs.run_id)
    run = runs.iloc[0]
    identity = (run.arch, run.activation, run.initializer, run.model, run.status)
    assert identity == ("custom", "n/a", "n/a", "tiny_seq", "ok")
    assert run.model_sha256 == manifest["model"]["sha256"] and run.steps == 3 and run.depth == 2
    assert list(layers.columns[: len(LAYER_COLUMNS)]) == LAYER_COLUMNS
    assert list(history.columns[: len(HISTORY_COLUMNS)]) == HISTORY_COLUMNS
    assert list(variables.columns[: len(VARIABLE_COLUMNS)]) == VARIABLE_COLUMNS
    # Three Dense layers at steps 0..3; a kernel and a bias each.
    assert sorted(layers.step.unique()) == [0, 1, 2, 3] and len(layers) == 4 * 3
    assert len(variables) == 4 * 6
    assert history.step.iloc[0] == 0 and history.step.iloc[-1] == 3

    # Step 0 is the model as saved, on the first batch: its loss and gradient by plain GradientTape.
    mnist = np.load(mnist_path)
    x = mnist["x_train"][:256].astype(np.float32) / np.float32(255)
    x = ((x - x.mean(dtype=np.float64)) / x.std(dtype=np.float64)).astype(np.float32).reshape(256, 784)[:32]
    model = keras.saving.load_model(saved / "seq.keras")
    with tf.GradientTape() as tape:
        loss = _loss()(mnist["y_train"][:32], model(x, training=True))
    grads = tape.gradient(loss, [layer.kernel for layer in model.layers])
    init = layers[layers.step == 0].sort_values("layer_index")
    np.testing.assert_allclose(init.kernel_grad_norm, [float(tf.norm(g)) for g in grads], rtol=1e-4)
    np.testing.assert_allclose(history.train_loss.iloc[0], float(loss), rtol=1e-5)

    report = out / "report"
    summary = json.loads((report / "summary.json").read_text())
    assert (report / "index.html").is_file()
    drawn = {f["name"] for f in summary["figures"]}
    assert {"gradient_depth", "gradient_heatmap", "activation_stats", "learning_curves"} <= drawn
    assert "tiny_seq" in (report / "summary.md").read_text()
    skipped = {f["name"]: f["reason"] for f in summary["skipped_figures"]}
    assert "not built by vgbench" in skipped["theory_vs_measurement"]
    assert [p.name for p in tb.iterdir()] == list(runs.run_id)


@pytest.mark.mnist
def test_functional_model_without_compile_config_needs_a_loss_and_steps_0_measures_only(
    saved, mnist_path, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = ["diagnose", saved / "func.keras", "--data", mnist_path, "--steps", "0", *TINY, "--out", out]
    argv = [str(a) for a in argv]
    _one_line_exit_2(capsys, argv, "'tiny_func' has no compile config", "--loss", out=out)
    loss = "sparse_categorical_crossentropy(from_logits=True)"
    assert main([*argv, "--loss", loss, "--no-report"]) == 0
    runs = pd.read_parquet(out / "runs.parquet")
    layers = pd.read_parquet(out / "layers.parquet")
    history = pd.read_parquet(out / "history.parquet")
    assert runs.steps.tolist() == [0] and runs.loss.tolist() == ["sparse_categorical_crossentropy"]
    assert set(layers.step) == {0} and len(layers) == 2 and history.step.tolist() == [0]
    # Measured at the saved weights: the stored model's step-0 loss on the first batch.
    assert np.isfinite(layers.backward_rms).all() and np.isfinite(history.test_accuracy).all()
    assert not (out / "report").exists()


def test_python_function_on_a_subclassed_model(tmp_path):
    class Deep(keras.Model):
        def __init__(self):
            super().__init__(name="deep_sigmoid")
            self.blocks = [keras.layers.Dense(24, activation="sigmoid") for _ in range(6)]
            self.head = keras.layers.Dense(3)

        def call(self, x):
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 12)).astype("float32"), rng.integers(0, 3, 200)
    keras.utils.set_random_seed(0)
    model = Deep()
    model.compile(optimizer="sgd", loss=_loss(), metrics=["accuracy"])
    res = diagnose(model, x[:160], y[:160], x[160:], y[160:], steps=4, batch_size=16, act_every=2)
    assert res.path is None and res.runs.model.tolist() == ["deep_sigmoid"]
    assert len(res.layers) == 5 * 7 and res.runs.depth.tolist() == [6]
    init = res.layers[res.layers.step == 0].sort_values("layer_index")
    # Sigmoid layers: the backward signal shrinks towards the input at the model's initialization.
    assert init.backward_rms.iloc[0] < init.backward_rms.iloc[5] / 2
    assert (res.history.step.tolist()[0], res.history.step.tolist()[-1]) == (0, 4)

    out = tmp_path / "out"
    written = diagnose(model, x[:160], y[:160], steps=2, batch_size=16, out=out, report=False)
    assert written.path == out and len(written.runs) == 1 and (out / "variables.parquet").is_file()
    assert json.loads((out / "manifest.json").read_text())["model"]["sha256"] == ""
    # The weights after the first diagnosis are other weights: another run, next to the first.
    again = diagnose(model, x[:160], y[:160], steps=2, batch_size=16, out=out, report=False)
    assert len(again.runs) == 2 and again.runs.weights.nunique() == 2
    # One writer per directory, as for `vgbench run`: nothing is written while another holds it.
    with DirectoryLock(out).acquire():
        with pytest.raises(UsageError, match="being written by another vgbench run"):
            diagnose(model, x[:160], y[:160], steps=1, batch_size=16, out=out, report=False)
    assert len(load_results(out).runs) == 2


def test_an_error_in_training_is_a_failed_run_that_keeps_step_0_as_vgbench_runs_do():
    # diagnose trains through `train.logged_run`, the run of `vgbench run`: same failure record.
    class NoUpdates(keras.optimizers.SGD):
        def apply_gradients(self, grads_and_vars):
            raise RuntimeError("no update today\nsecond line")

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 3, 64)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    model.compile(optimizer=NoUpdates(0.01), loss=_loss())
    res = diagnose(model, x, y, steps=3, batch_size=16)
    (row,) = res.runs.to_dict("records")
    assert (row["status"], row["error"], row["steps"]) == ("failed", "RuntimeError: no update today", 0)
    assert row["wall_time_s"] > 0 and row["git_sha"]  # the provenance of a run
    # What was measured before the failure is kept: step 0 of both layers.
    assert sorted(res.layers.step.unique()) == [0] and res.layers.layer_index.nunique() == 2


@pytest.mark.mnist
def test_bad_input_is_one_line_and_exit_2(saved, mnist_path, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--data", str(mnist_path), "--steps", "1", *TINY, "--out", str(out)]
    _one_line_exit_2(capsys, ["diagnose", str(tmp_path / "nope.keras"), *base], "nope.keras", "does not exist", out=out)
    _one_line_exit_2(capsys, ["diagnose", str(saved / "text.keras"), *base], "Cannot load", "as a Keras model", out=out)
    _one_line_exit_2(capsys, ["diagnose", str(saved / "rgb.keras"), *base], "(None, 32, 32, 3)", "(28, 28, 1)", out=out)
    seq = str(saved / "seq.keras")
    _one_line_exit_2(capsys, ["diagnose", seq, *base, "--loss", "hinje"], "Unknown loss 'hinje'", "hinge", out=out)
    _one_line_exit_2(capsys, ["diagnose", seq, *base, "--optimizer", "adamm"], "sgd, momentum, adam", out=out)
    _one_line_exit_2(capsys, ["diagnose", seq, *base, "--preprocessing", "zca"], "scale, standardize, none", out=out)
    _one_line_exit_2(capsys, ["diagnose", seq, *base, "--learning-rate", "inf"], "learning_rate=inf", out=out)
    _one_line_exit_2(capsys, ["diagnose", seq, *base, "--steps", "-1"], "steps=-1", out=out)
    # A loss that does not fit the model's output: refused before anything is written.
    argv = ["diagnose", seq, *base, "--loss", "categorical_crossentropy"]
    _one_line_exit_2(capsys, argv, "cannot compute its loss", out=out)
    # An .npz of one's own arrays whose examples do not fit.
    npz = tmp_path / "own.npz"
    np.savez(
        npz,
        x_train=np.zeros((8, 5), "float32"),
        y_train=np.zeros(8, "int64"),
        x_test=np.zeros((4, 5), "float32"),
        y_test=np.zeros(4, "int64"),
    )
    _one_line_exit_2(
        capsys,
        ["diagnose", seq, "--dataset", "npz", "--data", str(npz), "--out", str(out)],
        "(None, 784)",
        "(5,)",
        out=out,
    )


def _run_help() -> dict:
    run = next(a for a in make_parser()._subparsers._group_actions if a.dest == "command").choices["run"]
    return {a.dest: a.help for a in run._actions}


def test_run_help_lists_values_syntax_and_the_default_suites_defaults(capsys):
    helps = _run_help()
    for field, value in DEFAULT_SUITE.items():
        assert helps[field].endswith(f"(default: {value})"), (field, helps[field])
    assert "residual(every=2)" in helps["fix"] and "batchnorm+residual(every=2)" in helps["fix"]
    assert "0 = measure at initialization only" in helps["max_steps"]
    assert "local" in helps["executor"] and "ray" in helps["executor"] and "(default: local)" in helps["executor"]
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "--seed LIST, --seeds LIST" in text and "{local,ray}" in text
    # Every option says what it takes or what it does.
    assert all(h for dest, h in helps.items() if dest != "help")


def test_adhoc_run_defaults_are_the_default_suites(capsys):
    assert main(["run", "--activation", "sigmoid", "--seeds", "4", "--dry-run"]) == 0
    ids = capsys.readouterr().out.split()
    assert ids == [RunConfig(**{**DEFAULT_SUITE, "activation": "sigmoid", "seed": 4}).run_id]
    assert ids != [RunConfig(activation="sigmoid", seed=4).run_id]


def test_list_describes_each_fix_in_one_line(capsys):
    assert main(["list", "fixes"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    for name in ("none", "batchnorm", "batchnorm_after", "layernorm", "residual", "clipnorm", "dropout"):
        line = next(line for line in lines if re.match(rf"\s+{name}(\(|\s)", line))
        assert len(line.split(None, 1)[1].split()) >= 5, line


def _python_blocks() -> list[str]:
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    return [b for page in pages for b in re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)]


@pytest.mark.mnist
@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_blocks_run_as_pasted(index, mnist_path, monkeypatch, capsys, tmp_path):
    block = _python_blocks()[index]
    monkeypatch.setenv("VGBENCH_MNIST", str(mnist_path))
    monkeypatch.chdir(REPO_ROOT)
    import pandas as pd

    with pd.option_context("display.max_columns", None, "display.width", 250):
        # `reports/latest` is what `make bench` writes; the committed baseline is a results directory too.
        block = block.replace("/tmp/tb", str(tmp_path / "tb")).replace('"reports/latest"', '"reports/baseline"')
        code = compile(block, f"README.md python block {index}", "exec")
        exec(code, {"__name__": "__readme__"})
    if "kernel_grad_norm" in block:  # a block that prints a per-layer table shows its columns
        assert "kernel_grad_norm" in capsys.readouterr().out


def test_readme_has_its_examples():
    assert len(_python_blocks()) >= 3
