"""The project guards its own numbers: the ci suite on real MNIST, its report, and its comparison to reports/baseline.

The fast tier's one end-to-end suite: `vgbench run` trains it once per session
(the ``ci_suite_results`` fixture in tests/conftest.py), then `vgbench report`
and `vgbench compare` read it as a user's would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from vgbench.bench import protocol, results, suites
from vgbench.bench.cli import main
from vgbench.bench.results import load_results

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "reports" / "baseline"

pytestmark = pytest.mark.mnist


def test_ci_suite_matches_the_committed_baseline(ci_suite_results, tmp_path, capsys):
    assert (BASELINE / "manifest.json").is_file(), "no committed baseline: run `make update-baseline`"
    report, rows = tmp_path / "compare.md", tmp_path / "compare.json"
    code = main(["compare", str(BASELINE), str(ci_suite_results), "--markdown", str(report), "--json", str(rows)])
    capsys.readouterr()
    text = report.read_text() if report.exists() else "(no report written)"
    assert code == 0, f"training dynamics changed against reports/baseline:\n{text}"
    configs = suites.expand(suites.load_suite("ci"))
    assert f"**No regression** in {len(configs)} benchmarks." in text, text
    # Every gating row of every benchmark compared and unchanged, the step-0 gradient rows among them;
    # wall time on a busy machine may differ (it does not gate).
    compared = [r for r in json.loads(rows.read_text())["rows"] if r["gating"] and r["metric"] != "all"]
    assert compared and all(r["mark"] == "unchanged" for r in compared), text
    assert {"backward_factor_init", "forward_factor_init", "theory_deviation_init"} <= {r["metric"] for r in compared}
    runs = load_results(ci_suite_results).runs
    assert sorted(runs.run_id) == sorted(c.run_id for c in configs)
    assert set(runs.status) == {"ok"}


def test_ci_suite_report_shows_the_vanishing_pair(ci_suite_results, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(ci_suite_results), "--out-dir", str(out)]) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    runs = load_results(ci_suite_results).runs
    assert sorted(r for p in summary["pairs"] for r in p["run_ids"]) == sorted(runs.run_id)
    assert (out / "index.html").stat().st_size > 0 and (out / "summary.md").is_file()
    assert not summary["skipped_figures"] or all(s.get("reason") for s in summary["skipped_figures"])

    def ratio(activation, initializer):
        (pair,) = [
            p
            for p in summary["pairs"]
            if (p["activation"], p["initializer"], p["fix"], p["arch"]) == (activation, initializer, "none", "mlp")
        ]
        return pair["grad_ratio_init"]

    # At depth 10 the first layer's gradient of sigmoid/Glorot is orders of magnitude below relu/He's.
    assert ratio("sigmoid", "glorot_uniform") < 0.01 * ratio("relu", "he_normal")


def test_ci_suite_writes_the_contract_tables_with_their_provenance(ci_suite_results):
    from vgbench.bench.config import CONFIG_FIELDS
    from vgbench.bench.results import HISTORY_COLUMNS, LAYER_COLUMNS, RUN_OUTCOME_COLUMNS

    out = ci_suite_results
    r = load_results(out)
    for col in ["run_id", *CONFIG_FIELDS, *RUN_OUTCOME_COLUMNS]:
        assert col in r.runs.columns, col
    assert list(r.layers.columns[: len(LAYER_COLUMNS)]) == LAYER_COLUMNS
    assert list(r.history.columns[: len(HISTORY_COLUMNS)]) == HISTORY_COLUMNS
    # Every run trained its steps and measured every layer at step 0 and at each step after.
    assert (r.runs.steps == r.runs.max_steps).all()
    for run_id, rows in r.layers.groupby("run_id"):
        steps = int(r.runs.set_index("run_id").loc[run_id, "steps"])
        assert sorted(rows.step.unique()) == list(range(steps + 1)), run_id
        assert len(rows) == (steps + 1) * rows.layer_index.nunique(), run_id
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("schema_version", "suite", "command", "created", "git_sha", "packages", "platform", "data"):
        assert key in manifest, key
    assert manifest["suite"] == "ci" and manifest["backend"] == "tensorflow" and manifest["data"]["standard"] is True
    assert set(r.runs.data_checksum) == {manifest["data"]["checksum"]}
    assert set(r.runs.git_sha) == {manifest["git_sha"]}
    assert set(r.runs.keras_version) == {manifest["packages"]["keras"]}


def test_ci_suite_run_again_does_no_work(ci_suite_results, mnist_path, capsys):
    stamps = {p.name: p.stat().st_mtime_ns for p in (ci_suite_results / "runs").iterdir()}
    args = ["run", "--suite", "ci", "--backend", "tensorflow", "--data", str(mnist_path)]
    assert main([*args, "--out", str(ci_suite_results), "--no-progress"]) == 0
    assert f"{len(stamps)} already done, 0 ran" in capsys.readouterr().out
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (ci_suite_results / "runs").iterdir()}


def test_the_rounds_read_the_run_folders_as_the_runs_table_holds_them(ci_suite_results, tmp_path):
    # Between rounds the tables are not rebuilt; the protocol reads each folder's JSON files. On the
    # session's real MNIST suite, that reading equals the consolidated runs.parquet.
    out = tmp_path / "results"
    shutil.copytree(ci_suite_results, out)
    table = pd.read_parquet(out / "runs.parquet").sort_values("run_id", ignore_index=True)
    rows = protocol.read_runs(out).sort_values("run_id", ignore_index=True)
    assert len(rows) == len(table) > 0
    columns = ["run_id", "learning_rate", "seed", "status", "test_accuracy", "depth", "activation"]
    pd.testing.assert_frame_equal(rows[columns], table[columns], check_dtype=False)
    # A folder whose JSON does not validate is left out (the runner redoes it).
    (results.run_dir(out, rows["run_id"][0]) / "result.json").write_text("{")
    assert len(protocol.read_runs(out)) == len(table) - 1
