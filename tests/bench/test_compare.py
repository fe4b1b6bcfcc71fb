"""Tests for bench.compare: matching, marks, statistics, reports and exit codes.

Most results directories here are written table by table in the on-disk
layout of `bench.results` (manifest.json, runs/layers/history.parquet), with
per-layer gradient norms chosen so that `bench.metrics.run_metrics` yields
known gradient factors. The tests marked ``slow`` train real tiny networks
with `bench.runner.run_suite` on a small synthetic dataset.

The golden Markdown report lives in ``tests/bench/golden/compare.md``; after a
deliberate change of the format, regenerate it with
``VGBENCH_UPDATE_GOLDEN=1 pytest tests/bench/test_compare.py -k golden``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vgbench.bench import cli
from vgbench.bench import compare as cmp
from vgbench.bench.config import RunConfig
from vgbench.bench.errors import UsageError
from vgbench.bench.results import RUN_OUTCOME_COLUMNS, SCHEMA_VERSION, load_results, write_json_atomic

GOLDEN = Path(__file__).parent / "golden" / "compare.md"

# What every synthetic run shares, unless a test says otherwise.
BASE_CONFIG = {
    **{f.name: f.default for f in dataclasses.fields(RunConfig)},
    "depth": 4,
    "width": 16,
    "max_steps": 20,
    "act_every": 10,
}


# --------------------------------------------------------------------------- #
# Results directories written table by table
# --------------------------------------------------------------------------- #


def spec(
    activation="relu",
    initializer="he_normal",
    seed=0,
    *,
    status="ok",
    acc=0.9,
    factor=0.9,
    factor_init=None,
    dead=0.1,
    wall=10.0,
    checksum="c0ffee",
    **config,
):
    """One synthetic run: its config and the outcome its tables must give."""
    return dict(
        config={**BASE_CONFIG, "activation": activation, "initializer": initializer, "seed": seed, **config},
        status=status,
        acc=acc,
        factor=factor,
        factor_init=factor if factor_init is None else factor_init,
        dead=dead,
        wall=wall,
        checksum=checksum,
    )


def _run_id(config):
    return f"{config['arch']}-d{config['depth']}-{config['activation']}-{config['initializer']}-s{config['seed']}"


def _tables(s):
    """(runs row, layers, history) of one spec.

    Hidden layer i of D has kernel gradient norm factor ** (D - 1 - i), so
    the run's grad_factor is ``factor`` and its grad_ratio factor ** (D - 1).
    """
    c = s["config"]
    run_id = s.get("run_id") or _run_id(c)
    depth, steps = c["depth"], c["max_steps"]
    diverged = s["status"] == "diverged"
    last = steps // 2 if diverged else steps
    layers = []
    for step in range(last + 1):
        f = s["factor_init"] if step == 0 else s["factor"]
        measured = step == 0 or step % c["act_every"] == 0
        for i in range(depth + 1):
            hidden = i < depth
            norm = f ** (depth - 1 - i) if hidden else 1.0
            layers.append(
                {
                    "run_id": run_id,
                    "step": step,
                    "epoch": 0,
                    "layer_index": i,
                    "layer_name": f"hidden_{i}" if hidden else "output",
                    "kernel_grad_norm": norm,
                    "bias_grad_norm": norm,
                    "kernel_norm": 1.0 if measured else np.nan,
                    "update_ratio": 1e-3 if measured and step else np.nan,
                    "act_mean": 0.5 if measured else np.nan,
                    "act_std": 0.5 if measured else np.nan,
                    "act_rms": 0.7 if measured else np.nan,
                    "saturated_fraction": np.nan,
                    "dead_fraction": (s["dead"] if step else 0.0) if measured and hidden else np.nan,
                }
            )
    history = [
        {
            "run_id": run_id,
            "step": last,
            "epoch": 0,
            "train_loss": 0.5,
            "train_accuracy": s["acc"],
            "test_loss": 0.5,
            "test_accuracy": s["acc"],
        }
    ]
    row = {
        "run_id": run_id,
        **c,
        "status": s["status"],
        "error": "",
        "diverged_step": last if diverged else -1,
        "steps": last,
        "test_accuracy": 0.1 if diverged else s["acc"],
        "test_loss": np.nan if diverged else 0.5,
        "train_loss": np.nan if diverged else 0.5,
        "train_accuracy": 0.1 if diverged else s["acc"],
        "wall_time_s": s["wall"],
        "data_checksum": s["checksum"],
    }
    return row, pd.DataFrame(layers), pd.DataFrame(history)


def write_results(out, specs, *, schema_version=SCHEMA_VERSION, git_sha="0123456789abcdef"):
    """Writes a results directory in the on-disk layout; returns its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, layers, history = [], [], []
    for s in specs:
        r, lay, h = _tables(s)
        rows.append(r)
        layers.append(lay)
        history.append(h)
    write_json_atomic(out / "manifest.json", {"schema_version": schema_version, "suite": "test", "git_sha": git_sha})
    pd.DataFrame(rows).to_parquet(out / "runs.parquet", index=False)
    pd.concat(layers, ignore_index=True).to_parquet(out / "layers.parquet", index=False)
    pd.concat(history, ignore_index=True).to_parquet(out / "history.parquet", index=False)
    return out


def compare_specs(tmp_path, baseline, current, **kwargs):
    return cmp.compare(
        write_results(tmp_path / "baseline", baseline), write_results(tmp_path / "current", current), **kwargs
    )


def marks(comparison, metric=None):
    """{benchmark prefix (activation-initializer): mark}, per benchmark or of one metric."""
    if metric is None:
        df = comparison.benchmarks
    else:
        df = comparison.rows[comparison.rows["metric"] == metric]
    return {_short(b): m for b, m in zip(df["benchmark"], df["mark"])}


def _short(benchmark):
    # "mlp-d4-w16-relu-he_normal-none-1a2b3c4d" → "relu-he_normal"
    return "-".join(benchmark.split("-")[3:5])


def row(comparison, short, metric):
    rows = comparison.rows
    hit = rows[(rows["benchmark"].map(_short) == short) & (rows["metric"] == metric)]
    assert len(hit) == 1, f"no single row {short}/{metric} in\n{rows}"
    return hit.iloc[0]


# --------------------------------------------------------------------------- #
# Marks
# --------------------------------------------------------------------------- #


def test_identical_tables_compare_clean(tmp_path):
    runs = [spec("relu", "he_normal"), spec("tanh", "glorot_uniform", factor=0.7, dead=0.0)]
    c = compare_specs(tmp_path, runs, runs)
    assert c.verdict == "no change"
    assert c.exit_code == 0
    assert set(c.rows["mark"]) == {"unchanged"}
    assert not c.benchmarks["fails"].any()


def test_removed_added_and_diverged_runs_get_their_marks(tmp_path):
    baseline = [spec("relu", "he_normal"), spec("elu", "he_normal"), spec("tanh", "glorot_uniform")]
    current = [
        spec("relu", "he_normal"),
        spec("tanh", "glorot_uniform", status="diverged"),
        spec("selu", "lecun_normal"),
    ]
    c = compare_specs(tmp_path, baseline, current)
    assert marks(c) == {
        "tanh-glorot_uniform": "new failure",
        "elu-he_normal": "missing",
        "selu-lecun_normal": "added",
        "relu-he_normal": "unchanged",
    }
    assert c.verdict == "regression" and c.exit_code == 1
    status = row(c, "tanh-glorot_uniform", "status")
    assert (status["baseline"], status["current"]) == ("ok", "diverged")
    assert "seed 0: diverged at step 10" in status["note"]
    # Only failing marks fail: an added benchmark does not.
    fails = dict(zip(c.benchmarks["benchmark"].map(_short), c.benchmarks["fails"]))
    assert fails == {
        "tanh-glorot_uniform": True,
        "elu-he_normal": True,
        "selu-lecun_normal": False,
        "relu-he_normal": False,
    }


def test_a_fixed_run_is_an_improvement(tmp_path):
    c = compare_specs(tmp_path, [spec(status="diverged")], [spec()])
    assert marks(c) == {"relu-he_normal": "fixed"}
    assert c.verdict == "improvement" and c.exit_code == 0


def test_worse_and_better_within_and_beyond_tolerance(tmp_path):
    baseline = [spec("relu", acc=0.90), spec("tanh", "glorot_uniform", acc=0.90), spec("elu", dead=0.4)]
    current = [spec("relu", acc=0.89), spec("tanh", "glorot_uniform", acc=0.85), spec("elu", dead=0.2)]
    c = compare_specs(tmp_path, baseline, current)
    assert marks(c, "test_accuracy") == {
        "relu-he_normal": "unchanged",
        "tanh-glorot_uniform": "worse",
        "elu-he_normal": "unchanged",
    }
    assert marks(c, "dead_fraction_final")["elu-he_normal"] == "better"
    assert row(c, "tanh-glorot_uniform", "test_accuracy")["change"] == pytest.approx(-0.05)
    assert c.exit_code == 1
    # The worst benchmark comes first.
    assert _short(c.benchmarks["benchmark"].iloc[0]) == "tanh-glorot_uniform"


def test_gradient_ratio_is_judged_by_its_distance_from_one(tmp_path):
    # depth 4: grad_ratio = factor ** 3.
    baseline = [
        spec("relu", "he_normal", factor=0.1),  # ratio 1e-3
        spec("tanh", "glorot_uniform", factor=0.5 ** (1 / 3)),  # ratio 0.5
        spec("elu", "he_normal", factor=0.1),
    ]
    current = [
        spec("relu", "he_normal", factor=10 ** (-4 / 3)),  # ratio 1e-4: a decade more vanishing
        spec("tanh", "glorot_uniform", factor=2 ** (1 / 3)),  # ratio 2: as far from 1 as 0.5
        spec("elu", "he_normal", factor=10 ** (-2 / 3)),  # ratio 1e-2: a decade less
    ]
    c = compare_specs(tmp_path, baseline, current)
    assert marks(c, "grad_ratio_final") == {
        "relu-he_normal": "worse",
        "tanh-glorot_uniform": "unchanged",
        "elu-he_normal": "better",
    }
    assert row(c, "relu-he_normal", "grad_ratio_final")["change"] == pytest.approx(1.0)
    assert row(c, "relu-he_normal", "grad_factor_final")["change"] == pytest.approx(1 / 3)
    assert row(c, "relu-he_normal", "grad_factor_final")["mark"] == "worse"


def test_wall_time_is_reported_but_gates_only_on_request(tmp_path):
    baseline, current = [spec(wall=10.0)], [spec(wall=30.0)]
    c = compare_specs(tmp_path, baseline, current)
    time_row = row(c, "relu-he_normal", "wall_time_s")
    assert time_row["mark"] == "worse" and not time_row["fails"]
    assert time_row["change"] == pytest.approx(3.0)
    assert c.exit_code == 0
    assert "worse (not gating)" in cmp.to_markdown(c)
    c = cmp.compare(tmp_path / "baseline", tmp_path / "current", fail_on_time=True)
    assert c.exit_code == 1
    assert marks(c) == {"relu-he_normal": "worse"}


def test_measurement_settings_that_differ_make_their_metrics_not_comparable(tmp_path):
    baseline = [spec("relu", "he_normal"), spec("tanh", "glorot_uniform", factor=0.7)]
    current = [spec("relu", "he_normal", act_every=5), spec("tanh", "glorot_uniform", factor=0.7, checksum="beef")]
    c = compare_specs(tmp_path, baseline, current)
    # A measurement setting is not part of a benchmark's identity: still matched.
    assert set(c.rows["benchmark"].map(_short)) == {"relu-he_normal", "tanh-glorot_uniform"}
    relu = c.rows[c.rows["benchmark"].map(_short) == "relu-he_normal"].set_index("metric")
    assert relu.loc["dead_fraction_final", "mark"] == "not comparable"
    assert "act_every differs: baseline 10, current 5" in relu.loc["dead_fraction_final", "note"]
    assert relu.loc["test_accuracy", "mark"] == "unchanged"
    # Other data: nothing of that benchmark compares.
    tanh = c.rows[c.rows["benchmark"].map(_short) == "tanh-glorot_uniform"]
    assert set(tanh["mark"]) == {"not comparable"}
    assert "data_checksum differs" in tanh["note"].iloc[0]
    assert c.exit_code == 0
    assert any("make update-baseline" in n for n in c.notes)


def test_other_data_alone_is_not_called_a_measurement_change(tmp_path):
    c = compare_specs(tmp_path, [spec(), spec("tanh")], [spec(checksum="beef"), spec("tanh")])
    assert any("data differs" in n for n in c.notes)
    assert not any("how they are measured differs" in n for n in c.notes)


def test_nothing_comparable_fails_and_asks_for_a_new_baseline(tmp_path):
    # Every run on other data: no number can be compared, which must not pass silently.
    c = compare_specs(tmp_path, [spec(), spec("tanh")], [spec(checksum="beef"), spec("tanh", checksum="beef")])
    assert set(c.rows["mark"]) == {"not comparable"}
    assert c.verdict == "not comparable" and c.exit_code == 1
    assert "make update-baseline" in c.notes[0]


def test_baseline_of_another_schema_is_not_comparable_and_does_not_crash(tmp_path, capsys):
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    # An older layout: the manifest says so, and the tables are unreadable here.
    write_json_atomic(baseline / "manifest.json", {"schema_version": 0})
    (baseline / "runs.parquet").write_text("not parquet")
    current = write_results(tmp_path / "current", [spec("relu", "he_normal"), spec("tanh", "glorot_uniform")])
    c = cmp.compare(baseline, current)
    assert c.verdict == "not comparable" and c.exit_code == 1
    assert set(c.rows["mark"]) == {"not comparable"} and len(c.benchmarks) == 2
    assert "schema_version=0" in c.rows["note"].iloc[0]
    assert cli.main(["compare", str(baseline), str(current)]) == 1
    out = capsys.readouterr().out
    assert "not comparable" in out and "make update-baseline" in out


# --------------------------------------------------------------------------- #
# Seeds and statistics
# --------------------------------------------------------------------------- #


def _seeded(accs, **kw):
    return [spec("relu", "he_normal", seed=i, acc=float(a), **kw) for i, a in enumerate(accs)]


def test_seeds_form_one_benchmark_and_a_significant_shift_is_worse(tmp_path):
    rng = np.random.default_rng(0)
    base = 0.90 + 0.002 * rng.standard_normal(5)
    cur = 0.85 + 0.002 * rng.standard_normal(5)
    c = compare_specs(tmp_path, _seeded(base), _seeded(cur))
    assert len(c.benchmarks) == 1
    r = row(c, "relu-he_normal", "test_accuracy")
    assert r["test"] == "mannwhitneyu"
    assert r["p_value"] < 0.05
    assert (r["n_baseline"], r["n_current"]) == (5, 5)
    assert r["mark"] == "worse" and c.exit_code == 1
    assert r["baseline"] == pytest.approx(np.median(base))
    assert not any("Tolerance-only" in n for n in c.notes)


def test_a_shift_lost_in_seed_noise_is_not_a_regression(tmp_path):
    # The medians differ by 0.05, beyond the tolerance, but the seeds overlap.
    base = [0.60, 0.95, 0.70, 0.90, 0.80]
    cur = [0.55, 0.90, 0.65, 0.85, 0.75]
    c = compare_specs(tmp_path, _seeded(base), _seeded(cur))
    r = row(c, "relu-he_normal", "test_accuracy")
    assert r["p_value"] > 0.05
    assert r["mark"] == "unchanged"
    assert "not significant" in r["note"]
    assert c.exit_code == 0
    # The same medians as single runs are compared by tolerance alone: worse.
    c1 = cmp.compare(
        write_results(tmp_path / "b1", _seeded([np.median(base)])),
        write_results(tmp_path / "c1", _seeded([np.median(cur)])),
    )
    assert row(c1, "relu-he_normal", "test_accuracy")["test"] == "tolerance"
    assert c1.exit_code == 1
    assert any("Tolerance-only" in n for n in c1.notes)


def test_three_seeds_use_a_test_that_can_reject(tmp_path):
    # Mann-Whitney U cannot go below p=0.1 with 3 vs 3 samples.
    c = compare_specs(tmp_path, _seeded([0.900, 0.901, 0.902]), _seeded([0.850, 0.851, 0.852]))
    r = row(c, "relu-he_normal", "test_accuracy")
    assert r["test"] == "welch"
    assert r["p_value"] < 0.05 and r["mark"] == "worse"


def test_a_newly_failing_seed_is_a_new_failure(tmp_path):
    baseline = _seeded([0.9, 0.9, 0.9])
    current = _seeded([0.9, 0.9, 0.9])
    current[1] = spec("relu", "he_normal", seed=1, status="diverged")
    c = compare_specs(tmp_path, baseline, current)
    status = row(c, "relu-he_normal", "status")
    assert status["mark"] == "new failure"
    assert (status["baseline"], status["current"]) == ("3/3 ok", "2/3 ok")
    assert "seed 1" in status["note"]
    # The other metrics use the successful seeds only.
    assert row(c, "relu-he_normal", "test_accuracy")["n_current"] == 2


def test_one_seed_under_two_measurement_settings_pairs_each_run(tmp_path):
    # Both runs are one benchmark with seed 0; paired by seed alone, the ok
    # run at act_every=10 would hide the new failure at act_every=5.
    def runs(status_5):
        return [
            {**spec(seed=0, act_every=5, status=status_5), "run_id": "a5"},
            {**spec(seed=0, act_every=10), "run_id": "a10"},
        ]

    c = compare_specs(tmp_path, runs("ok"), runs("diverged"))
    assert len(c.benchmarks) == 1
    status = row(c, "relu-he_normal", "status")
    assert status["mark"] == "new failure"
    assert "seed 0 (log_every=" in status["note"] and "act_every=5)" in status["note"]


# --------------------------------------------------------------------------- #
# Tolerances and the command line
# --------------------------------------------------------------------------- #


def test_tolerances_from_the_command_line_and_a_file(tmp_path):
    write_results(tmp_path / "baseline", [spec(acc=0.90)])
    write_results(tmp_path / "current", [spec(acc=0.85)])
    args = ["compare", str(tmp_path / "baseline"), str(tmp_path / "current"), "--markdown", str(tmp_path / "r.md")]
    assert cli.main(args) == 1
    assert cli.main([*args, "--tolerance", "test_accuracy=0.1"]) == 0
    (tmp_path / "tol.yaml").write_text("test_accuracy: 0.1\n")
    assert cli.main([*args, "--tolerances", str(tmp_path / "tol.yaml")]) == 0
    # The command line overrides the file.
    assert cli.main([*args, "--tolerances", str(tmp_path / "tol.yaml"), "--tolerance", "test_accuracy=0.01"]) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tolerance", "test_acuracy=0.1"], "Did you mean 'test_accuracy'?"),
        (["--tolerance", "test_accuracy=-1"], "must be a positive number"),
        (["--tolerance", "wall_time_s=0.5"], "must be above 1"),
        (["--tolerance", "test_accuracy"], "takes METRIC=VALUE"),
        (["--alpha", "2"], "Argument `alpha` must be a number between 0 and 1"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path, capsys, extra, message):
    write_results(tmp_path / "baseline", [spec()])
    write_results(tmp_path / "current", [spec()])
    assert cli.main(["compare", str(tmp_path / "baseline"), str(tmp_path / "current"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "content",
    [b"test_accuracy: 0.1 # \xff\xfe\n", b"test_accuracy: " + b"9" * 400 + b"\n"],
    ids=["not-utf8", "huge-integer"],
)
def test_a_bad_tolerances_file_is_one_line_and_exit_2(tmp_path, capsys, content):
    write_results(tmp_path / "baseline", [spec()])
    write_results(tmp_path / "current", [spec()])
    (tmp_path / "tol.yaml").write_bytes(content)
    tolerances = ["--tolerances", str(tmp_path / "tol.yaml")]
    assert cli.main(["compare", str(tmp_path / "baseline"), str(tmp_path / "current"), *tolerances]) == 2
    err = capsys.readouterr().err
    assert "test_accuracy" in err or "tol.yaml" in err
    assert len(err.strip().splitlines()) == 1


def test_a_baseline_that_cannot_be_consolidated_is_a_usage_error(tmp_path, monkeypatch):
    # A baseline without runs.parquet is consolidated on loading, which
    # writes into it; a read-only one (simulated: root ignores file modes) fails.
    from vgbench.bench import results

    baseline = write_results(tmp_path / "baseline", [spec()])
    (baseline / "runs.parquet").unlink()
    current = write_results(tmp_path / "current", [spec()])

    def read_only(path, df):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(results, "write_parquet_atomic", read_only)
    with pytest.raises(UsageError, match="no runs.parquet and writing one failed .*Permission denied") as info:
        cmp.compare(baseline, current)
    assert len(str(info.value).splitlines()) == 1


def test_a_directory_that_is_not_results_is_a_usage_error(tmp_path):
    current = write_results(tmp_path / "current", [spec()])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a vgbench results directory"):
        cmp.compare(tmp_path / "empty", current)
    with pytest.raises(UsageError, match="does not exist"):
        cmp.compare(tmp_path / "nowhere", current)


def test_json_and_junit_reports(tmp_path):
    baseline = [spec("relu", "he_normal"), spec("tanh", "glorot_uniform"), spec("elu", "he_normal")]
    current = [spec("relu", "he_normal"), spec("tanh", "glorot_uniform", acc=0.5), spec("selu", "lecun_normal")]
    write_results(tmp_path / "baseline", baseline)
    write_results(tmp_path / "current", current)
    code = cli.main(
        [
            "compare",
            str(tmp_path / "baseline"),
            str(tmp_path / "current"),
            "--json",
            str(tmp_path / "out" / "c.json"),
            "--junit",
            str(tmp_path / "out" / "c.xml"),
            "--markdown",
            str(tmp_path / "out" / "c.md"),
        ]
    )
    assert code == 1
    # Strict JSON: no NaN or Infinity.
    doc = json.loads((tmp_path / "out" / "c.json").read_text(), parse_constant=lambda x: pytest.fail(x))
    assert doc["verdict"] == "regression" and doc["exit_code"] == 1
    assert {_short(b["benchmark"]): b["mark"] for b in doc["benchmarks"]} == {
        "tanh-glorot_uniform": "worse",
        "elu-he_normal": "missing",
        "selu-lecun_normal": "added",
        "relu-he_normal": "unchanged",
    }
    suite = ET.parse(tmp_path / "out" / "c.xml").getroot().find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "2"
    failed = {_short(case.get("name")) for case in suite.iter("testcase") if case.find("failure") is not None}
    assert failed == {"tanh-glorot_uniform", "elu-he_normal"}
    tanh = next(case for case in suite.iter("testcase") if _short(case.get("name")) == "tanh-glorot_uniform")
    assert "test_accuracy 0.9000 -> 0.5000" in tanh.find("failure").get("message")
    assert (tmp_path / "out" / "c.md").read_text().startswith("<!-- vgbench-compare -->")


def test_golden_markdown(tmp_path, monkeypatch):
    baseline = [
        spec("relu", "he_normal", acc=0.95, factor=0.95, dead=0.05, wall=12.0),
        spec("sigmoid", "glorot_uniform", acc=0.90, factor=0.6, factor_init=0.5, dead=0.0),
        spec("tanh", "glorot_uniform", acc=0.93, factor=0.8, dead=0.0),
        spec("elu", "he_normal", acc=0.94),
        spec("relu", "random_normal", acc=0.70, factor=0.3, dead=0.6, wall=20.0),
        spec("relu", "he_uniform", acc=0.95),
        spec("gelu", "he_normal", status="diverged"),
    ]
    current = [
        spec("relu", "he_normal", acc=0.945, factor=0.95, dead=0.05, wall=13.0),
        spec("sigmoid", "glorot_uniform", acc=0.80, factor=0.4, factor_init=0.5, dead=0.0),
        spec("tanh", "glorot_uniform", status="diverged"),
        spec("selu", "lecun_normal", acc=0.96),
        spec("relu", "random_normal", acc=0.75, factor=0.3, dead=0.3, wall=70.0),
        spec("relu", "he_uniform", acc=0.95, act_every=5),
        spec("gelu", "he_normal", acc=0.9),
    ]
    write_results(tmp_path / "baseline", baseline, git_sha="aaaaaaaaaaaaaaaa")
    write_results(tmp_path / "current", current, git_sha="bbbbbbbbbbbbbbbb")
    monkeypatch.chdir(tmp_path)
    text = cmp.to_markdown(cmp.compare("baseline", "current"))
    if os.environ.get("VGBENCH_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "Markdown report changed; see the module docstring to regenerate"


def test_output_order_does_not_depend_on_input_order(tmp_path):
    baseline = [spec("relu", "he_normal"), spec("tanh", "glorot_uniform"), spec("elu", "he_normal")]
    current = [spec("relu", "he_normal", acc=0.5), spec("tanh", "glorot_uniform"), spec("selu", "lecun_normal")]
    a = compare_specs(tmp_path / "a", baseline, current)
    b = compare_specs(tmp_path / "b", baseline[::-1], current[::-1])
    for c in (a, b):
        c.baseline["path"] = c.current["path"] = "x"
    assert cmp.to_markdown(a) == cmp.to_markdown(b)
    assert cmp.to_json(a) == cmp.to_json(b)


# --------------------------------------------------------------------------- #
# The package's parts: records, matching, reasons as data, reports on disk
# --------------------------------------------------------------------------- #


def test_a_row_fails_only_with_a_failing_mark_that_gates():
    from vgbench.bench.compare.records import Row

    assert Row("b", "test_accuracy", "worse").fails
    assert not Row("b", "wall_time_s", "worse", gating=False).fails
    assert not Row("b", "test_accuracy", "not comparable").fails
    assert not Row("b", "status", "fixed").fails
    # A baseline that cannot be read at all fails whatever the mark.
    assert Row("b", "all", "not comparable", blocking=True).fails


def test_benchmark_identity_ignores_dtypes_seeds_and_measurement_settings():
    from vgbench.bench.compare import matching
    from vgbench.bench.config import benchmark_fields

    config = {**BASE_CONFIG, "depth": 20, "width": 128}
    base = pd.DataFrame([{**config, "run_id": "a", "seed": 0}, {**config, "run_id": "b", "seed": 1}])
    # A column with a missing value reads as float; other measurement settings; one field on this side only.
    cur = pd.DataFrame(
        [
            {**config, "run_id": "c", "seed": 0, "act_every": 5, "depth": 20.0, "extra": 1},
            {**config, "run_id": "d", "seed": 0, "width": 64, "max_steps": np.nan},
        ]
    )
    cur["extra"] = cur["extra"].astype("object")
    keys, one_side = matching.key_fields(base, cur)
    assert keys == benchmark_fields(base.columns)
    assert "seed" not in keys and "act_every" not in keys and one_side == []
    names_b, _ = matching.name_benchmarks(base, keys)
    names_c, configs = matching.name_benchmarks(cur, keys)
    assert names_b.nunique() == 1 and names_c.iloc[0] == names_b.iloc[0]
    assert names_c.iloc[1] != names_b.iloc[0]
    assert names_b.iloc[0].startswith("mlp-d20-w128-relu-he_normal-none-")
    assert configs[names_c.iloc[1]]["max_steps"] is None
    assert matching.key_fields(base, base.drop(columns=["preprocessing"]))[1] == ["preprocessing"]


def test_remarks_are_decided_by_reasons_not_by_their_words(tmp_path, monkeypatch):
    from vgbench.bench.compare import render
    from vgbench.bench.compare.records import Reason

    # Reworded notes: the remarks that depend on them must not change.
    monkeypatch.setitem(render._REASON_TEXT, Reason.MEASUREMENT, lambda d: f"{d['field']} was set otherwise")
    monkeypatch.setitem(render._REASON_TEXT, Reason.DATA_CHECKSUM, lambda d: "other images")
    baseline = [spec("relu", "he_normal"), spec("tanh", "glorot_uniform")]
    current = [spec("relu", "he_normal", act_every=5), spec("tanh", "glorot_uniform", checksum="beef")]
    c = compare_specs(tmp_path, baseline, current)
    assert row(c, "relu-he_normal", "dead_fraction_final")["note"] == "act_every was set otherwise"
    assert row(c, "tanh-glorot_uniform", "test_accuracy")["note"] == "other images"
    assert any("how they are measured differs" in n for n in c.notes)
    assert any("their data differs" in n for n in c.notes)


def test_a_failed_run_is_named_with_the_first_line_of_its_error(tmp_path):
    baseline = write_results(tmp_path / "baseline", [spec()])
    current = write_results(tmp_path / "current", [spec(status="failed")])
    runs = pd.read_parquet(current / "runs.parquet")
    first = "ValueError: " + "x" * 120
    runs["error"] = f"  {first}\nTraceback line\n"
    runs.to_parquet(current / "runs.parquet", index=False)
    c = cmp.compare(baseline, current)
    status = row(c, "relu-he_normal", "status")
    assert status["mark"] == "new failure"
    assert status["note"] == "seed 0: failed: " + first[:100]
    assert c.benchmarks["note"].iloc[0] == "status: seed 0: failed: " + first[:100]
    # The other way round it is a fix, and says what the run was.
    assert row(cmp.compare(current, baseline), "relu-he_normal", "status")["note"].startswith("seed 0: was failed: ")


def test_a_metric_without_a_value_on_one_side_is_not_comparable(tmp_path):
    # Factor 0: every hidden layer but the last gets no gradient at all, so no final factor can be measured.
    c = compare_specs(tmp_path, [spec("tanh")], [spec("tanh", factor=0.0)])
    r = row(c, "tanh-he_normal", "grad_factor_final")
    assert r["mark"] == "not comparable" and r["note"] == "no finite value in the current"
    assert r["n_baseline"] == 1 and r["n_current"] == 0
    assert "grad_factor_final: no finite value in the current" in c.benchmarks["note"].iloc[0]


def test_seeds_that_differ_are_noted_on_the_benchmark(tmp_path):
    c = compare_specs(tmp_path, _seeded([0.9, 0.9]), _seeded([0.9]))
    (bench,) = c.benchmarks.to_dict("records")
    assert (bench["seeds_baseline"], bench["seeds_current"]) == ([0, 1], [0])
    assert bench["note"] == "seeds differ: baseline [0, 1], current [0]"


def test_a_report_that_cannot_be_written_is_refused_before_anything_is_written(tmp_path, capsys):
    write_results(tmp_path / "baseline", [spec(acc=0.9)])
    write_results(tmp_path / "current", [spec(acc=0.5)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "c.md").write_text("an older report")
    (out / "blocker").write_text("a file where a directory would go")
    code = cli.main(
        [
            "compare",
            str(tmp_path / "baseline"),
            str(tmp_path / "current"),
            "--json",
            str(out / "blocker" / "c.json"),
            "--junit",
            str(out / "c.xml"),
            "--markdown",
            str(out / "c.md"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 2
    err = captured.err
    assert "Cannot write" in err and "c.json" in err and len(err.strip().splitlines()) == 1
    assert f"{str(out / 'blocker')!r} is a file, not a folder" in err
    # Bad input: no report is printed or written, the older one is kept as it was.
    assert captured.out == ""
    assert (out / "c.md").read_text() == "an older report"
    assert sorted(p.name for p in out.iterdir()) == ["blocker", "c.md"]


# --------------------------------------------------------------------------- #
# Real runs
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def real_runs(committed_results):
    """Results of a tiny MLP trained twice, and once with a far too small initialization.

    Committed under tests/data/results/compare (written by the real runner, tests/data/make_results.py).
    """
    return committed_results("compare")


def test_identical_rerun_compares_clean(real_runs):
    baseline, rerun = load_results(real_runs / "baseline"), load_results(real_runs / "rerun")
    # Determinism: everything but the wall time is identical.
    outcome = ["run_id", "status", "steps", "test_accuracy", "test_loss", "train_loss", "data_checksum"]
    pd.testing.assert_frame_equal(baseline.runs[outcome], rerun.runs[outcome])
    pd.testing.assert_frame_equal(baseline.layers, rerun.layers)
    c = cmp.compare(real_runs / "baseline", real_runs / "rerun")
    assert c.exit_code == 0
    gating = c.rows[c.rows["gating"]]
    assert len(gating) >= 5 and set(gating["mark"]) == {"unchanged"}
    assert (gating["change"].fillna(0.0) == 0.0).all()


def test_degraded_run_under_the_same_run_id_is_flagged(real_runs, tmp_path, capsys):
    baseline = load_results(real_runs / "baseline")
    degraded = load_results(real_runs / "degraded")
    run_id = baseline.runs["run_id"].iloc[0]
    # The degraded run's outcome and tables under the baseline's config and run id.
    outcome = [c for c in RUN_OUTCOME_COLUMNS if c in degraded.runs.columns]
    runs = baseline.runs.copy()
    runs[outcome] = degraded.runs[outcome].to_numpy()
    current = tmp_path / "current"
    current.mkdir()
    shutil.copy(real_runs / "baseline" / "manifest.json", current / "manifest.json")
    runs.to_parquet(current / "runs.parquet", index=False)
    degraded.layers.assign(run_id=run_id).to_parquet(current / "layers.parquet", index=False)
    degraded.history.assign(run_id=run_id).to_parquet(current / "history.parquet", index=False)

    code = cli.main(["compare", str(real_runs / "baseline"), str(current), "--json", str(tmp_path / "c.json")])
    report = capsys.readouterr().out
    assert code == 1
    doc = json.loads((tmp_path / "c.json").read_text())
    (bench,) = doc["benchmarks"]
    assert bench["mark"] == "worse" and bench["run_ids_current"] == [run_id]
    worse = {r["metric"] for r in doc["rows"] if r["mark"] == "worse"}
    assert {"test_accuracy", "grad_ratio_final"} <= worse
    assert f"`{bench['benchmark']}`" in report and "**Regression** in 1 of 1 benchmark." in report


# --------------------------------------------------------------------------- #
# Across backends
# --------------------------------------------------------------------------- #


def _on(backend, specs):
    """``specs`` as runs of ``backend`` (run_ids told apart from the other backend's)."""
    return [
        {**s, "config": {**s["config"], "backend": backend}, "run_id": f"{_run_id(s['config'])}-{backend}"}
        for s in specs
    ]


def test_compare_across_backends_pairs_runs_by_the_rest_of_their_identity(tmp_path):
    base = [spec("relu", "he_normal", seed=s, acc=0.90) for s in (0, 1)]
    base += [spec("tanh", "glorot_uniform", seed=s, acc=0.85) for s in (0, 1)]
    same = _on("jax", [spec("relu", "he_normal", seed=s, acc=0.90) for s in (0, 1)])
    same += _on("jax", [spec("tanh", "glorot_uniform", seed=s, acc=0.40) for s in (0, 1)])
    c = compare_specs(tmp_path, base, same)
    # Paired: no benchmark is missing or added, and the tanh drop is judged with the usual tolerance.
    assert marks(c) == {"relu-he_normal": "unchanged", "tanh-glorot_uniform": "worse"}
    assert c.verdict == "regression"
    text = cmp.to_markdown(c)
    assert "backend tensorflow" in text and "backend jax" in text
    assert "Across backends: the baseline ran on tensorflow and the current results on jax" in text
    assert c.baseline["backends"] == ["tensorflow"] and c.current["backends"] == ["jax"]


def test_compare_of_a_baseline_older_than_the_backend_field_is_across_backends(tmp_path):
    old = spec("relu", "he_normal", acc=0.9)
    del old["config"]["backend"]
    c = compare_specs(tmp_path, [old], _on("jax", [spec("relu", "he_normal", acc=0.9)]))
    assert marks(c) == {"relu-he_normal": "unchanged"} and c.verdict == "no change"
    assert any("Across backends" in n for n in c.notes)
    assert not any("exist on one side only" in n for n in c.notes)


def test_compare_with_both_backends_on_a_side_keeps_them_apart(tmp_path):
    both = [spec("relu", "he_normal", acc=0.9), *_on("jax", [spec("relu", "he_normal", acc=0.9)])]
    cur = [spec("relu", "he_normal", acc=0.9), *_on("jax", [spec("relu", "he_normal", acc=0.3)])]
    c = compare_specs(tmp_path, both, cur)
    by_name = dict(zip(c.benchmarks["benchmark"], c.benchmarks["mark"]))
    assert len(by_name) == 2
    (jax_name,) = [n for n in by_name if "-jax-" in n]
    assert by_name[jax_name] == "worse" and set(by_name.values()) == {"worse", "unchanged"}
    assert not any("Across backends" in n for n in c.notes)
