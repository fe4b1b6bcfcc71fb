"""Tests for bench.ray_executor on a real local Ray instance (no mocks).

Each Ray suite run starts its own local instance through `run_suite`, as
``vgbench run --executor ray`` does, so the tests cover starting, sizing and
shutting down Ray, not only the task loop. The smoke suite runs twice on Ray
(a clean run, and one whose worker is killed) and once on the local
executor.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from vgbench.bench import suites
from vgbench.bench.errors import UsageError
from vgbench.bench.executors import ray as ray_executor
from vgbench.bench.results import load_results
from vgbench.bench.runner import run_suite

# Tight: the executors run the same ops with the same thread count, so the
# numbers agree to the last bit here; the margin only absorbs platforms whose
# kernels are not bitwise reproducible across processes.
RTOL = 1e-5


def _smoke():
    return suites.expand(suites.load_suite("smoke"))


def _ray():
    # Imported per test: the missing-Ray test must run without Ray.
    return pytest.importorskip("ray")


def _run_ray(out, mnist_path, monkeypatch, fault_dir):
    ray = _ray()
    # The local Ray instance (and so its workers) inherit the driver's
    # environment when run_suite starts it.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(ray_executor.FAULT_DIR_ENV, str(fault_dir))
    summary = run_suite(_smoke(), out, executor="ray", jobs=2, data_path=mnist_path, suite="smoke", progress=False)
    assert not ray.is_initialized()  # run_suite shut down the instance it started
    return summary


@pytest.fixture(scope="module")
def clean_ray(tmp_path_factory, mnist_path):
    """The smoke suite run once on Ray with no fault: (results dir, summary)."""
    out = tmp_path_factory.mktemp("ray_clean") / "results"
    fault_dir = tmp_path_factory.mktemp("no_faults")
    with pytest.MonkeyPatch.context() as mp:
        summary = _run_ray(out, mnist_path, mp, fault_dir)
    return out, summary


def _assert_same_results(a, b):
    ra, rb = load_results(a), load_results(b)
    runs_a = ra.runs.sort_values("run_id").reset_index(drop=True)
    runs_b = rb.runs.sort_values("run_id").reset_index(drop=True)
    assert list(runs_a.run_id) == list(runs_b.run_id)
    assert list(runs_a.status) == list(runs_b.status)
    assert list(runs_a.steps) == list(runs_b.steps)
    assert list(runs_a.data_checksum) == list(runs_b.data_checksum)
    for col in ("test_accuracy", "test_loss"):
        np.testing.assert_allclose(runs_a[col], runs_b[col], rtol=RTOL, atol=0, err_msg=col)
    keys = ["run_id", "step", "layer_index"]
    layers_a = ra.layers.sort_values(keys).reset_index(drop=True)
    layers_b = rb.layers.sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(layers_a[keys], layers_b[keys])
    np.testing.assert_allclose(layers_a.kernel_grad_norm, layers_b.kernel_grad_norm, rtol=RTOL, atol=0)


@pytest.mark.mnist
@pytest.mark.slow
def test_ray_matches_local_executor(clean_ray, tmp_path, mnist_path):
    ray_out, ray_summary = clean_ray
    configs = _smoke()
    assert ray_summary.done == len(configs) and ray_summary.skipped == 0
    assert set(ray_summary.statuses.values()) == {"ok"}

    # Ray gives each task 1 CPU, hence 1 TensorFlow thread. The local pool
    # gives each worker cores // jobs threads, so jobs = cores makes that 1
    # too: a different thread count changes float reduction order (~1e-8).
    local_out = tmp_path / "local"
    run_suite(
        configs, local_out, executor="local", jobs=os.cpu_count(), data_path=mnist_path, suite="smoke", progress=False
    )
    _assert_same_results(ray_out, local_out)

    # Resuming finds every run done and starts no Ray instance.
    again = run_suite(configs, ray_out, executor="ray", jobs=2, data_path=mnist_path, suite="smoke", progress=False)
    assert (again.skipped, again.done) == (len(configs), 0)
    assert not _ray().is_initialized()


@pytest.mark.mnist
@pytest.mark.slow
def test_killed_worker_is_retried_without_loss_or_duplicates(clean_ray, tmp_path, mnist_path, monkeypatch):
    configs = _smoke()
    victim = configs[-1].run_id
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    (fault_dir / f"{victim}.kill").touch()  # the task's first attempt SIGKILLs its worker

    out = tmp_path / "results"
    summary = _run_ray(out, mnist_path, monkeypatch, fault_dir)

    # The kill happened (the attempt consumed the marker), and a later attempt
    # of the same task produced the run: the dead worker returned nothing.
    assert (fault_dir / f"{victim}.killed").exists()
    assert not (fault_dir / f"{victim}.kill").exists()
    assert summary.done == len(configs)
    assert summary.statuses == {c.run_id: "ok" for c in configs}

    runs_dir = out / "runs"
    assert sorted(p.name for p in runs_dir.iterdir()) == sorted(c.run_id for c in configs)  # no leftovers
    res = load_results(out)
    assert sorted(res.runs.run_id) == sorted(c.run_id for c in configs)
    assert not res.layers.duplicated(["run_id", "step", "layer_index"]).any()
    assert not res.history.duplicated(["run_id", "step"]).any()
    _assert_same_results(clean_ray[0], out)


@pytest.mark.mnist
@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_unreachable_address_is_one_line_exit_2(address, tmp_path, mnist_path):
    _ray()
    cmd = [
        sys.executable,
        "-m",
        "vgbench",
        "run",
        "--suite",
        "smoke",
        "--executor",
        "ray",
        "--address",
        address,
        "--data",
        str(mnist_path),
        "--out",
        str(tmp_path / "out"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vgbench:")]
    assert len(lines) == 1, proc.stderr
    assert address in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "runs").exists()


def test_missing_ray_is_a_usage_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(UsageError, match=r"Ray is not installed: pip install 'vgbench\[ray\]'"):
        ray_executor.run_on_ray(_smoke(), tmp_path, datasets={}, summary=None)


def test_datasets_the_driver_did_not_pass_are_loaded(monkeypatch, tmp_path):
    _ray()
    from vgbench.bench import data

    loaded = []
    monkeypatch.setattr(data, "load_dataset", lambda name, path: loaded.append((name, path)))

    class Connected(Exception):
        pass

    def connect(*args):
        raise Connected  # the data is ready by then; stop before starting Ray

    monkeypatch.setattr(ray_executor, "_connect", connect)
    todo = _smoke()
    with pytest.raises(Connected):
        ray_executor.run_on_ray(todo, tmp_path, datasets={"other": None}, data_path="x", summary=None)
    assert loaded == [(name, "x") for name in sorted({c.dataset for c in todo})]


def test_task_slots_fit_the_cluster():
    assert ray_executor._task_slots({"CPU": 8.0}, 2, 0) == 4
    assert ray_executor._task_slots({"CPU": 8.0, "GPU": 1.0}, 1, 0.5) == 2


@pytest.mark.parametrize(
    "resources, cpus, gpus, message",
    [
        ({"CPU": 2.0}, 4, 0, "cpus_per_task=4 but the cluster has 2 CPU"),
        ({"CPU": 8.0}, 1, 1, "gpus_per_task=1 but the cluster has 0 GPU"),
    ],
)
def test_a_task_that_fits_nowhere_is_a_usage_error(resources, cpus, gpus, message):
    # Ray would wait for the resources forever.
    with pytest.raises(UsageError, match=message):
        ray_executor._task_slots(resources, cpus, gpus)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "ray://", "host:port"],
)
def test_malformed_address_is_a_usage_error(address):
    with pytest.raises(UsageError, match="Invalid Ray address"):
        ray_executor._probe(address)
