"""`vgbench run` end to end on real MNIST: tables, resume, kill and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from vgbench.bench import suites
from vgbench.bench.cli import main
from vgbench.bench.config import CONFIG_FIELDS, RunConfig
from vgbench.bench.results import HISTORY_COLUMNS, LAYER_COLUMNS, RUN_OUTCOME_COLUMNS

pytestmark = pytest.mark.mnist


def _vgbench(*args, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "vgbench", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, mnist_path):
    """The smoke suite, run once through the CLI with two worker processes."""
    out = tmp_path_factory.mktemp("smoke")
    proc = _vgbench("run", "--suite", "smoke", "--data", mnist_path, "--out", out, "--jobs", 2)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_smoke_suite_writes_the_contract_tables(smoke):
    out, proc = smoke
    expected = {c.run_id for c in suites.expand(suites.load_suite("smoke"))}
    assert "4 runs" in proc.stdout and "4 ran" in proc.stdout
    runs = pd.read_parquet(out / "runs.parquet")
    layers = pd.read_parquet(out / "layers.parquet")
    history = pd.read_parquet(out / "history.parquet")
    assert set(runs.run_id) == expected
    for col in ["run_id", *CONFIG_FIELDS, *RUN_OUTCOME_COLUMNS]:
        assert col in runs.columns, col
    assert list(layers.columns[: len(LAYER_COLUMNS)]) == LAYER_COLUMNS
    assert list(history.columns[: len(HISTORY_COLUMNS)]) == HISTORY_COLUMNS
    assert (runs.status == "ok").all()
    assert (runs.steps == 20).all()
    # Every run: step 0 and steps 1..20 for 6 hidden layers + output.
    per_run = layers.groupby("run_id").size()
    assert (per_run == 21 * 7).all()
    # The vanishing pair is visible even in the smoke suite.
    init = layers[(layers.step == 0) & (layers.layer_name != "output")]
    ratio = init.groupby("run_id").apply(
        lambda g: (
            g.sort_values("layer_index").kernel_grad_norm.iloc[0]
            / g.sort_values("layer_index").kernel_grad_norm.iloc[-1]
        ),
        include_groups=False,
    )
    sig = [r for r in ratio.index if "sigmoid-glorot_uniform" in r][0]
    relu = [r for r in ratio.index if "relu-he_normal" in r][0]
    assert ratio[sig] < 0.01 < ratio[relu]
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("schema_version", "suite", "command", "created", "git_sha", "packages", "platform", "data"):
        assert key in manifest, key
    assert manifest["suite"] == "smoke"
    assert manifest["data"]["standard"] is True
    assert set(runs.data_checksum) == {manifest["data"]["checksum"]}
    # Each run carries the provenance of the process that trained it.
    assert set(runs.git_sha) == {manifest["git_sha"]}
    assert set(runs.keras_version) == {manifest["packages"]["keras"]}
    assert "tensorflow-cpu" in manifest["packages"] or "tensorflow" in manifest["packages"]
    # Atomic writes go through private temporary files; results end up with the usual modes.
    umask = os.umask(0)
    os.umask(umask)
    for path in (out / "runs.parquet", out / "manifest.json", next((out / "runs").iterdir()) / "result.json"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    assert next((out / "runs").iterdir()).stat().st_mode & 0o777 == 0o777 & ~umask


def test_second_invocation_does_no_work(smoke, mnist_path):
    out, _ = smoke
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    proc = _vgbench("run", "--suite", "smoke", "--data", mnist_path, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "4 already done, 0 ran" in proc.stdout
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}


def test_killed_suite_resumes_and_matches_a_clean_run(smoke, mnist_path, tmp_path):
    clean, _ = smoke
    out = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "vgbench",
        "run",
        "--suite",
        "smoke",
        "--data",
        str(mnist_path),
        "--out",
        str(out),
        "--jobs",
        "1",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # Kill it while the second run is in flight: one run done, one half-written at most.
    deadline = time.time() + 240
    while time.time() < deadline:
        done = [p for p in (out / "runs").glob("*") if not p.name.startswith(".")] if (out / "runs").is_dir() else []
        if done:
            break
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [p.name for p in (out / "runs").iterdir() if not p.name.startswith(".")]
    assert 1 <= len(finished) < 4
    resumed = _vgbench("run", "--suite", "smoke", "--data", mnist_path, "--out", out, "--jobs", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(finished)} already done, {4 - len(finished)} ran" in resumed.stdout
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".")]  # no partial leftovers
    # Same config + seed → same numbers, whether interrupted or not.
    a = pd.read_parquet(clean / "layers.parquet").sort_values(["run_id", "step", "layer_index"]).reset_index(drop=True)
    b = pd.read_parquet(out / "layers.parquet").sort_values(["run_id", "step", "layer_index"]).reset_index(drop=True)
    assert len(a) == len(b)
    num = ["kernel_grad_norm", "bias_grad_norm", "act_mean", "dead_fraction"]
    np.testing.assert_allclose(a[num].to_numpy(), b[num].to_numpy(), rtol=1e-4, equal_nan=True)
    ra = pd.read_parquet(clean / "runs.parquet").set_index("run_id").sort_index()
    rb = pd.read_parquet(out / "runs.parquet").set_index("run_id").sort_index()
    np.testing.assert_allclose(ra.test_loss, rb.test_loss, rtol=1e-4)


def test_grid_options_and_dry_run(capsys):
    code = main(
        ["run", "--activation", "relu,leaky_relu(negative_slope=0.1)", "--depth", "2-4", "--seeds", "0,1", "--dry-run"]
    )
    assert code == 0
    ids = capsys.readouterr().out.split()
    assert len(ids) == 2 * 3 * 2
    assert any("leaky_relu_negative_slope_0.1" in i for i in ids)
    code = main(["run", "--suite", "smoke", "--only", "activation=relu", "--dry-run"])
    assert code == 0
    assert len(capsys.readouterr().out.split()) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--activation", "sigmod"], "Did you mean 'sigmoid'"),
        (["run", "--initializer", "he_normall"], "he_normal"),
        (["run", "--depth", "0"], "depth=0"),
        (["run", "--depth", "ten"], "'ten'"),
        (["run", "--fix", "batchnrom"], "Valid fixes"),
        (["run", "--learning-rate", "-1"], "learning_rate=-1.0"),
        (["run", "--suite", "nope"], "Valid suites: ci, claims, default"),
        (["run", "--dataset", "cifar"], "mnist, fashion_mnist, gaussian, tfds:NAME"),
        (["run", "--jobs", "0"], "jobs=0"),
        (["run", "--executor", "slurm", "--max-steps", "0"], "Valid executors: local, ray"),
        (["run", "--only", "colour=red"], "colour"),
        (["list", "everything"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path):
    code = main([*args, "--out", str(tmp_path / "out")] if args[0] == "run" else args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.startswith("vgbench: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_bad_files_are_one_line_and_exit_2(tmp_path, capsys, mnist_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("grids: [activation: [relu\n")
    unknown_field = tmp_path / "field.yaml"
    unknown_field.write_text("defaults: {colour: red}\n")
    other_schema = tmp_path / "other"
    other_schema.mkdir()
    (other_schema / "manifest.json").write_text(json.dumps({"schema_version": 999}))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cases = [
        (["--suite", str(bad_yaml)], "Cannot read suite file"),
        (["--suite", str(unknown_field)], "unknown field 'colour'"),
        (["--suite", str(tmp_path / "missing.yaml")], "does not exist"),
        (["--out", str(other_schema), "--max-steps", "0", "--data", str(mnist_path)], "schema_version=999"),
        (["--out", str(foreign), "--max-steps", "0", "--data", str(mnist_path)], "holds no vgbench results"),
        (["--data", str(tmp_path / "nope.npz"), "--max-steps", "0", "--out", str(tmp_path / "o")], "nope.npz"),
    ]
    for args, message in cases:
        code = main(["run", *args])
        err = capsys.readouterr().err
        assert code == 2, args
        assert message in err, (args, err)
        assert err.count("\n") == 1
    # Nothing was written into the directories that were refused.
    assert sorted(p.name for p in other_schema.iterdir()) == ["manifest.json"]
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_run_config_round_trip_and_stable_id():
    c = RunConfig(activation="ReLU", initializer="KAIMING_NORMAL", fix="residual+batchnorm", depth=7)
    assert c.initializer == "he_normal"
    assert c.fix == "batchnorm+residual(every=2)"
    assert RunConfig.from_dict(c.to_dict()) == c
    assert RunConfig.from_dict(c.to_dict()).run_id == c.run_id
    # Identical across processes (no hash randomization in the id).
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "from vgbench.bench.config import RunConfig as R; "
            "print(R(activation='relu', initializer='he_normal', fix='batchnorm+residual', depth=7).run_id)",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert other.stdout.strip() == c.run_id
    assert c.replace(seed=1).run_id != c.run_id
    with pytest.raises(ValueError, match=r"Argument `depth` must be a positive integer. Received: depth=0"):
        RunConfig(depth=0)
    with pytest.raises(ValueError, match="Unknown RunConfig field 'detph'"):
        RunConfig.from_dict({"detph": 3})


def test_tensorboard_option_writes_each_runs_events_and_the_variables_table(tmp_path, mnist_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, tb = tmp_path / "out", tmp_path / "tb"
    args = ["run", "--activation", "relu,tanh", "--depth", "2", "--width", "8", "--max-steps", "3", "--act-every", "2"]
    args += ["--train-samples", "512", "--test-samples", "256", "--data", str(mnist_path), "--jobs", "1"]
    assert main([*args, "--out", str(out), "--tensorboard", str(tb)]) == 0
    runs = pd.read_parquet(out / "runs.parquet")
    layers = pd.read_parquet(out / "layers.parquet")
    variables = pd.read_parquet(out / "variables.parquet")
    assert sorted(p.name for p in tb.iterdir()) == sorted(runs.run_id)
    # kernel and bias of 2 hidden layers and the output, steps 0..3
    assert (variables.groupby("run_id").size() == 6 * 4).all()
    for run_id in runs.run_id:
        acc = EventAccumulator(str(tb / run_id), size_guidance={"scalars": 0, "histograms": 0})
        acc.Reload()
        table = layers[(layers.run_id == run_id) & (layers.layer_name == "hidden_1")]
        events = acc.Scalars("backward_rms/hidden_1")
        assert [e.step for e in events] == table.step.tolist() == [0, 1, 2, 3]
        np.testing.assert_allclose([e.value for e in events], table.backward_rms, rtol=1e-6)
        assert [h.step for h in acc.Histograms("grad_log10/output")] == [0, 2]
    # A --tensorboard path that cannot be created: one line, exit 2, nothing lost.
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    assert main([*args, "--out", str(out), "--tensorboard", str(tmp_path / "file" / "tb")]) == 2
    err = capsys.readouterr().err
    assert "--tensorboard" in err and err.count("\n") == 1
    assert len(pd.read_parquet(out / "runs.parquet")) == 2
