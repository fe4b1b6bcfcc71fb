"""Bad input to the newer commands (theory, diagnose, suites, compare's reports) is one line, the right exit status.

Each case runs the real command line in-process (`bench.cli.main`) on real
Keras models saved to disk and tiny arrays of one's own (``--dataset npz``):
bad input is exit 2 with one line naming the bad value and nothing written; a
diagnosis whose run failed at runtime is exit 1 with the error's first line.
"""

from __future__ import annotations

from pathlib import Path

import vgbench  # noqa: F401  (before keras: portable numerics)

# isort: split
import keras
import numpy as np
import pytest

from vgbench.bench import suites
from vgbench.bench.cli import MAX_THEORY_DEPTH, main

REPO_ROOT = Path(__file__).resolve().parents[2]
BASELINE = REPO_ROOT / "reports" / "baseline"
N_TRAIN, N_TEST, FEATURES = 64, 16, 12


def _one_line(capsys, argv, code, *fragments, out=None):
    """Runs the CLI; checks the exit status, one error line naming ``fragments``, and that ``out`` was not made."""
    assert main(argv) == code
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("vgbench: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    if out is not None:
        assert not Path(out).exists(), "bad input must write nothing"
    return captured


def _model(name, layers, trainable=True):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((FEATURES,)), *layers], name=name)
    model.trainable = trainable
    model.compile(
        optimizer=keras.optimizers.SGD(0.01), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def _npz(path, x_train=None, y_train=None):
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.normal(size=(N_TRAIN, FEATURES)).astype("float32") if x_train is None else x_train,
        y_train=rng.integers(0, 3, N_TRAIN) if y_train is None else y_train,
        x_test=rng.normal(size=(N_TEST, FEATURES)).astype("float32"),
        y_test=rng.integers(0, 3, N_TEST),
    )
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Saved models (good, frozen, weightless, empty, truncated) and .npz arrays (good, NaN inputs, a bad label)."""
    root = tmp_path_factory.mktemp("trust")
    _model("good", [keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]).save(root / "good.keras")
    frozen = [keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    _model("frozen", frozen, trainable=False).save(root / "frozen.keras")
    _model("weightless", [keras.layers.Activation("relu")]).save(root / "weightless.keras")
    whole = (root / "good.keras").read_bytes()
    (root / "truncated.keras").write_bytes(whole[: len(whole) // 2])
    (root / "empty.keras").write_bytes(b"")
    _npz(root / "good.npz")
    nan = np.full((N_TRAIN, FEATURES), np.nan, "float32")
    nan[0, 0] = 1.0
    _npz(root / "nan.npz", x_train=nan)
    # Labels 0..2 for the three logits, but the last example's is 99: the step-0 batch
    # (the first examples) computes its loss, a training step over the last one fails.
    labels = np.zeros(N_TRAIN, "int64")
    labels[-1] = 99
    _npz(root / "badlabel.npz", y_train=labels)
    return root


def _diagnose(files, model, npz, tmp_path, *more):
    out = tmp_path / "out"
    argv = ["diagnose", str(files / model), "--dataset", "npz", "--data", str(files / npz), "--no-report"]
    return [*argv, "--out", str(out), *more], out


# 1. theory: a depth bound instead of a recursion that fills the memory.
def test_theory_depth_is_bounded(capsys):
    argv = ["theory", "--activation", "relu", "--initializer", "he_normal", "--depth", "100000000"]
    _one_line(capsys, argv, 2, "--depth", f"{MAX_THEORY_DEPTH:,}", "depth=100000000")
    argv[-1] = str(MAX_THEORY_DEPTH)
    assert main(argv) == 0
    assert "relu" in capsys.readouterr().out


# 2, 3. diagnose: a model with nothing to train is bad input.
@pytest.mark.parametrize(
    "model, fragment", [("frozen.keras", "are frozen (trainable=False)"), ("weightless.keras", "it has no weights")]
)
def test_diagnose_refuses_a_model_without_trainable_weights(files, tmp_path, capsys, model, fragment):
    argv, out = _diagnose(files, model, "good.npz", tmp_path, "--steps", "2", "--batch-size", "16")
    _one_line(capsys, argv, 2, "no trainable weights", fragment, out=out)


# 4. diagnose: sizes that cannot fit are refused as `vgbench run` refuses them; a run that fails is exit 1.
def test_diagnose_refuses_steps_and_batch_size_that_cannot_fit(files, tmp_path, capsys):
    argv, out = _diagnose(files, "good.keras", "good.npz", tmp_path, "--steps", "1000000000000")
    _one_line(capsys, [*argv, "--batch-size", "1000000000"], 2, "batch_size=1000000000", "GiB of memory", out=out)
    _one_line(capsys, argv, 2, "steps=1000000000000", "more than this machine's", out=out)


def test_a_diagnosis_whose_run_failed_exits_1_with_the_error(files, tmp_path, capsys):
    argv, out = _diagnose(files, "good.keras", "badlabel.npz", tmp_path, "--steps", "8", "--batch-size", "16")
    # The error's first line, as the run records it (TensorFlow's: its type and "Graph execution error").
    captured = _one_line(capsys, argv, 1, "the diagnosis failed: InvalidArgumentError")
    assert "failed" in captured.out  # the summary still tells of the run, which is kept
    assert (out / "runs.parquet").is_file()


# 5. Non-finite inputs are refused when the data is checked, naming the array and the count.
def test_non_finite_inputs_are_refused_at_the_data_check(files, tmp_path, capsys):
    argv, out = _diagnose(files, "good.keras", "nan.npz", tmp_path, "--steps", "2")
    size = N_TRAIN * FEATURES
    _one_line(capsys, argv, 2, "x_train of ", f"{size - 1:,} non-finite values", f"among its {size:,}", out=out)


# 6, 7. A bare name is a shipped suite, whatever the working directory holds; a path is a file.
@pytest.mark.parametrize("name, folder", [("ci", False), ("claims", True)])
def test_a_bare_suite_name_is_the_shipped_suite(name, folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if folder:
        (tmp_path / name).mkdir()
    else:
        (tmp_path / name).write_text("not: [a suite\n")
    with pytest.warns(suites.SuiteChoiceWarning, match=f"using the shipped suite '{name}'"):
        assert main(["run", "--suite", name, "--dry-run"]) == 0
    shipped = suites.expand(suites.shipped_suite(name))
    assert capsys.readouterr().out.split() == [c.run_id for c in shipped]
    # The same name as a path is the file or folder here.
    what = "is a folder" if folder else "Cannot read suite file"
    _one_line(capsys, ["run", "--suite", f"./{name}", "--dry-run"], 2, f"'{name}'", what)


def test_a_bare_name_that_is_no_shipped_suite_points_to_the_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").write_text("grids: [{}]\n")
    _one_line(capsys, ["run", "--suite", "mine", "--dry-run"], 2, "Unknown suite 'mine'", "write ./mine")
    assert main(["run", "--suite", "./mine", "--dry-run"]) == 0


# 8. Messages that name the real problem.
@pytest.mark.parametrize(
    "model, fragment",
    [("empty.keras", "the file is empty (0 bytes)"), ("truncated.keras", "not a complete .keras zip archive")],
)
def test_an_empty_or_truncated_model_file_is_not_called_missing(files, tmp_path, capsys, model, fragment):
    argv, out = _diagnose(files, model, "good.npz", tmp_path, "--steps", "2")
    err = _one_line(capsys, argv, 2, model, fragment, out=out).err
    assert "not found" not in err.lower()


def test_compare_checks_report_paths_before_printing(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    junit = tmp_path / "afile" / "x.xml"
    argv = ["compare", str(BASELINE), str(BASELINE), "--junit", str(junit)]
    captured = _one_line(capsys, argv, 2, str(junit), f"{str(tmp_path / 'afile')!r} is a file, not a folder")
    assert captured.out == "", "nothing is printed before the bad path is refused"
