"""Bad input to `vgbench run` is refused up front: one line, exit 2, nothing written, no training.

Each case runs the real command line in-process (`bench.cli.main`) and checks
the message names the bad value and what would be valid; the refusal must be
the same whatever the executor, so the cases run with one and two jobs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from vgbench.bench import data, sizing
from vgbench.bench.cli import main
from vgbench.bench.config import RunConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def _refused(capsys, argv, *fragments, out=None):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("vgbench: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    if out is not None:
        assert not out.exists(), "a refused command must write nothing"
    return err


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--fix", "residual(every=1e999)"], ["every=inf", "must be an integer"]),
        (["--fix", "clipnorm(norm=1e999)"], ["norm=inf", "finite number"]),
        (["--fix", "residual(every=2.7)"], ["every=2.7", "must be an integer"]),
        (["--seeds", "0-999999999"], ["--seeds", "1,000,000,000 values", "more than 100,000"]),
        (["--seeds", "5-2"], ["empty range '5-2'", "LOW <= HIGH"]),
        (["--learning-rate", "inf"], ["learning_rate=inf", "(0, 10]"]),
        (["--learning-rate", "1e308"], ["learning_rate=1e+308", "(0, 10]"]),
        (["--seed", "99999999999"], ["seed=99999999999", "[0, 2147483647]"]),
        (["--seed", "2147483648"], ["seed=2147483648", "[0, 2147483647]"]),
        (["--initializer", "random_normal(stddev=-1)"], ["stddev > 0", "stddev=-1.0"]),
        (["--initializer", "random_uniform(minval=1.0, maxval=0.0)"], ["minval < maxval", "minval=1.0, maxval=0.0"]),
        (["--width", "10000000"], ["width=10000000", "GiB of memory, more than this machine's"]),
        (["--seeds", "0-99999", "--depth", "2,3"], ["200,000 runs", "--yes"]),
    ],
)
def test_bad_values_are_refused_before_any_work(args, fragments, jobs, capsys, tmp_path):
    out = tmp_path / "out"
    _refused(capsys, ["run", *args, "--jobs", jobs, "--out", str(out)], *fragments, out=out)


def test_the_largest_valid_seed_is_accepted(capsys):
    assert main(["run", "--seed", "2147483647", "--dry-run"]) == 0
    assert "s2147483647" in capsys.readouterr().out


def test_a_depth_that_cannot_fit_names_estimate_and_limit(capsys, tmp_path):
    floor = sizing.BASE_BYTES + sizing.BYTES_PER_BLOCK * 100_000
    if floor <= sizing.machine_memory():
        pytest.skip("this machine holds the per-layer overhead of depth 100000")
    out = tmp_path / "out"
    err = _refused(capsys, ["run", "--depth", "100000", "--out", str(out)], "depth=100000", "GiB of memory", out=out)
    limit = f"{sizing.machine_memory() / sizing.GIB:,.1f} GiB"
    assert limit in err


def test_memory_estimate_grows_with_the_model():
    sizes = [(5, 64), (500, 64), (5, 4096)]
    small, deep, wide = (sizing.estimate_memory(RunConfig(depth=d, width=w)) for d, w in sizes)
    assert small < deep and small < wide
    # Weights, gradients and optimizer slots: Adam holds two more copies than SGD.
    sgd, adam = (sizing.estimate_memory(RunConfig(width=2048, optimizer=o)) for o in ("sgd", "adam"))
    from vgbench.models.architectures import count_params

    assert adam - sgd == 2 * 4 * count_params("mlp", depth=20, width=2048)


def test_large_grid_runs_with_yes_after_filtering(capsys):
    # --only narrows a large grid below the threshold: no confirmation needed.
    code = main(["run", "--seeds", "0-10999", "--only", "seed=3", "--dry-run"])
    assert code == 0
    # An ad-hoc run starts from the default suite's settings.
    settings = yaml.safe_load((REPO_ROOT / "bench" / "suites" / "default.yaml").read_text())["defaults"]
    assert capsys.readouterr().out.split() == [RunConfig(**{**settings, "seed": 3}).run_id]


def test_long_names_are_echoed_shortened(capsys, tmp_path):
    name = "x" * 100_000
    for args in (["run", "--activation", name], ["run", "--fix", name], ["run", "--only", name], [name]):
        err = _refused(capsys, [*args, "--out", str(tmp_path / "o")] if args[0] == "run" else args, "…(1000")
        assert len(err) < 600, len(err)
    err = _refused(capsys, ["run", "--initializer", f"random_normal({name}=1)"], "chars)", "valid parameters: mean")
    assert len(err) < 600


def _suite(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("grids:\n  - fix: [[batchnorm]]\n", ["field 'fix' takes a value or a list of values", "[['batchnorm']]"]),
        ("defaults: {learning_rate: .inf}\n", ["learning_rate=inf", "(0, 10]"]),
        ("grids: []\n", ["`grids` is an empty list"]),
        ("grids:\n  - depth: []\n", ["field 'depth' is an empty list"]),
        ("grids:\n  - activation: {relu: 1}\n", ["field 'activation' takes a value"]),
        (b"description: caf\xe9\ngrids: [{}]\n", ["is not UTF-8 text", "byte 0xe9 at offset 16"]),
    ],
)
def test_bad_suite_files_are_refused(text, fragments, tmp_path, capsys):
    out = tmp_path / "out"
    _refused(capsys, ["run", "--suite", _suite(tmp_path, text), "--out", str(out)], *fragments, out=out)


def test_keras_imported_before_vgbench_warns_once():
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"

    def stderr_of(code, **extra):
        proc = subprocess.run(
            [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, env={**env, **extra}
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    late = stderr_of("import tensorflow, vgbench, vgbench.bench.cli")
    assert late.count("TensorFlow was imported before vgbench") == 1
    assert "TF_ENABLE_ONEDNN_OPTS=0" in late
    assert "imported before vgbench" not in stderr_of("import vgbench, tensorflow")
    # The variable set by the user before TensorFlow starts is what counts.
    assert "imported before vgbench" not in stderr_of("import tensorflow, vgbench", TF_ENABLE_ONEDNN_OPTS="0")


# --- Data: checked in this process before any executor starts --------------------


def _huge_header_npz(path):
    """An .npz whose x_train header declares a 730 GiB array over a few bytes of data."""
    small = {
        "y_train": np.zeros(3, np.uint8),
        "x_test": np.zeros((2, 28, 28), np.uint8),
        "y_test": np.zeros(2, np.uint8),
    }
    with zipfile.ZipFile(path, "w") as zf:
        header = {"descr": "|u1", "fortran_order": False, "shape": (1_000_000_000, 28, 28)}
        with zf.open("x_train.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, header)
            member.write(b"\0" * 64)
        for key, value in small.items():
            with zf.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, value)
    return path


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_npz_declaring_a_huge_array_is_a_data_error(tmp_path, capsys, jobs):
    path = _huge_header_npz(tmp_path / "huge.npz")
    out = tmp_path / "out"
    _refused(
        capsys,
        ["run", "--data", str(path), "--max-steps", "0", "--jobs", jobs, "--out", str(out)],
        "huge.npz",
        "x_train declares shape (1000000000, 28, 28) of uint8 (730.2 GiB) but holds 64 bytes",
        out=out,
    )


@pytest.mark.mnist
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sample_counts_are_checked_against_the_dataset(mnist_path, tmp_path, capsys, jobs):
    out = tmp_path / "out"
    argv = ["run", "--data", str(mnist_path), "--max-steps", "0", "--jobs", jobs, "--out", str(out)]
    _refused(capsys, [*argv, "--train-samples", "1000000000"], "train_samples=1000000000", "expected 1..60000", out=out)
    _refused(capsys, [*argv, "--test-samples", "10001"], "test_samples=10001", "expected 1..10000", out=out)


@pytest.mark.mnist
def test_another_standard_dataset_is_refused_unless_asked_for(mnist_path, tmp_path, capsys):
    out = tmp_path / "out"
    mnist_sum = data.data_checksum(data.KNOWN_CHECKSUMS["mnist"])
    fashion_sum = data.data_checksum(data.KNOWN_CHECKSUMS["fashion_mnist"])
    argv = ["run", "--dataset", "fashion_mnist", "--data", str(mnist_path), "--max-steps", "0", "--out", str(out)]
    _refused(
        capsys,
        argv,
        "holds MNIST, not Fashion-MNIST",
        f"expected checksum {fashion_sum[:16]}",
        f"found {mnist_sum[:16]}",
        "--allow-nonstandard-data",
        out=out,
    )
    tiny = ["--depth", "2", "--width", "8", "--train-samples", "256", "--test-samples", "128", "--jobs", "1"]
    with pytest.warns(data.NonStandardDataWarning):
        code = main([*argv, *tiny, "--allow-nonstandard-data", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["name"] == "fashion_mnist"
    assert manifest["data"]["checksum"] == mnist_sum
    assert manifest["data"]["standard"] is False and manifest["data"]["nonstandard_allowed"] is True
    assert data.ALLOW_NONSTANDARD_ENV not in os.environ  # the flag does not outlive the command


def test_same_layout_other_contents_is_refused_but_a_subset_is_not(tmp_path):
    rng = np.random.default_rng(0)
    full = {
        "x_train": rng.integers(0, 256, (60_000, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(60_000) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (10_000, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(10_000) % 10).astype(np.uint8),
    }
    np.savez(tmp_path / "full.npz", **full)
    with pytest.raises(data.DataError, match="has the layout of MNIST but other contents: expected checksum"):
        data.load_dataset("mnist", tmp_path / "full.npz", allow_nonstandard=False)
    with pytest.warns(data.NonStandardDataWarning):
        ds = data.load_dataset("mnist", tmp_path / "full.npz", allow_nonstandard=True)
    assert ds.nonstandard_allowed and data.describe(ds)["nonstandard_allowed"] is True
    subset = {k: v[:100] for k, v in full.items()}
    np.savez(tmp_path / "subset.npz", **subset)
    with pytest.warns(data.NonStandardDataWarning):
        ds = data.load_dataset("mnist", tmp_path / "subset.npz", allow_nonstandard=False)
    assert ds.n_train == 100 and "nonstandard_allowed" not in data.describe(ds)


@pytest.mark.parametrize("command", ["report", "compare"])
def test_manifest_that_is_not_utf8_is_one_line(command, tmp_path, capsys):
    results = tmp_path / "res"
    (results / "runs").mkdir(parents=True)
    (results / "manifest.json").write_bytes(b'{"suite": "caf\xe9"}')
    argv = ["report", str(results)] if command == "report" else ["compare", str(results), str(results)]
    _refused(capsys, argv, "manifest.json", "UTF-8")
