"""`vgbench compare` catches a regression of the initialization on gradient metrics, against the committed baseline.

The injected bug is a real one-line change of the initializer registry:
``he_normal`` built as Keras' ``LecunNormal`` (half the weight variance).
The relu + he_normal benchmarks of the ``ci`` suite are measured again, on
real MNIST, with and without it, and judged against their runs in
``reports/baseline`` the way `vgbench compare` judges a benchmark: the
bug must be flagged on at least one gradient metric, a rerun of the code as
it is on none. The fast test measures step 0 only (no update) and judges the
step-0 rows; the slow one reruns the whole benchmark and calls `compare`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from vgbench.bench import compare as cmp
from vgbench.bench import data, suites
from vgbench.bench.compare import matching, verdicts
from vgbench.bench.compare.disagreement import THEORY_DEVIATION, add_theory_deviation
from vgbench.bench.metrics import run_metrics
from vgbench.bench.results import load_results
from vgbench.models import initializers

BASELINE = Path(__file__).resolve().parents[2] / "reports" / "baseline"
GRADIENT_METRICS = {"backward_factor_init", "forward_factor_init", "grad_ratio_init", THEORY_DEVIATION}


def _relu_he_configs(arch: str):
    ci = suites.expand(suites.shipped_suite("ci"), {"backend": ["tensorflow"]})
    return [c for c in ci if (c.activation, c.initializer, c.arch) == ("relu", "he_normal", arch)]


def _inject_lecun_for_he(monkeypatch):
    """The bug: `he_normal` makes Keras' LecunNormal."""
    entry = initializers._REGISTRY["he_normal"]
    monkeypatch.setitem(initializers._REGISTRY, "he_normal", dataclasses.replace(entry, keras_class="LecunNormal"))


def _judge_at_step_0(config, dataset, baseline) -> list:
    """The step-0 rows of `config`'s benchmark: its baseline run against a step-0 measurement made now."""
    from vgbench.bench.train import train_run

    record = train_run(dataclasses.replace(config, max_steps=0), data=dataset)
    assert record.result["status"] == "ok", record.result.get("error")
    current = pd.DataFrame([{**record.config, **record.result, "run_id": record.run_id}])
    base = run_metrics(baseline.runs[baseline.runs["run_id"] == config.run_id], baseline.layers)
    cur = run_metrics(current, record.layers)
    assert len(base) == 1, f"{config.run_id} is not in the baseline"
    add_theory_deviation(base, cur, baseline.manifest)
    rows = verdicts.benchmark_rows(
        config.run_id,
        base,
        cur,
        matching.definition_differences(base, cur),
        cmp.DEFAULT_TOLERANCES,
        cmp.DEFAULT_ALPHA,
        fail_on_time=False,
    )
    return [r for r in rows if r.metric.endswith("_init")]


@pytest.mark.mnist
def test_an_initialization_bug_is_flagged_at_step_0_and_a_rerun_is_not(mnist_path, monkeypatch):
    dataset = data.load_dataset("mnist", mnist_path)
    baseline = load_results(BASELINE)
    (config,) = _relu_he_configs("mlp")

    clean = _judge_at_step_0(config, dataset, baseline)
    assert {r.metric for r in clean} >= GRADIENT_METRICS, "every step-0 gradient metric is compared"
    assert not [r for r in clean if r.fails], [(r.metric, r.baseline, r.current, r.change) for r in clean]

    _inject_lecun_for_he(monkeypatch)
    buggy = _judge_at_step_0(config, dataset, baseline)
    flagged = {r.metric for r in buggy if r.fails and r.mark == "worse"}
    assert flagged & GRADIENT_METRICS, [(r.metric, r.mark, r.baseline, r.current, r.change) for r in buggy]
    # Half the weight variance: the per-layer backward factor falls by about √2 (0.15 decades).
    backward = next(r for r in buggy if r.metric == "backward_factor_init")
    assert 0.6 < backward.current / backward.baseline < 0.8


@pytest.mark.slow
@pytest.mark.mnist
def test_compare_flags_the_initialization_bug_in_the_whole_benchmark(mnist_path, monkeypatch, tmp_path):
    from vgbench.bench.runner import run_suite

    (config,) = _relu_he_configs("mlp")
    marks = {}
    for name in ("clean", "buggy"):
        if name == "buggy":
            _inject_lecun_for_he(monkeypatch)
        out = tmp_path / name
        run_suite([config], out, jobs=1, data_path=mnist_path, suite="ci", progress=False)
        rows = cmp.compare(BASELINE, out).rows
        mine = rows[rows["benchmark"] == rows.loc[rows["metric"] == "backward_factor_init", "benchmark"].iloc[0]]
        marks[name] = dict(zip(mine["metric"], zip(mine["mark"], mine["fails"])))
    assert not [m for m, (_, fails) in marks["clean"].items() if fails], marks["clean"]
    worse = {m for m, (mark, fails) in marks["buggy"].items() if fails and mark == "worse"}
    assert worse & (GRADIENT_METRICS | {"backward_factor_final", "grad_factor_final"}), marks["buggy"]
