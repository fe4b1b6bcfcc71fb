"""Populations (`bench.population`): many runs as one vmapped JAX step, each replica equal to its run alone.

This process runs Keras on TensorFlow (Keras reads its backend once, at
import); the JAX side runs in one subprocess with ``KERAS_BACKEND=jax``
(`_JAX_SCRIPT`), which trains populations and the same runs alone and hands
back every record's tables as parquet files and its result as JSON. The
suite-level tests (resume, Ray) go through `run_suite`, whose worker
processes start on JAX.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras  # noqa: F401  (Keras on TensorFlow here: the JAX runs train in worker processes)
import numpy as np
import pandas as pd
import pytest

from vgbench.bench import population, sizing
from vgbench.bench.config import RunConfig
from vgbench.bench.errors import UsageError
from vgbench.bench.results import load_results, run_dir
from vgbench.bench.runner import run_suite

REPO_ROOT = Path(__file__).resolve().parents[2]

# The population of the issue: a depth-5 ReLU MLP, 3 seeds × 3 learning rates.
SEEDS = (0, 1, 2)
LEARNING_RATES = (0.003, 0.01, 0.03)
STEPS = 100
BASE = dict(
    depth=5,
    width=32,
    activation="relu",
    batch_size=32,
    max_steps=STEPS,
    epochs=2,
    train_samples=640,
    test_samples=512,
    backend="jax",
    log_every=1,
    act_every=10,
)
# A learning rate at which this MLP's loss overflows within a few steps.
DIVERGING_LR = 10.0


def _grid():
    return [RunConfig(**BASE, seed=s, learning_rate=lr) for s in SEEDS for lr in LEARNING_RATES]


def _diverging():
    """One replica that diverges between two that do not (one of them also in `_grid`)."""
    return [
        RunConfig(**BASE, seed=0, learning_rate=0.01),
        RunConfig(**BASE, seed=1, learning_rate=DIVERGING_LR),
        RunConfig(**BASE, seed=2, learning_rate=0.03),
    ]


_JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import vgbench
    from vgbench.bench import data as data_mod
    from vgbench.bench.config import RunConfig
    from vgbench.bench.population import train_population
    from vgbench.bench.train import train_run

    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    data = data_mod.load_dataset("mnist", spec["data"])

    def save(kind, name, record):
        d = out / kind / name
        d.mkdir(parents=True)
        record.layers.to_parquet(d / "layers.parquet")
        record.history.to_parquet(d / "history.parquet")
        record.variables.to_parquet(d / "variables.parquet")
        (d / "result.json").write_text(json.dumps({k: v for k, v in record.result.items() if k != "traceback"}))

    alone = {}
    for name, dicts in spec["populations"].items():
        configs = [RunConfig.from_dict(d) for d in dicts]
        for config, record in zip(configs, train_population(configs, data=data)):
            save(name, config.run_id, record)
        for config in configs:
            if config.run_id not in alone:
                alone[config.run_id] = train_run(config, data=data)
                save("alone", config.run_id, alone[config.run_id])
    """
)


def _read(d: Path):
    return {
        "layers": pd.read_parquet(d / "layers.parquet"),
        "history": pd.read_parquet(d / "history.parquet"),
        "variables": pd.read_parquet(d / "variables.parquet"),
        "result": json.loads((d / "result.json").read_text()),
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_path):
    """Runs `_JAX_SCRIPT` once: {population name: {run_id: tables}}, and "alone" for every run trained alone."""
    tmp = tmp_path_factory.mktemp("population")
    spec = {
        "data": str(mnist_path),
        "populations": {
            "grid": [c.to_dict() for c in _grid()],
            "diverging": [c.to_dict() for c in _diverging()],
        },
    }
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    proc = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT, str(tmp / "spec.json"), str(tmp / "out")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {kind.name: {d.name: _read(d) for d in kind.iterdir()} for kind in (tmp / "out").iterdir()}


# --------------------------------------------------------------------------- #
# Equal to training alone
# --------------------------------------------------------------------------- #


@pytest.mark.mnist
@pytest.mark.slow
def test_every_replica_has_its_own_run_id_tables_and_columns(trained):
    grid, alone = trained["grid"], trained["alone"]
    assert sorted(grid) == sorted(c.run_id for c in _grid())
    for run_id, pop in grid.items():
        solo = alone[run_id]
        for table in ("layers", "history", "variables"):
            assert list(pop[table].columns) == list(solo[table].columns), table
            assert set(pop[table].run_id) == {run_id}
            assert len(pop[table]) == len(solo[table]), (run_id, table)
        assert pop["result"]["status"] == solo["result"]["status"] == "ok"
        assert pop["result"]["steps"] == solo["result"]["steps"] == STEPS
        assert pop["result"]["population_size"] == len(SEEDS) * len(LEARNING_RATES)
        pd.testing.assert_frame_equal(
            pop["layers"][["step", "epoch", "layer_index", "layer_name"]],
            solo["layers"][["step", "epoch", "layer_index", "layer_name"]],
        )


@pytest.mark.mnist
@pytest.mark.slow
def test_step_zero_quantities_equal_the_run_alone(trained):
    grid, alone = trained["grid"], trained["alone"]
    checked = 0
    for run_id, pop in grid.items():
        a = alone[run_id]["layers"].query("step == 0")
        p = pop["layers"].query("step == 0")
        for column in a.columns:
            if a[column].dtype.kind == "f":
                np.testing.assert_allclose(p[column], a[column], rtol=1e-4, atol=1e-7, err_msg=f"{run_id} {column}")
                checked += 1
    assert checked >= 9 * 10


@pytest.mark.mnist
@pytest.mark.slow
def test_after_100_steps_accuracy_and_gradient_norms_equal_the_run_alone(trained):
    grid, alone = trained["grid"], trained["alone"]
    accuracies = set()
    for run_id, pop in grid.items():
        solo = alone[run_id]
        assert abs(pop["result"]["test_accuracy"] - solo["result"]["test_accuracy"]) <= 1e-3, run_id
        accuracies.add(round(pop["result"]["test_accuracy"], 4))
        last = solo["layers"].step.max()
        assert last == STEPS
        for column in ("kernel_grad_norm", "bias_grad_norm"):
            a = solo["layers"].query("step == @last")[column].to_numpy()
            p = pop["layers"].query("step == @last")[column].to_numpy()
            np.testing.assert_allclose(p, a, rtol=1e-3, atol=0, err_msg=f"{run_id} {column}")
        np.testing.assert_allclose(
            pop["history"].test_accuracy, solo["history"].test_accuracy, rtol=0, atol=1e-3, err_msg=run_id
        )
    # The replicas trained with their own learning rates and seeds: not nine copies of one run.
    assert len(accuracies) > 3


# --------------------------------------------------------------------------- #
# Divergence: per replica, masked
# --------------------------------------------------------------------------- #


@pytest.mark.mnist
@pytest.mark.slow
def test_a_diverging_replica_is_recorded_diverged_and_the_others_go_on(trained):
    pop, alone = trained["diverging"], trained["alone"]
    ok, bad, other = _diverging()
    diverged = pop[bad.run_id]
    solo = alone[bad.run_id]
    assert solo["result"]["status"] == "diverged"  # the premise: alone, this run diverges
    assert diverged["result"]["status"] == "diverged"
    step = diverged["result"]["diverged_step"]
    assert step == solo["result"]["diverged_step"]
    assert 0 < step < STEPS
    # Everything measured until then, nothing after.
    assert diverged["layers"].step.max() == step
    assert len(diverged["layers"]) == len(solo["layers"].query("step <= @step"))
    until = solo["layers"].query("step < @step").kernel_grad_norm.to_numpy()
    np.testing.assert_allclose(diverged["layers"].query("step < @step").kernel_grad_norm, until, rtol=1e-3)
    # The others trained all their steps, as alone (the frozen replica did not disturb them).
    for config in (ok, other):
        p, a = pop[config.run_id], alone[config.run_id]
        assert p["result"]["status"] == "ok" and p["result"]["steps"] == STEPS
        assert abs(p["result"]["test_accuracy"] - a["result"]["test_accuracy"]) <= 1e-3
        a_last = a["layers"].query("step == @STEPS").kernel_grad_norm
        np.testing.assert_allclose(p["layers"].query("step == @STEPS").kernel_grad_norm, a_last, rtol=1e-3)


# --------------------------------------------------------------------------- #
# Forming populations (no training)
# --------------------------------------------------------------------------- #


def test_runs_that_differ_only_in_seed_learning_rate_and_initializers_form_one_population():
    grid = _grid()
    other_depth = [c.replace(depth=6) for c in grid[:2]]
    other_init = grid[0].replace(initializer="glorot_uniform", seed=7)
    tasks = population.group([*grid, *other_depth, other_init])
    assert [len(t) for t in tasks] == [10, 2]
    assert tasks[0] == [*grid, other_init]
    assert tasks[1] == other_depth


def test_off_and_tensorflow_runs_are_one_run_per_task():
    grid = _grid()
    assert [len(t) for t in population.group(grid, enabled=False)] == [1] * len(grid)
    tf_runs = [c.replace(backend="tensorflow") for c in grid]
    assert [len(t) for t in population.group(tf_runs)] == [1] * len(grid)


def test_a_population_that_does_not_fit_is_split_not_refused():
    grid = _grid()
    config = grid[0]
    one = sizing.estimate_population_memory([config])
    whole = sizing.estimate_population_memory(grid)
    assert whole > one
    # Room for 4 replicas: 9 runs become populations of 3 (near-equal sizes), none refused.
    room = sizing.estimate_population_memory(grid[:4])
    tasks = population.group(grid, memory=room)
    assert sorted(len(t) for t in tasks) == [3, 3, 3]
    assert all(sizing.estimate_population_memory(t) <= room for t in tasks)
    assert [c for t in tasks for c in t] == grid
    # Room for less than one replica: one run per task, still not refused.
    assert [len(t) for t in population.group(grid, memory=one - 1)] == [1] * len(grid)


def test_populations_are_split_so_that_every_worker_has_work():
    tasks = population.group(_grid(), min_tasks=2)
    assert sorted(len(t) for t in tasks) == [4, 5]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--population", "maybe"], "Argument `--population` must be on or off. Received: population='maybe'"),
        (["--population", "on", "--backend", "tensorflow"], "must be off on the tensorflow backend"),
    ],
)
def test_bad_population_flag_is_one_line_exit_2(args, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vgbench", "run", *args, "--max-steps", "1", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_run_suite_refuses_populations_on_tensorflow(tmp_path):
    config = RunConfig(depth=2, width=4, max_steps=1, backend="tensorflow")
    with pytest.raises(UsageError, match="must be off on the tensorflow backend"):
        run_suite([config], tmp_path / "o", population=True, progress=False)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- #
# Suites: resume, executors
# --------------------------------------------------------------------------- #


def _small(n=3):
    base = {**BASE, "max_steps": 6, "epochs": 1, "train_samples": 128, "test_samples": 128, "depth": 3}
    return [RunConfig(**base, seed=s, learning_rate=0.01) for s in range(n)]


@pytest.mark.mnist
@pytest.mark.slow
def test_a_resumed_population_trains_only_the_runs_not_done(tmp_path, mnist_path):
    configs = _small(3)
    out = tmp_path / "results"
    first = run_suite(configs[:1], out, jobs=1, data_path=mnist_path, progress=False, population=False)
    assert first.done == 1
    done_before = (out / "runs").iterdir().__next__()
    stamp = (done_before / "result.json").stat().st_mtime_ns
    assert "population_size" not in json.loads((done_before / "result.json").read_text())  # off: trained alone

    again = run_suite(configs, out, jobs=1, data_path=mnist_path, progress=False)
    assert (again.skipped, again.done) == (1, 2)
    assert set(again.statuses) == {c.run_id for c in configs[1:]}
    assert (done_before / "result.json").stat().st_mtime_ns == stamp  # the finished run was not redone
    runs = load_results(out).runs.set_index("run_id")
    assert set(runs.index) == {c.run_id for c in configs}
    assert set(runs.loc[[c.run_id for c in configs[1:]], "status"]) == {"ok"}
    for c in configs[1:]:
        result = json.loads(
            next(p for p in (out / "runs").iterdir() if c.run_id in p.name).joinpath("result.json").read_text()
        )
        assert result["population_size"] == 2
    # With populations on, a run that shares its population with no other trains as a population of one.
    single = configs[0].replace(depth=2)
    run_suite([single], out, jobs=1, data_path=mnist_path, progress=False)
    result = json.loads((run_dir(out, single.run_id) / "result.json").read_text())
    assert result["status"] == "ok" and result["population_size"] == 1


@pytest.mark.mnist
@pytest.mark.slow
def test_ray_trains_a_population_as_one_task_with_the_local_numbers(tmp_path, mnist_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    configs = _small(2)
    single = configs[0].replace(depth=2)  # a population of one: trained alone
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    summary = run_suite([*configs, single], ray_out, executor="ray", jobs=1, data_path=mnist_path, progress=False)
    assert not ray.is_initialized()
    assert summary.done == 3 and set(summary.statuses.values()) == {"ok"}
    run_suite([*configs, single], local_out, jobs=1, data_path=mnist_path, progress=False)
    a, b = load_results(ray_out), load_results(local_out)
    keys = ["run_id", "step", "layer_index"]
    la, lb = (r.layers.sort_values(keys).reset_index(drop=True) for r in (a, b))
    pd.testing.assert_frame_equal(la[keys], lb[keys])
    np.testing.assert_allclose(la.kernel_grad_norm, lb.kernel_grad_norm, rtol=1e-5)
    sizes = {}
    for d in (ray_out / "runs").iterdir():
        result = json.loads((d / "result.json").read_text())
        sizes[d.name] = result.get("population_size", 1)
    assert sorted(sizes.values()) == [1, 2, 2]


@pytest.mark.mnist
@pytest.mark.slow
def test_a_population_measures_each_replicas_jacobian_spectrum_as_alone(tmp_path, mnist_path):
    from vgbench.bench.results import load_jacobian

    configs = [RunConfig.from_dict({**c.to_dict(), "jacobian_examples": 2}) for c in _small(2)]
    alone, together = tmp_path / "alone", tmp_path / "together"
    run_suite(configs, alone, jobs=1, data_path=mnist_path, progress=False, population=False)
    summary = run_suite(configs, together, jobs=1, data_path=mnist_path, progress=False, population=True)
    assert set(summary.statuses.values()) == {"ok"}
    key = ["run_id", "example", "layer_index", "index"]
    a = load_jacobian(alone).sort_values(key).reset_index(drop=True)
    b = load_jacobian(together).sort_values(key).reset_index(drop=True)
    assert set(b.run_id) == {c.run_id for c in configs} and len(b) == len(a) > 0
    np.testing.assert_allclose(b.singular_value, a.singular_value, rtol=1e-5)
    runs = load_results(together).runs
    assert runs["jacobian_spread"].notna().all() and (runs["population_size"] == 2).all()


def test_a_tasks_estimated_cost_grows_with_its_replicas_steps_and_depth():
    # The runner starts the longest tasks first (with --jobs > 1), so that the workers end together.
    base = RunConfig(backend="jax", depth=10, max_steps=300)
    cost = population.estimated_cost
    assert cost([base] * 10) > cost([base] * 5) > cost([base])
    assert cost([base.replace(max_steps=1200)]) > cost([base]) > cost([base.replace(max_steps=0)])
    assert cost([base.replace(depth=30)]) > cost([base])
    # Without max_steps, a run takes every batch of each epoch: here 300 steps, as base.
    assert cost([base.replace(max_steps=None, epochs=1, train_samples=base.batch_size * 300)]) == cost([base])


def test_batch_orders_read_further_equal_a_fresh_read():
    # A worker keeps each seed's order and reads it further for a run with more steps:
    # the batches must be those of a pipeline read from the start.
    population._ORDERS.clear()
    short = population._batch_order(100, 16, 3, 4)
    longer = population._batch_order(100, 16, 3, 20)  # 100 examples: epochs end on a batch of 4
    population._ORDERS.clear()
    fresh = population._batch_order(100, 16, 3, 20)
    assert len(short) == 4 and len(longer) == len(fresh) == 20
    assert all(np.array_equal(a, b) for a, b in zip(longer, fresh, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(short, fresh[:4], strict=True))
    assert [len(b) for b in fresh[:8]] == [16] * 6 + [4, 16]
    # Each epoch is a permutation of the examples, and the seed changes it.
    assert sorted(np.concatenate(fresh[:7])) == list(range(100))
    assert not np.array_equal(population._batch_order(100, 16, 4, 1)[0], fresh[0])


def test_batch_orders_are_those_of_the_runs_pipeline():
    # Read an epoch at a time, the order must be that of the pipeline a run alone reads batch by
    # batch (`bench.data.make_tf_dataset`, as `bench.train` builds it, after `fit`'s first read).
    from vgbench.bench import data as data_mod

    idx = np.arange(100, dtype=np.int32)
    ds = data_mod.make_tf_dataset(idx, idx, batch_size=16, seed=5).repeat()
    next(iter(ds))
    it = ds.as_numpy_iterator()
    expected = [next(it)[0] for _ in range(23)]
    population._ORDERS.clear()
    got = population._batch_order(100, 16, 5, 23)
    assert [len(b) for b in got] == [len(b) for b in expected]
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
