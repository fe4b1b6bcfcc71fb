"""Tests for bench.report: statistics, figures and the written summaries.

The results come from the real runner (`bench.runner.run_suite`) training
tiny networks on a tiny synthetic dataset, so the report is built from
tables exactly as `vgbench run` writes them (committed under
tests/data/results/report, written by tests/data/make_results.py). Every
number the report states is recomputed here from those tables with plain
numpy, independently of `bench.report.tables`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vgbench.bench import metrics
from vgbench.bench.errors import UsageError
from vgbench.bench.report import document, figures, findings, tables, text
from vgbench.bench.report.build import build_report
from vgbench.bench.report.findings import flatten
from vgbench.bench.results import load_results, write_json_atomic, write_parquet_atomic

pytestmark = pytest.mark.filterwarnings("ignore::vgbench.bench.data.NonStandardDataWarning")

ALL_FIGURES = {
    "gradient_depth",
    "gradient_heatmap",
    "pair_heatmaps",
    "pair_gradients",
    "pair_outcomes",
    "depth_sweep",
    "learning_curves",
    "activation_stats",
    "fixes",
    "activation_functions",
    "theory_vs_measurement",
}

MAIN_DEPTH = 6


@pytest.fixture(scope="module")
def report_results(committed_results, make_results) -> Path:
    """The committed report set (9 runs of the real runner: 2 seeds, 2 depths, 1 fix, 1 diverged run), tiny.npz beside.

    Written by tests/data/make_results.py; the slow tier checks it against a fresh run.
    """
    from vgbench.bench import data

    assert make_results.MAIN_DEPTH == MAIN_DEPTH
    out = committed_results("report")
    npz = make_results.report_npz(out.parent / "tiny.npz")
    with np.load(npz) as f:
        checksum = data.data_checksum({k: data.array_checksum(f[k]) for k in data.ARRAY_KEYS})
    manifest = json.loads((out / "manifest.json").read_text())
    assert checksum == manifest["data"]["checksum"], "tiny.npz is not the data of the committed runs"
    # The file the runs read has moved here (the report reads it for the theory's inputs).
    write_json_atomic(out / "manifest.json", {**manifest, "data": {**manifest["data"], "source": str(npz)}})
    return out


@pytest.fixture(scope="module")
def report_built(report_results) -> Path:
    return build_report(report_results)


@pytest.fixture(scope="module")
def report_summary(report_built) -> dict:
    return json.loads((report_built.parent / "summary.json").read_text())


@pytest.fixture(scope="module")
def report_tables(report_results):
    """(results, run_metrics) recomputed from the stored tables."""
    r = load_results(report_results)
    return r, metrics.run_metrics(r.runs, r.layers)


def _decode_png(data: bytes):
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _pair_key(d: dict) -> tuple:
    return (d["activation"], d["initializer"], int(d["depth"]), d["fix"], float(d["learning_rate"]))


def _geo_mean(values) -> float:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    return float(np.exp(np.mean(np.log(v)))) if len(v) else float("nan")


def _mean_or_none(values: pd.Series):
    return float(np.nanmean(values)) if values.notna().any() else None


def _expected_pairs(runs_m: pd.DataFrame) -> dict:
    """Per pair: the means the summary must state, computed with plain numpy."""
    out = {}
    for key, g in runs_m.groupby(["activation", "initializer", "depth", "fix", "learning_rate"]):
        flags = []
        for row in g.to_dict("records"):
            flags += [f for f in metrics.flags(row) if f not in flags]
        out[(key[0], key[1], int(key[2]), key[3], float(key[4]))] = {
            "n_seeds": len(g),
            "test_accuracy": float(np.nanmean(g["test_accuracy"])),
            "grad_factor_init": _geo_mean(g["grad_factor_init"]),
            "grad_factor_final": _geo_mean(g["grad_factor_final"]),
            "grad_ratio_init": _geo_mean(g["grad_ratio_init"]),
            "grad_ratio_final": _geo_mean(g["grad_ratio_final"]),
            "dead_fraction_final": _mean_or_none(g["dead_fraction_final"]),
            "saturated_fraction_final": _mean_or_none(g["saturated_fraction_final"]),
            "wall_time_s": float(np.mean(g["wall_time_s"])),
            "flags": flags,
            "status": g["status"].iloc[0] if g["status"].nunique() == 1 else None,
            "diverged_step": int(g["diverged_step"].max()) if (g["diverged_step"] >= 0).any() else None,
        }
    return out


def _close(actual, expected, rel=1e-9):
    if expected is None or (isinstance(expected, float) and not np.isfinite(expected)):
        return actual is None
    return actual == pytest.approx(expected, rel=rel, abs=1e-12)


# --------------------------------------------------------------------------- #
# The whole report
# --------------------------------------------------------------------------- #


def test_every_file_exists_and_every_image_decodes(report_built, report_summary):
    out = report_built.parent
    assert report_built.name == "index.html" and out.name == "report"
    for name in ("index.html", "summary.md", "summary.json"):
        assert (out / name).stat().st_size > 0
    assert report_summary["skipped_figures"] == []
    assert {f["name"] for f in report_summary["figures"]} == ALL_FIGURES
    for fig in report_summary["figures"]:
        assert fig["files"] == [f"{fig['name']}.png"]
        img = _decode_png((out / fig["files"][0]).read_bytes())
        assert img.format == "PNG" and min(img.size) > 150
        assert fig["caption"]


def test_index_html_is_self_contained_with_provenance(report_built, report_summary, report_tables):
    text = report_built.read_text()
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == len(ALL_FIGURES)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        _decode_png(base64.b64decode(src.split(",", 1)[1]))
    assert "<link" not in text and "http://" not in text and "https://" not in text
    results, _ = report_tables
    m = results.manifest
    for value in (m["git_sha"], m["data"]["checksum"], m["data"]["source"], m["suite"], m["packages"]["keras"]):
        assert value in text
    for fig in report_summary["figures"]:
        assert html.escape(fig["caption"]) in text


def test_the_provenance_names_each_dataset_of_a_directory_trained_on_several():
    # The claims suite trains on MNIST and on Gaussian inputs: its manifest describes each by name.
    mnist = {"name": "mnist", "source": "mnist.npz", "checksum": "8f81c22911c9" + "0" * 52, "n_train": 60000}
    gaussian = {"name": "gaussian", "source": "generated", "checksum": "c7d5ca85145a" + "1" * 52, "n_train": 12800}
    one = {"provenance": document.provenance({"data": mnist})}
    several = {"provenance": document.provenance({"data": {"mnist": mnist, "gaussian": gaussian}})}
    assert document.data_text(one) == "mnist (checksum 8f81c22911c9…)"
    assert document.data_text(several) == "mnist (checksum 8f81c22911c9…), gaussian (checksum c7d5ca85145a…)"
    rows = dict(document._provenance_rows(several))
    assert (
        rows["data checksum (gaussian)"] == gaussian["checksum"] and rows["data checksum (mnist)"] == mnist["checksum"]
    )
    assert "n_train 12800" in rows["data (gaussian)"]
    assert dict(document._provenance_rows(one))["data checksum"] == mnist["checksum"]
    # The budget's totals are those the datasets agree on; the chance level is 1/10 from either.
    runs = pd.DataFrame({"dataset": ["mnist", "gaussian"]})
    assert tables._dataset_field({"data": {"mnist": mnist, "gaussian": gaussian}}, "n_train") is None
    assert tables._dataset_field({"data": {"mnist": mnist, "gaussian": gaussian}}, "n_train", ["gaussian"]) == 12800
    assert tables._dataset_field({"data": mnist}, "n_train", list(runs.dataset)) == 60000


def test_the_theory_reads_generated_data_again_and_a_missing_file_not_at_all(tmp_path):
    from vgbench.bench import data
    from vgbench.bench.report import predictions

    gaussian = data.load_dataset("gaussian")
    info = {"name": "gaussian", "source": gaussian.source, "checksum": gaussian.checksum}
    again = predictions._load(info)
    assert again is not None and again.checksum == gaussian.checksum
    assert predictions._load({**info, "checksum": "0" * 64}) is None  # not the data the runs read
    assert predictions._load({"name": "mnist", "source": str(tmp_path / "gone.npz"), "checksum": "0" * 64}) is None


def test_the_report_reads_the_layers_table_with_categories_as_with_strings(report_tables):
    # build.compute_tables turns run_id and layer_name into categories for speed: the numbers must not move.
    from vgbench.bench.report import build

    results, runs_m = report_tables
    layers = build._categorical_strings(results.layers)
    assert isinstance(layers["run_id"].dtype, pd.CategoricalDtype)
    assert isinstance(layers["layer_name"].dtype, pd.CategoricalDtype)
    pd.testing.assert_frame_equal(metrics.run_metrics(results.runs, layers), runs_m)
    main_runs, _ = tables.main_slice(runs_m)
    a = tables.activation_profiles(main_runs, results.layers)
    b = tables.activation_profiles(main_runs, layers)
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_categorical=False)


def test_summary_pairs_equal_numbers_computed_from_the_tables(report_summary, report_tables):
    _, runs_m = report_tables
    expected = _expected_pairs(runs_m)
    pairs = report_summary["pairs"]
    assert {_pair_key(p) for p in pairs} == set(expected)
    for p in pairs:
        e = expected[_pair_key(p)]
        assert p["n_seeds"] == e["n_seeds"]
        assert p["flags"] == e["flags"]
        if e["status"]:
            assert p["status"] == e["status"]
        assert p["diverged_step"] == e["diverged_step"]
        for q in (
            "test_accuracy",
            "grad_factor_init",
            "grad_factor_final",
            "grad_ratio_init",
            "grad_ratio_final",
            "dead_fraction_final",
            "saturated_fraction_final",
            "wall_time_s",
        ):
            assert _close(p[q], e[q]), (p, q, e[q])
    # Ranked by mean test accuracy, best first.
    acc = [p["test_accuracy"] for p in pairs]
    assert acc == sorted(acc, reverse=True)
    assert [p["rank"] for p in pairs] == list(range(1, len(pairs) + 1))


def test_two_seed_interval_is_the_student_t_interval(report_summary, report_tables):
    from scipy import stats as st

    _, runs_m = report_tables
    g = runs_m[
        (runs_m["activation"] == "relu") & (runs_m["depth"] == MAIN_DEPTH) & (runs_m["initializer"] == "glorot_uniform")
    ]
    g = g[(g["fix"] == "none") & (g["learning_rate"] == 0.1)]
    assert len(g) == 2
    acc = g["test_accuracy"].to_numpy()
    lo, hi = st.t.interval(0.95, len(acc) - 1, loc=acc.mean(), scale=st.sem(acc))
    p = next(p for p in report_summary["pairs"] if _pair_key(p) == ("relu", "glorot_uniform", MAIN_DEPTH, "none", 0.1))
    if acc[0] == acc[1]:
        assert p["test_accuracy_lo"] == p["test_accuracy_hi"] == pytest.approx(acc.mean())
    else:
        assert p["test_accuracy_lo"] == pytest.approx(max(lo, 0.0))
        assert p["test_accuracy_hi"] == pytest.approx(min(hi, 1.0))


def _md_table(text: str) -> list[dict]:
    lines = text.split("## Pairs, best first", 1)[1].strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, [c.strip() for c in line.strip("|").split("|")])))
    return rows


def _cell(text: str):
    """A number of the Markdown table; '–' is a missing value."""
    return None if text.strip() == "–" else float(text)


def test_markdown_table_states_the_same_numbers(report_built, report_summary):
    rows = _md_table((report_built.parent / "summary.md").read_text())
    pairs = report_summary["pairs"]
    assert len(rows) == len(pairs)
    for row, p in zip(rows, pairs):
        assert (
            row["activation"],
            row["initializer"],
            int(row["depth"]),
            row["fix"],
            float(row["learning_rate"]),
        ) == _pair_key(p)
        assert int(row["seeds"]) == p["n_seeds"]
        accuracy = _cell(row["test accuracy"].split("%")[0])
        assert accuracy == (None if p["test_accuracy"] is None else pytest.approx(100 * p["test_accuracy"], abs=0.051))
        for header, key in (
            ("grad factor (step 0)", "grad_factor_init"),
            ("grad factor (end)", "grad_factor_final"),
            ("first/last (step 0)", "grad_ratio_init"),
            ("first/last (end)", "grad_ratio_final"),
        ):
            want = p[key]
            assert _cell(row[header]) == (None if want is None else pytest.approx(want, rel=5e-3)), header
        assert row["flags"] == "; ".join(p["flags"]).replace("|", "\\|")


def test_findings_state_the_numbers_of_their_pairs(report_summary, report_tables):
    _, runs_m = report_tables
    expected = _expected_pairs(runs_m)
    bullets = report_summary["findings"]
    findings = flatten(bullets)
    kinds = [f["kind"] for f in bullets]
    # No claim has its runs here: no claims bullet; the best and the worst of one setting come first.
    assert kinds[:2] == ["best", "worst"]
    assert len(bullets) <= 12
    best = report_summary["pairs"][0]
    assert findings[0]["text"].startswith("Best: ")
    assert text.pct(best["test_accuracy"]) in findings[0]["text"]
    assert f"×{best['grad_factor_init']:.2f} per layer" in findings[0]["text"]
    # Best and worst compare like with like: the same depth (the report's slice).
    assert bullets[0]["pair"]["depth"] == bullets[1]["pair"]["depth"] == MAIN_DEPTH
    assert bullets[1]["text"].startswith("Worst in the same setting: ")
    for f in findings:
        if f["kind"] in ("best", "worst", "flagged"):
            e = expected[_pair_key(f["pair"])]
            assert f["values"]["test_accuracy"] == pytest.approx(e["test_accuracy"])
            assert text.power_of_ten(e["grad_ratio_init"]) in f["text"]
    # Every pair flagged for its gradients, besides the best and the worst, gets a sentence.
    ends = {_pair_key(f["pair"]) for f in findings if f["kind"] in ("best", "worst")}
    gradient_flags = lambda p: [x for x in p["flags"] if x not in ("diverged", "failed")]  # noqa: E731
    flagged = {_pair_key(p) for p in report_summary["pairs"] if gradient_flags(p) and _pair_key(p) not in ends}
    assert flagged == {_pair_key(f["pair"]) for f in findings if f["kind"] == "flagged"}
    # One bullet per failure mode, naming every pair flagged with it (the best and the worst included).
    modes = {b["mode"]: b for b in bullets if b["kind"] == "mode"}
    assert len(modes) == sum(1 for b in bullets if b["kind"] == "mode")
    for p in report_summary["pairs"]:
        for flag in gradient_flags(p):
            bullet = modes[flag.split("@")[0]]
            assert _pair_key(p) in {_pair_key(i["pair"]) for i in bullet["items"]}
            assert text.pair_label(p) in bullet["text"]
    # The diverged run has its own sentence, with the step it diverged at.
    runs = runs_m[runs_m["status"] == "diverged"]
    assert len(runs) == 1
    problem = [f for f in findings if f["kind"] == "problem"]
    assert [_pair_key(f["pair"]) for f in problem] == [_pair_key(runs.iloc[0])]
    assert f"diverged in 1 of 1 seed(s), first at step {int(runs['diverged_step'].iloc[0])}" in problem[0]["text"]
    assert "diverged" in problem[0]["flags"]


def test_fix_and_depth_findings_match_the_tables(report_summary, report_tables):
    _, runs_m = report_tables
    base = runs_m[
        (runs_m["activation"] == "sigmoid")
        & (runs_m["depth"] == MAIN_DEPTH)
        & (runs_m["initializer"] == "glorot_uniform")
    ]
    fixed = base[base["fix"] == "batchnorm"]
    plain = base[base["fix"] == "none"]
    fix = next(f for f in flatten(report_summary["findings"]) if f["kind"] == "fix")
    assert fix["fix"] == "batchnorm"
    assert fix["values"]["baseline_test_accuracy"] == pytest.approx(plain["test_accuracy"].mean())
    assert fix["values"]["test_accuracy"] == pytest.approx(fixed["test_accuracy"].mean())
    assert fix["values"]["baseline_grad_ratio_init"] == pytest.approx(_geo_mean(plain["grad_ratio_init"]))
    assert fix["values"]["grad_ratio_init"] == pytest.approx(_geo_mean(fixed["grad_ratio_init"]))

    depth = {f["activation"]: f for f in flatten(report_summary["findings"]) if f["kind"] == "depth"}
    assert set(depth) == {"relu", "sigmoid"}
    for act, f in depth.items():
        g = runs_m[
            (runs_m["activation"] == act) & (runs_m["initializer"] == "glorot_uniform") & (runs_m["fix"] == "none")
        ]
        assert f["depths"] == [3, MAIN_DEPTH]
        want = [_geo_mean(g.loc[g["depth"] == d, "grad_ratio_init"]) for d in (3, MAIN_DEPTH)]
        assert f["values"]["grad_ratio_init"] == pytest.approx(want)


def test_budget_is_read_from_the_runs(report_built, report_summary, report_tables):
    results, _ = report_tables
    runs = results.runs
    b = report_summary["budget"]
    assert b["runs"] == len(runs) == 9
    assert b["steps"] == [int(runs["steps"].min()), int(runs["steps"].max())]
    assert b["max_steps"] == [12] and b["epochs"] == [2] and b["seeds"] == [0, 1]
    assert b["seeds_per_pair"] == [1, 2]
    assert b["n_train"] == 160 and b["n_test"] == 40
    assert b["text"] in (report_built.parent / "summary.md").read_text()
    assert "at most 12 steps" in b["text"]


# --------------------------------------------------------------------------- #
# Missing data, bad directories, the command line
# --------------------------------------------------------------------------- #


def _subset(src: Path, dst: Path, keep, history=True) -> Path:
    """A results directory holding only the runs for which ``keep(row)`` is true."""
    r = load_results(src)
    runs = r.runs[[bool(keep(row)) for row in r.runs.to_dict("records")]]
    dst.mkdir(parents=True)
    write_json_atomic(dst / "manifest.json", r.manifest)
    write_parquet_atomic(dst / "runs.parquet", runs)
    write_parquet_atomic(dst / "layers.parquet", r.layers[r.layers["run_id"].isin(runs["run_id"])])
    h = r.history[r.history["run_id"].isin(runs["run_id"])] if history else r.history.iloc[0:0]
    write_parquet_atomic(dst / "history.parquet", h)
    return dst


def test_missing_data_skips_figures_with_reasons(report_results, tmp_path, capsys):
    from vgbench.bench.cli import main

    src = _subset(
        report_results,
        tmp_path / "one-depth",
        lambda r: r["depth"] == MAIN_DEPTH and r["fix"] == "none",
        history=False,
    )
    out = tmp_path / "report"
    out.mkdir()
    (out / "fixes.png").write_bytes(b"left by an earlier report")
    (out / "gradient_depth.pdf").write_bytes(b"left by an earlier report in another format")
    assert main(["report", str(src), "--out-dir", str(out), "--format", "png,svg"]) == 0
    assert str(out / "index.html") in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    skipped = {s["name"]: s["reason"] for s in summary["skipped_figures"]}
    assert set(skipped) == {"depth_sweep", "fixes", "learning_curves"}
    assert "two or more depths" in skipped["depth_sweep"]
    assert "no run used a fix" in skipped["fixes"]
    assert "history" in skipped["learning_curves"]
    assert not (out / "fixes.png").exists()
    assert not (out / "gradient_depth.pdf").exists()
    for fig in summary["figures"]:
        assert fig["files"] == [f"{fig['name']}.png", f"{fig['name']}.svg"]
        assert (out / f"{fig['name']}.svg").read_text().lstrip().startswith("<?xml")
    md = (out / "summary.md").read_text()
    assert "## Skipped figures" in md and skipped["fixes"] in md


def test_figure_function_warns_and_returns_skipped_without_its_data(report_tables):
    _, runs_m = report_tables
    one_depth = runs_m[runs_m["depth"] == MAIN_DEPTH]
    palette = figures.category_palette(runs_m["activation"])
    with pytest.warns(figures.MissingDataWarning, match="two or more depths"):
        skipped = figures.depth_sweep(tables.depth_sweep(one_depth), palette)
    assert isinstance(skipped, figures.Skipped) and "two or more depths" in skipped.reason
    with pytest.warns(figures.MissingDataWarning, match="lacks column"):
        skipped = figures.gradient_depth(pd.DataFrame({"activation": ["relu"]}), palette)
    assert isinstance(skipped, figures.Skipped) and "lacks column(s) initializer" in skipped.reason
    assert "layer_index" in figures.gradient_depth.required_columns


def test_bad_directories_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        build_report(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="not a vgbench results directory"):
        build_report(empty)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    with pytest.raises(UsageError, match="not a vgbench results directory"):
        build_report(foreign)
    no_runs = tmp_path / "no-runs"
    no_runs.mkdir()
    write_json_atomic(no_runs / "manifest.json", {"schema_version": 1})
    with pytest.raises(UsageError, match="no finished runs"):
        build_report(no_runs)
    with pytest.raises(UsageError, match="Unknown figure format 'gif'"):
        build_report(no_runs, formats="png,gif")
    with pytest.raises(UsageError, match="No figure format given"):
        build_report(no_runs, formats=",")
    assert not (empty / "report").exists()


# --------------------------------------------------------------------------- #
# Statistics against plain references
# --------------------------------------------------------------------------- #


def test_summarize_is_mean_and_t_interval_and_geometric_in_log_space():
    from scipy import stats as st

    df = pd.DataFrame({"g": ["a", "a", "a", "b", "c", "c"], "v": [1.0, 2.0, 4.0, 5.0, 1e-2, 1e-4]})
    s = tables.summarize(df, ["g"], "v").set_index("g")
    lo, hi = st.t.interval(0.95, 2, loc=7 / 3, scale=st.sem([1.0, 2.0, 4.0]))
    assert (s.loc["a", "n"], s.loc["a", "mean"]) == (3, pytest.approx(7 / 3))
    assert (s.loc["a", "lo"], s.loc["a", "hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert s.loc["b", "lo"] == s.loc["b", "hi"] == 5.0
    g = tables.summarize(df, ["g"], "v", log=True).set_index("g")
    assert g.loc["c", "mean"] == pytest.approx(1e-3)
    assert g.loc["a", "mean"] == pytest.approx(2.0)


def test_activation_curves_show_the_known_derivatives():
    curves = tables.activation_curves(["sigmoid", "relu"])
    sig = curves[curves["activation"] == "sigmoid"]
    relu = curves[curves["activation"] == "relu"]
    assert sig["df"].max() == pytest.approx(0.25, abs=1e-4)
    assert sig.loc[sig["x"].abs().idxmin(), "f"] == pytest.approx(0.5, abs=1e-3)
    assert set(np.round(relu.loc[relu["x"].abs() > 0.01, "df"], 6)) == {0.0, 1.0}
    assert "note" not in curves.attrs


def test_every_activation_keeps_its_colour():
    a = figures.category_palette(["tanh", "relu", "sigmoid", "relu"])
    b = figures.category_palette(["sigmoid", "tanh", "relu"])
    assert a == b and list(a) == ["relu", "sigmoid", "tanh"]
    assert len(set(a.values())) == 3


def test_stray_commas_in_the_format_list_are_ignored():
    from vgbench.bench.report.build import _check_formats

    assert _check_formats("png,") == ("png",)
    assert _check_formats(" png,,SVG ") == ("png", "svg")


def test_summary_json_keeps_its_order_and_unicode_and_the_notes_name_the_measure(report_built):
    out = report_built.parent
    text = (out / "summary.json").read_text(encoding="utf-8")
    assert next(iter(json.loads(text))) == "report_version"
    assert "×" in text and "\\u00d7" not in text
    for name in ("summary.md", "index.html"):
        page = (out / name).read_text(encoding="utf-8")
        assert "RMS kernel gradient per weight (‖∂L/∂W‖/√|W|)" in page
        assert "gradient norm" not in page


# --------------------------------------------------------------------------- #
# Tables and findings on edited inputs
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def report_pairs(report_tables):
    """(results, run table with flags, pair table) of the test results."""
    from vgbench.bench.report import predictions

    r, _ = report_tables
    runs_m = tables.run_table(r.runs, r.layers, predictions.predict_runs(r.runs, r.manifest).runs)
    return r, runs_m, tables.pair_table(runs_m)


def test_seeds_and_run_ids_line_up_in_numeric_seed_order(report_pairs):
    _, runs_m, _ = report_pairs
    m = runs_m.copy()
    pair = (m["activation"] == "relu") & (m["initializer"] == "glorot_uniform") & (m["depth"] == MAIN_DEPTH)
    pair &= (m["fix"] == "none") & (m["learning_rate"] == 0.1)
    assert sorted(m.loc[pair, "seed"]) == [0, 1]
    # As text, "s10" sorts before "s2": the order must come from the seeds.
    m.loc[pair, "seed"] = m.loc[pair, "seed"].map({0: 10, 1: 2})
    m.loc[pair, "run_id"] = "run-s" + m.loc[pair, "seed"].astype(str)
    row = tables.pair_table(m).set_index(["activation", "initializer", "depth", "fix", "learning_rate"])
    row = row.loc[("relu", "glorot_uniform", MAIN_DEPTH, "none", 0.1)]
    assert row["seeds"] == [2, 10]
    assert row["run_ids"] == ["run-s2", "run-s10"]


def test_an_underflowed_gradient_is_the_most_vanishing_value(report_pairs):
    r, runs_m, pairs = report_pairs
    # Gradient profile: a zero in one seed makes the geometric mean 0.
    layers = r.layers.copy()
    run = runs_m[(runs_m["activation"] == "relu") & (runs_m["initializer"] == "glorot_uniform")]
    run = run[(run["depth"] == MAIN_DEPTH) & (run["fix"] == "none") & (run["learning_rate"] == 0.1)]
    first = (layers["run_id"] == run["run_id"].iloc[0]) & (layers["step"] == 0) & (layers["layer_index"] == 0)
    layers.loc[first, "kernel_grad_norm"] = 0.0
    main_runs, _ = tables.main_slice(runs_m)
    p = tables.gradient_profiles(main_runs, layers)
    cell = p.set_index(["activation", "initializer", "parameter", "when", "layer_index"]).loc[
        ("relu", "glorot_uniform", "kernel", "step 0", 0)
    ]
    assert (cell["n"], cell["mean"]) == (2, 0.0)

    # Layer × step heatmap: a ratio of 0 is the most unequal gradient.
    others = pairs.iloc[1:]
    ratio = others["grad_ratio_final"].fillna(others["grad_ratio_init"])
    mildest = (np.abs(np.log10(ratio))).idxmin()
    edited = pairs.copy()
    edited.loc[mildest, "grad_ratio_final"] = 0.0
    worst = tables.heatmap_runs(edited, r.layers)
    assert set(worst.loc[worst["role"] == "worst", "run_id"]) <= set(pairs.loc[mildest, "run_ids"])

    # Activation × initializer grid: log10(0) is -inf, drawn at the low end and labelled.
    sig = (edited["activation"] == "sigmoid") & (edited["initializer"] == "glorot_uniform")
    sig &= (edited["depth"] == MAIN_DEPTH) & (edited["fix"] == "none")
    edited.loc[sig, ["grad_ratio_init", "grad_factor_init"]] = 0.0
    _, main = tables.main_slice(runs_m)
    grid = tables.pair_grid(edited, main)
    ratios = grid[grid["quantity"] == "grad_ratio_init"].set_index(["activation", "initializer"])["value"]
    assert ratios[("sigmoid", "glorot_uniform")] == -np.inf
    assert np.isfinite(ratios[("relu", "glorot_uniform")])
    fig = figures.pair_heatmaps(grid, figures.category_palette(edited["activation"]))
    try:
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    finally:
        figures.plt.close(fig)
    assert "underflow" in texts and "0.00" in texts


def test_pair_grid_shows_the_slice_it_is_given(report_pairs):
    _, runs_m, pairs = report_pairs
    _, main = tables.main_slice(runs_m)
    assert main["depth"] == MAIN_DEPTH
    grid = tables.pair_grid(pairs, {**main, "depth": 3})
    acc = grid[grid["quantity"] == "test_accuracy"].set_index("activation")["value"]
    at3 = pairs[(pairs["depth"] == 3) & (pairs["fix"] == "none") & (pairs["learning_rate"] == 0.1)]
    assert acc.sort_index().to_dict() == at3.set_index("activation")["test_accuracy"].sort_index().to_dict()
    assert "depth 3" in grid.attrs["slice"]


def test_depth_finding_takes_accuracies_at_the_depths_of_its_ratios():
    rows = []
    for act, ratio, acc in (
        ("sigmoid", {3: 1e-2, 6: 1e-5}, {2: 0.9, 3: 0.8, 6: 0.3, 9: 0.1}),
        ("relu", {3: 0.5, 6: 0.4}, {3: 0.9, 9: 0.8}),
    ):
        rows += [("grad_ratio_init", act, d, v) for d, v in ratio.items()]
        rows += [("test_accuracy", act, d, v) for d, v in acc.items()]
    sweep = pd.DataFrame(rows, columns=["quantity", "activation", "depth", "mean"]).assign(initializer="glorot_uniform")
    found = {f.activation: f for f in findings.depth_findings(sweep)}
    assert found["sigmoid"].values["test_accuracy"] == [0.8, 0.3]
    assert "test accuracy 80% → 30%" in findings.render(found["sigmoid"], chance=0.1)
    # No accuracy at depth 6: the sentence says nothing about accuracy.
    assert found["relu"].values["test_accuracy"] == [0.9, None]
    assert "accuracy" not in findings.render(found["relu"], chance=0.1)


def _pairs_frame(rows: list[dict]) -> pd.DataFrame:
    """A ranked pair table from a few fields per pair (the rest missing)."""
    base = {"initializer": "glorot_uniform", "depth": 20, "fix": "none", "n_seeds": 1, "statuses": {"ok": 1}}
    base |= {"flags": [], "diverged_step": np.nan, "error": ""}
    base |= {q: np.nan for q in tables.PAIR_QUANTITIES}
    df = pd.DataFrame([base | r for r in rows])
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return df


def test_best_and_worst_are_chosen_among_pairs_that_finished_ok():
    pairs = _pairs_frame(
        [
            {"activation": "relu", "test_accuracy": 0.95, "statuses": {"ok": 1, "diverged": 1}, "n_seeds": 2},
            {"activation": "tanh", "test_accuracy": 0.9},
            {"activation": "sigmoid", "test_accuracy": 0.2},
            {"activation": "elu", "test_accuracy": 0.1, "statuses": {"diverged": 1}, "flags": ["diverged"]},
        ]
    )
    found = findings.written(pairs, pd.DataFrame(), pd.DataFrame(), chance=0.1)
    ends = {f["kind"]: f["pair"]["activation"] for f in found if f["kind"] in ("best", "worst")}
    assert ends == {"best": "tanh", "worst": "sigmoid"}
    assert [f["pair"]["activation"] for f in flatten(found) if f["kind"] == "problem"] == ["relu", "elu"]
    # Both diverged pairs share one bullet.
    assert [b["kind"] for b in found].count("problems") == 1


def test_flagged_pairs_are_listed_most_severe_first(monkeypatch):
    vanishing = ["vanishing@init"]
    pairs = _pairs_frame(
        [
            {"activation": "relu", "test_accuracy": 0.9},
            {"activation": "elu", "test_accuracy": 0.5, "grad_factor_init": 0.45, "flags": vanishing},
            {"activation": "tanh", "test_accuracy": 0.4, "grad_factor_init": 0.2, "flags": vanishing},
            {"activation": "sigmoid", "test_accuracy": 0.3, "grad_factor_init": 0.0, "flags": vanishing},
            {"activation": "gelu", "test_accuracy": 0.2},
            {
                "activation": "selu",
                "statuses": {"diverged": 1},
                "grad_factor_init": 0.4,
                "flags": ["diverged", *vanishing],
            },
        ]
    )
    monkeypatch.setattr(findings, "MAX_PAIR_FINDINGS", 2)
    found = findings.find(pairs, pd.DataFrame(), pd.DataFrame())
    assert [f.pair["activation"] for f in found if f.kind == "flagged"] == ["selu", "sigmoid"]
    assert findings.render(next(f for f in found if f.kind == "more"), chance=0.1).startswith("2 more flagged")
    # The written bullet of the mode names every flagged pair, most severe first.
    written = findings.written(pairs, pd.DataFrame(), pd.DataFrame(), chance=0.1)
    (bullet,) = [b for b in written if b["kind"] == "mode"]
    assert bullet["mode"] == "vanishing" and bullet["text"].startswith("Vanishing gradient in 4 pairs: ")
    names = [part.split(" + ")[0] for part in bullet["text"].split(": ", 1)[1].split("; ")]
    # The mode's own number decides: ×0 (underflow), ×0.2, ×0.4, ×0.45.
    assert names == ["sigmoid", "tanh", "selu", "elu"]


def test_a_gradient_collapsed_in_training_has_its_own_bullet_not_the_vanishing_one():
    pairs = _pairs_frame(
        [
            {"activation": "relu", "test_accuracy": 0.9},
            {"activation": "tanh", "test_accuracy": 0.5},
            {"activation": "sigmoid", "test_accuracy": 0.1, "grad_factor_init": 0.2, "flags": ["vanishing@init"]},
            {"activation": "selu", "test_accuracy": 0.087, "flags": ["collapse@final", "underflow@final"]},
        ]
    )
    written = findings.written(pairs, pd.DataFrame(), pd.DataFrame(), chance=0.1)
    modes = {b["mode"]: b["text"] for b in written if b["kind"] == "mode"}
    assert modes["vanishing"].startswith("Vanishing gradient in 1 pair: sigmoid + ")
    title = "Gradient collapsed to exactly 0 in training (not vanishing at step 0)"
    assert modes["collapse"].startswith(f"{title} in 1 pair: selu + ")
    assert "selu + " in modes["collapse"] and "all 0 at the end, accuracy 8.7% = chance" in modes["collapse"]


def _runs_frame(rows: list[dict]) -> pd.DataFrame:
    """A run table (as `tables.run_table` returns it) from a few fields per run."""
    base = {"arch": "mlp", "activation": "relu", "initializer": "he_normal", "depth": 4, "fix": "none"}
    base |= {"seed": 0, "log_every": 1, "act_every": 10, "status": "ok", "diverged_step": -1, "error": "", "flags": []}
    base |= {q: 0.5 for q in tables.PAIR_QUANTITIES}
    return pd.DataFrame([base | {"run_id": f"run-{i}"} | r for i, r in enumerate(rows)])


def test_pairs_group_by_benchmark_fields_and_keep_statuses_and_flags_as_data():
    runs_m = _runs_frame(
        [
            # Provenance and measurement settings differ: still one benchmark.
            {"seed": 0, "git_sha": "aaa", "act_every": 5, "flags": ["vanishing@init"]},
            {
                "seed": 1,
                "git_sha": "bbb",
                "status": "diverged",
                "diverged_step": 7,
                "flags": ["diverged", "vanishing@init"],
            },
            {"seed": 2, "git_sha": "aaa", "status": "failed", "error": "ValueError: boom", "flags": ["failed"]},
            {"seed": 0, "git_sha": "aaa", "depth": 8},
        ]
    )
    pairs = tables.pair_table(runs_m)
    assert "git_sha" not in tables.pair_keys(pairs) and "act_every" not in tables.pair_keys(pairs)
    assert sorted(pairs["n_seeds"]) == [1, 3]
    row = pairs[pairs["depth"] == 4].iloc[0]
    assert row["statuses"] == {"ok": 1, "diverged": 1, "failed": 1}
    assert row["status"] == "1 ok, 1 diverged, 1 failed"
    assert row["flags"] == ["vanishing@init", "diverged", "failed"]
    problem = next(f for f in findings.find(pairs, pd.DataFrame(), pd.DataFrame()) if f.kind == "problem")
    assert problem.statuses == {"ok": 1, "diverged": 1, "failed": 1} and problem.diverged_step == 7
    sentence = findings.render(problem, chance=0.1)
    assert "diverged in 1 of 3 seed(s), first at step 7" in sentence
    assert "failed in 1 of 3 seed(s) (ValueError: boom)" in sentence
    # Rendering reads the counts, never the status text.
    other = pairs.assign(status="unreadable")
    assert (
        findings.render(
            next(f for f in findings.find(other, pd.DataFrame(), pd.DataFrame()) if f.kind == "problem"), chance=0.1
        )
        == sentence
    )


def test_facet_lines_draw_a_panel_per_row_with_data_and_initializer():
    rows = []
    for init in ("glorot_uniform", "he_normal"):
        for act in ("relu", "sigmoid", "tanh"):
            for i in range(4):
                v = 10.0**-i if act == "sigmoid" else 1.0
                rows.append(
                    {
                        "activation": act,
                        "initializer": init,
                        "parameter": "kernel",
                        "when": "step 0",
                        "layer_index": i,
                        "n": 1,
                        "mean": v,
                        "lo": v,
                        "hi": v,
                    }
                )
    profiles = pd.DataFrame(rows)
    palette = figures.category_palette(profiles["activation"])
    fig = figures.gradient_depth(profiles, palette)
    try:
        axes = [ax for ax in fig.axes if ax.get_visible()]
        # Only the kernel rows at step 0 have data: one row, a panel per initializer.
        assert [ax.get_title() for ax in axes] == ["glorot_uniform", "he_normal"]
        for ax in axes:
            assert ax.get_yscale() == "log"
            assert len(ax.lines) == 3
            sigmoid = next(line for line in ax.lines if line.get_color() == palette["sigmoid"])
            assert list(sigmoid.get_ydata()) == [1.0, 0.1, 0.01, 0.001]
        assert axes[0].get_ylabel() == "rms ∂L/∂W per weight\nstep 0"
    finally:
        figures.plt.close(fig)


# --------------------------------------------------------------------------- #
# Theory beside the measurements
# --------------------------------------------------------------------------- #


def _probe_moments(report_results: Path, batch_size: int) -> np.ndarray:
    """Per-example E[x²] of the batch measured at step 0, rebuilt from the npz with plain numpy (float32 inputs)."""
    with np.load(report_results.parent / "tiny.npz") as f:
        x = (f["x_train"].astype(np.float32) / np.float32(255)).astype(np.float64)
    x = x.reshape(len(x), -1)[:batch_size]
    return (x**2).mean(axis=1)


def test_summary_carries_predictions_and_measurements_per_run(report_summary, report_results, report_tables):
    from vgbench.bench import theory
    from vgbench.bench.config import RunConfig

    _, runs_m = report_tables
    section = report_summary["theory"]
    assert section["tolerance"] == 1.1
    assert len(section["inputs"]) == 1 and section["inputs"][0]["exact"]
    by_run = {r["run_id"]: r for r in section["runs"]}
    assert set(by_run) == set(runs_m["run_id"])
    moments = _probe_moments(report_results, 32)
    for row in runs_m.to_dict("records"):
        entry = by_run[row["run_id"]]
        for key in ("backward_factor_init", "forward_factor_init", "grad_factor_init", "underflow_layers_init"):
            assert _close(entry["measured"][key], row[key]), key
        config = RunConfig.from_dict({k: row[k] for k in RunConfig.__dataclass_fields__ if k in row})
        if config.fix == "batchnorm":
            assert not entry["applicable"] and "batch normalization" in entry["reason"]
            assert entry["predicted"]["backward_factor"] is None
            continue
        assert entry["applicable"] and entry["input_exact"]
        want = theory.predict_config(config, moments, input_dim=64)
        assert entry["predicted"]["backward_factor"] == pytest.approx(want.factor, rel=1e-9)
        assert entry["predicted"]["forward_factor"] == pytest.approx(want.forward_factor, rel=1e-9)
        assert entry["predicted"]["chi1"] == pytest.approx(want.chi1, rel=1e-9)
        assert entry["predicted"]["phase"] == want.phase
        assert entry["predicted"]["input_second_moment"] == pytest.approx(moments.mean())
    # Pairs carry their prediction too (the first seed's: it does not depend on the seed).
    for p in report_summary["pairs"]:
        first = by_run[p["run_ids"][0]]["predicted"]["backward_factor"]
        assert p["predicted_backward_factor"] == (None if first is None else pytest.approx(first))


def test_theory_figure_plots_every_covered_pair_against_its_prediction(report_pairs):
    _, _, pairs = report_pairs
    points = tables.theory_points(pairs)
    covered = pairs[pairs["theory_applicable"]]
    assert len(covered) == len(pairs) - 1  # the batchnorm pair is left out, with its reason
    assert len(points.attrs["excluded"]) == 1 and "batch normalization" in points.attrs["excluded"][0]
    back = points[points["signal"] == "backward"].set_index("label")
    for r in covered.to_dict("records"):
        row = back.loc[text.pair_label(r, tables.varying_keys(pairs))]
        assert (row["measured"], row["predicted"]) == (r["backward_factor_init"], r["predicted_backward_factor"])
        want = abs(np.log10(r["backward_factor_init"] / r["predicted_backward_factor"]))
        assert row["deviation"] == pytest.approx(want)
    fig = figures.theory_vs_measurement(points, figures.category_palette(pairs["activation"]))
    try:
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_xscale() for ax in axes] == ["log", "log"]
        for ax, signal in zip(axes, ("backward", "forward")):
            identity = ax.lines[0]
            assert list(identity.get_xdata()) == list(identity.get_ydata())
            d = points[points["signal"] == signal]
            from matplotlib.collections import PathCollection

            offsets = np.concatenate(
                [
                    c.get_offsets()
                    for c in ax.collections
                    if isinstance(c, PathCollection) and c.get_label() != figures.DIVERGED_ARTIST
                ]
            )
            assert sorted(map(tuple, offsets)) == sorted(zip(d["predicted"], d["measured"]))
            labels = {t.get_text() for t in ax.texts}
            assert {f"{a} + {figures.compact_name(i)}" for a, i in zip(d["activation"], d["initializer"])} <= {
                lbl.split(",")[0] for lbl in labels
            }
        assert any("batch normalization" in t.get_text() for t in fig.texts)
    finally:
        figures.plt.close(fig)


def test_gradient_figure_draws_the_prediction_dashed_beside_the_measured_signal(report_tables):
    results, _ = report_tables
    runs_m = tables.run_table(results.runs, results.layers)
    main_runs, _ = tables.main_slice(runs_m)
    from vgbench.bench.report import predictions

    predicted = predictions.predict_runs(results.runs, results.manifest)
    profiles = tables.gradient_profiles(main_runs, results.layers, predicted.layers)
    back = profiles[(profiles["parameter"] == "backward")]
    assert set(back["source"]) == {"measured", "theory"}
    # The prediction is relative to the logits' gradient: times the measured RMS there, for one seed's run.
    run = main_runs[(main_runs["activation"] == "relu") & (main_runs["initializer"] == "he_normal")]
    assert len(run) == 1
    layers = results.layers[(results.layers["run_id"] == run["run_id"].iloc[0]) & (results.layers["step"] == 0)]
    logits = float(layers.loc[layers["layer_name"] == "output", "backward_rms"].iloc[0])
    rel = predicted.layers[predicted.layers["run_id"] == run["run_id"].iloc[0]].set_index("layer_index")
    got = back[(back["activation"] == "relu") & (back["initializer"] == "he_normal") & (back["source"] == "theory")]
    got = got.set_index("layer_index")["mean"]
    assert got.to_numpy() == pytest.approx((rel["predicted_backward_rms"] * logits).to_numpy(), rel=1e-9)
    fig = figures.gradient_depth(profiles, figures.category_palette(runs_m["activation"]))
    try:
        rows = {ax.get_ylabel(): ax for ax in fig.axes if ax.get_ylabel()}
        signal = rows["backward signal\nrms B·∂L/∂z, step 0"]
        styles = {line.get_linestyle() for line in signal.lines}
        assert styles == {"-", "--"}
    finally:
        figures.plt.close(fig)


def test_heatmaps_show_backward_and_forward_factors_with_predictions_and_say_why_a_cell_is_blank(report_pairs):
    _, runs_m, pairs = report_pairs
    _, main = tables.main_slice(runs_m)
    grid = tables.pair_grid(pairs, main)
    assert {"backward_factor_init", "forward_factor_init", "grad_factor_init"} <= set(grid["quantity"])
    back = grid[grid["quantity"] == "backward_factor_init"].set_index(["activation", "initializer"])
    row = pairs[(pairs["activation"] == "sigmoid") & (pairs["depth"] == MAIN_DEPTH) & (pairs["fix"] == "none")]
    assert back.loc[("sigmoid", "glorot_uniform"), "predicted"] == row["predicted_backward_factor"].iloc[0]
    # Saturation does not apply to ReLU: its cell says so instead of staying blank.
    sat = grid[grid["quantity"] == "saturated_fraction"].set_index(["activation", "initializer"])
    if not np.isfinite(sat.loc[("relu", "glorot_uniform"), "value"]):
        assert sat.loc[("relu", "glorot_uniform"), "note"] == "n/a"
    fig = figures.pair_heatmaps(grid, figures.category_palette(pairs["activation"]))
    try:
        titles = [ax.get_title() for ax in fig.axes]
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    finally:
        figures.plt.close(fig)
    assert any("backward" in t for t in titles) and any("forward" in t for t in titles)
    b, p = row["backward_factor_init"].iloc[0], row["predicted_backward_factor"].iloc[0]
    assert f"{figures.factor_text(b)}\n({figures.factor_text(p)})" in texts


def _underflowed(report_pairs, factor=0.004, zeros=2):
    """The test results with the main sigmoid runs' step-0 signals replaced: ×factor per layer, `zeros` layers at 0."""
    r, runs_m, _ = report_pairs
    run = runs_m[(runs_m["activation"] == "sigmoid") & (runs_m["depth"] == MAIN_DEPTH) & (runs_m["fix"] == "none")]
    run_id = run["run_id"].iloc[0]
    layers = r.layers.copy()
    rows = layers["run_id"].isin(run["run_id"]) & (layers["step"] == 0) & (layers["layer_name"] != "output")
    index = layers.loc[rows, "layer_index"].astype(float)
    profile = np.where(index < zeros, 0.0, factor ** (MAIN_DEPTH - 1 - index))
    for column in ("kernel_grad_norm", "backward_rms"):
        layers.loc[rows, column] = profile
    return r, layers, run_id


def test_findings_never_say_zero_per_layer_when_layers_underflowed(report_pairs):
    r, layers, run_id = _underflowed(report_pairs)
    runs_m = tables.run_table(r.runs, layers)
    row = runs_m.set_index("run_id").loc[run_id]
    # The factor is fitted over the measured layers: 0.004, not a zero.
    assert row["backward_factor_init"] == pytest.approx(0.004)
    assert row["underflow_layers_init"] == 2
    pairs = tables.pair_table(runs_m)
    found = flatten(findings.written(pairs, tables.depth_sweep(runs_m), tables.fix_effects(runs_m), chance=0.1))
    for f in found:
        assert "×0.00 per layer" not in f["text"]
        assert "×0.00 per layer" not in " ".join(f.get("flag_words", []))
    sigmoid = next(
        f
        for f in found
        if f.get("pair", {}).get("activation") == "sigmoid"
        and f["pair"]["depth"] == MAIN_DEPTH
        and f["pair"]["fix"] == "none"
        and f["kind"] in ("worst", "flagged")
    )
    assert "underflow below layer 2" in sigmoid["text"]
    assert "backward signal vanishes ×0.004 per layer" in sigmoid["text"]
    for words in pairs["flag_words"]:
        assert not any("×0.00 per layer" in w for w in words)


def test_disagreements_with_the_theory_are_named_with_the_tolerance_and_reasons(report_pairs):
    _, _, pairs = report_pairs
    edited = pairs.copy()
    covered = edited[edited["theory_applicable"] & edited["backward_factor_init"].notna()].index
    off, near = covered[0], covered[1]
    # One pair 1.5× off its prediction, one exactly on it; the rest wherever the measurement put them.
    edited.loc[off, "predicted_backward_factor"] = edited.loc[off, "backward_factor_init"] * 1.5
    edited.loc[near, "predicted_backward_factor"] = edited.loc[near, "backward_factor_init"]
    edited.loc[near, "predicted_forward_factor"] = edited.loc[near, "forward_factor_init"]
    found = flatten(findings.written(edited, pd.DataFrame(), pd.DataFrame(), chance=0.1))
    expected = set()
    for i in covered:
        row = edited.loc[i]
        devs = [
            abs(np.log10(row[f"{s}_factor_init"] / row[f"predicted_{s}_factor"]))
            for s in ("backward", "forward")
            if np.isfinite(row[f"{s}_factor_init"]) and np.isfinite(row[f"predicted_{s}_factor"])
        ]
        if max(devs) > np.log10(1.1):
            expected.add(_pair_key(row))
    got = {_pair_key(f["pair"]) for f in found if f["kind"] == "disagreement"}
    assert got == expected and _pair_key(edited.loc[off]) in got and _pair_key(edited.loc[near]) not in got
    summary = next(f for f in found if f["kind"] == "theory")
    assert summary["values"] == {"compared": len(covered), "disagree": len(expected), "tolerance": 1.1}
    assert "log10(1.1)" in summary["text"]
    one = next(f for f in found if f["kind"] == "disagreement" and _pair_key(f["pair"]) == _pair_key(edited.loc[off]))
    assert "off by ×1.50" in one["text"] and "Possible reasons" in one["text"]
    assert any(r.startswith("finite width: 8 units") for r in one["reasons"])


# --------------------------------------------------------------------------- #
# The Claims section, and the report at a glance
# --------------------------------------------------------------------------- #

# Claims decided from accuracies alone, with the accuracy of each run set at each learning rate.
_CLAIM_ACCURACY = {
    "sigmoid_standard_d5": {0.003: 0.10, 0.03: 0.11, 0.3: 0.12},
    "tanh_standard_d5": {0.003: 0.60, 0.03: 0.86, 0.3: 0.70},
    "softsign_standard_d5": {0.003: 0.55, 0.03: 0.80, 0.3: 0.84},
    "tanh_glorot_d5": {0.003: 0.62, 0.03: 0.90, 0.3: 0.10},  # diverges at 0.3
    "sigmoid_glorot_d20": {0.003: 0.10, 0.03: 0.11, 0.3: 0.10},
    "sigmoid_glorot_d20_batchnorm": {0.003: 0.50, 0.03: 0.88, 0.3: 0.91},
    "sigmoid_glorot_d20_residual": {0.003: 0.40, 0.03: 0.60, 0.3: 0.50},
}
_DECIDED = ("glorot2010-sigmoid-worst", "glorot2010-normalized-init", "normalization-residual-fix-deep-sigmoid")


@pytest.fixture(scope="module")
def claims_results(report_results, tmp_path_factory) -> Path:
    """The test results plus the runs of three claims (tables only), under a manifest declaring best_lr."""
    from vgbench.bench import claims

    r = load_results(report_results)
    rows, seen = [], set()
    template = r.runs.iloc[0].to_dict()
    for claim_id in _DECIDED:
        for rs in claims.get(claim_id).run_sets:
            for c in rs.configs():
                if c.run_id in seen:
                    continue
                seen.add(c.run_id)
                acc = _CLAIM_ACCURACY[rs.name][c.learning_rate] + 0.01 * (c.seed - 1)
                diverged = rs.name == "tanh_glorot_d5" and c.learning_rate == 0.3
                rows.append(
                    template
                    | c.to_dict()
                    | {
                        "run_id": c.run_id,
                        "status": "diverged" if diverged else "ok",
                        "test_accuracy": acc,
                        "diverged_step": 40 if diverged else -1,
                        "error": "",
                        "steps": 300,
                    }
                )
    runs = pd.concat([r.runs, pd.DataFrame(rows)], ignore_index=True)
    dst = tmp_path_factory.mktemp("claims") / "results"
    dst.mkdir()
    write_json_atomic(dst / "manifest.json", {**r.manifest, "protocols": {"claims": "best_lr"}})
    write_parquet_atomic(dst / "runs.parquet", runs)
    write_parquet_atomic(dst / "layers.parquet", r.layers)
    write_parquet_atomic(dst / "history.parquet", r.history)
    return dst


@pytest.fixture(scope="module")
def claims_report(claims_results):
    index = build_report(claims_results)
    return index, json.loads((index.parent / "summary.json").read_text())


def _medians_by_hand(name: str) -> dict:
    """Per learning rate, the median over the claims' seeds of the accuracies above (a diverged run scores 0.1)."""
    from vgbench.bench.claims import SEEDS

    out = {}
    for lr, acc in _CLAIM_ACCURACY[name].items():
        scores = [0.1 if name == "tanh_glorot_d5" and lr == 0.3 else acc + 0.01 * (s - 1) for s in SEEDS]
        out[lr] = float(np.median(scores))
    return out


def test_the_claims_section_opens_the_report_with_every_claim_and_its_verdict(claims_report):
    from vgbench.bench import claims

    index, summary = claims_report
    page = index.read_text()
    md = (index.parent / "summary.md").read_text()
    assert re.findall(r"<h2[^>]*>([^<]*)</h2>", page)[0] == "Claims"
    assert re.findall(r"^## (.*)$", md, flags=re.M)[0] == "Claims"
    claims_html = page.split('<h2 id="claims">', 1)[1].split("<h2>", 1)[0]
    claims_md = md.split("## Claims", 1)[1].split("\n## ", 1)[0]
    assert [c["id"] for c in summary["claims"]] == list(claims.CLAIMS)
    for c in summary["claims"]:
        row = re.search(rf'<tr><td><a href="#claim-{re.escape(c["id"])}">.*?</tr>', claims_html).group(0)
        assert f'<span class="badge {c["verdict"]}">{c["verdict"]}</span>' in row
        assert f"| {c['id']} |" in claims_md and f"### {c['id']}: {c['verdict']}" in claims_md
        for key in ("id", "statement", "source", "verdict", "evidence", "run_ids", "budget", "rule", "summary"):
            assert key in c
        assert html.escape(c["statement"]) in claims_html and html.escape(c["rule"]) in claims_html
    # The three claims with runs here are decided and drawn; the others say their runs are missing.
    for c in summary["claims"]:
        if c["id"] in _DECIDED:
            assert not c["missing"] and c["figure"]["files"] == [f"claim-{c['id']}.png"]
            assert (index.parent / f"claim-{c['id']}.png").is_file()
        else:
            assert c["missing"] and c["verdict"] == "inconclusive" and c["figure"] is None
            assert "runs not in this results directory" in c["summary"]
    assert summary["findings"][0]["kind"] == "claims"


def test_the_report_states_the_verdicts_claims_evaluate_gives_on_the_same_tables(claims_report, claims_results):
    from vgbench.bench import claims

    _, summary = claims_report
    r = load_results(claims_results)
    expected = claims.evaluate(metrics.run_metrics(r.runs, r.layers), r.layers, r.history, r.manifest)
    got = {c["id"]: c for c in summary["claims"]}
    for e in expected:
        assert got[e.id]["verdict"] == e.verdict
        assert got[e.id]["summary"] == e.summary and got[e.id]["run_ids"] == e.run_ids
    # By hand from the accuracies above: sigmoid is worst by far, Glorot beats standard for tanh (0.90 vs 0.86),
    # and residual connections learn only partly (0.60) while the plain network fails.
    assert [got[i]["verdict"] for i in _DECIDED] == ["pass", "pass", "inconclusive"]


def test_the_winning_learning_rate_is_shown_per_configuration_where_the_protocol_is_declared(claims_report):
    index, summary = claims_report
    rows = {r["configuration"]: r for r in summary["best_learning_rates"]}
    assert len(rows) == len(_CLAIM_ACCURACY)
    for name in _CLAIM_ACCURACY:
        medians = _medians_by_hand(name)
        best = max(medians, key=medians.get)
        act = name.split("_")[0]
        depth = name.split("_d")[1].split("_")[0]
        (row,) = [
            r
            for label, r in rows.items()
            if label.startswith(f"{act} + ")
            and f"depth {depth}," in label
            and ("standard" in name) == ("variance_scaling" in label)
            and ("batchnorm" in name) == ("batchnorm" in label)
            and ("residual" in name) == ("residual" in label)
        ]
        assert row["best_learning_rate"] == best
        assert row["median_accuracy"] == pytest.approx(medians[best])
    page = index.read_text()
    assert "Best learning rate per configuration" in page
    # The diverged learning rate is named with its count.
    from vgbench.bench.claims import SEEDS

    assert any(f"0.3: 0.100 ({len(SEEDS)} diverged)" in r["text"] for r in summary["best_learning_rates"])


def test_a_directory_without_the_claims_suite_gets_one_line_instead_of_a_table(report_built, report_summary):
    page = report_built.read_text()
    claims_html = page.split('<h2 id="claims">', 1)[1].split("<h2>", 1)[0]
    assert '<table class="claims"' not in claims_html
    from vgbench.bench.claims import CLAIMS

    assert claims_html.count("<p>") == 1 and f"none of the {len(CLAIMS)} claims is decided" in claims_html
    assert all(c["verdict"] == "inconclusive" and c["missing"] for c in report_summary["claims"])
    assert report_summary["claims_note"] and not any(f["kind"] == "claims" for f in report_summary["findings"])


def test_findings_stay_at_twelve_numbered_bullets_with_many_pairs():
    acts = ["sigmoid", "tanh", "relu", "elu", "gelu", "swish", "selu", "softsign"]
    inits = ["glorot_uniform", "he_normal", "lecun_normal", "orthogonal", "random_normal(stddev=0.01)"]
    rows = []
    for i, (a, init) in enumerate((a, i) for a in acts for i in inits):
        flags = [["vanishing@init"], ["forward collapse@init"], ["dead units"], ["exploding@init"], []][i % 5]
        rows.append(
            {
                "activation": a,
                "initializer": init,
                "test_accuracy": 0.95 - 0.02 * i,
                "grad_factor_init": [0.2, 1.0, 0.9, 3.0, 1.0][i % 5],
                "forward_factor_init": 0.4,
                "dead_fraction_final": 0.6,
                "flags": flags,
            }
        )
    rows.append(
        {
            "activation": "relu",
            "initializer": "he_normal",
            "depth": 50,
            "test_accuracy": 0.1,
            "statuses": {"diverged": 1},
            "flags": ["diverged"],
            "diverged_step": 3,
        }
    )
    pairs = _pairs_frame(rows)
    bullets = findings.written(pairs, pd.DataFrame(), pd.DataFrame(), chance=0.1)
    assert 5 <= len(bullets) <= findings.MAX_BULLETS == 12
    modes = {b["mode"]: b for b in bullets if b["kind"] == "mode"}
    for flag, mode in (
        ("vanishing@init", "vanishing"),
        ("forward collapse@init", "forward collapse"),
        ("dead units", "dead units"),
        ("exploding@init", "exploding"),
    ):
        n = sum(flag in r["flags"] for r in rows)
        # One bullet per mode, counting every pair with it; the pairs beyond the first few are counted.
        assert modes[mode]["count"] == n == len(modes[mode]["items"])
        assert f"in {n} pairs" in modes[mode]["text"] and f"and {n - findings.MAX_LISTED} more" in modes[mode]["text"]
    page = "\n".join(f"{i}. {b['text']}" for i, b in enumerate(bullets, 1))
    assert page.count("\n") == len(bullets) - 1


def test_best_and_worst_are_compared_at_the_same_depth(report_pairs):
    rows = [
        {"activation": "relu", "depth": 2, "test_accuracy": 0.97},
        {"activation": "tanh", "depth": 20, "test_accuracy": 0.90},
        {"activation": "sigmoid", "depth": 20, "test_accuracy": 0.30},
        {"activation": "sigmoid", "depth": 50, "test_accuracy": 0.10},
    ]
    pairs = _pairs_frame(rows)
    main = {"depth": 20, "fix": "none"}
    found = findings.written(pairs, pd.DataFrame(), pd.DataFrame(), chance=0.1, main=main)
    ends = {f["kind"]: f["pair"] for f in found if f["kind"] in ("best", "worst")}
    assert ends["best"]["depth"] == ends["worst"]["depth"] == 20
    assert (ends["best"]["activation"], ends["worst"]["activation"]) == ("tanh", "sigmoid")
    # Without a slice, the worst is taken at the best pair's depth when another pair ran there, and says why not.
    alone = findings.written(_pairs_frame(rows[:1] + rows[3:]), pd.DataFrame(), pd.DataFrame(), chance=0.1)
    worst = next(f for f in alone if f["kind"] == "worst")
    assert "no other pair finished at depth 2" in worst["text"]
    # The layer × step heatmap: both panels from the report's slice.
    r, runs_m, real_pairs = report_pairs
    _, main = tables.main_slice(runs_m)
    heat = tables.heatmap_runs(real_pairs, r.layers, main)
    depths = runs_m.set_index("run_id").loc[heat["run_id"].unique(), "depth"]
    assert set(heat["role"]) == {"best", "worst"} and set(depths) == {MAIN_DEPTH}


def test_no_interval_is_promised_or_drawn_with_one_seed(report_results, report_built, tmp_path):
    src = _subset(report_results, tmp_path / "one-seed", lambda r: r["seed"] == 0)
    index = build_report(src)
    summary = json.loads((index.parent / "summary.json").read_text())
    assert all(p["n_seeds"] == 1 for p in summary["pairs"])
    for page in (index.read_text(), (index.parent / "summary.md").read_text()):
        assert "95% interval" not in page and "± " not in page
        assert "no interval" in page
    # With two seeds the same captions promise it (the full test results have them).
    two_seeds = report_built.read_text()
    assert "95% interval over seeds, where a point has two or more" in two_seeds
    runs_m = tables.run_table(load_results(src).runs, load_results(src).layers)
    sweep = tables.depth_sweep(runs_m)
    fig = figures.depth_sweep(sweep, figures.category_palette(runs_m["activation"]))
    try:
        from matplotlib.collections import LineCollection

        # No error tick: no error-bar segments at all.
        assert not [c for ax in fig.axes for c in ax.collections if isinstance(c, LineCollection)]
    finally:
        figures.plt.close(fig)


def test_diverged_runs_are_marked_in_the_figures_that_show_them(report_pairs, report_tables):
    r, runs_m, pairs = report_pairs
    points = tables.theory_points(pairs)
    assert points.loc[points["diverged"] > 0, "initializer"].eq("random_normal(stddev=3.0)").all()
    fig = figures.theory_vs_measurement(points, figures.category_palette(pairs["activation"]))
    try:
        marks = [c for ax in fig.axes for c in ax.collections if c.get_label() == figures.DIVERGED_ARTIST]
        assert marks and sum(len(c.get_offsets()) for c in marks) == int((points["diverged"] > 0).sum())
        assert figures.DIVERGED_LABEL in [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    finally:
        figures.plt.close(fig)


def test_a_pair_whose_every_gradient_is_zero_says_all_0_and_is_flagged_vanishing():
    row = {
        "status": "ok",
        "depth": 4,
        "underflow_layers_init": 4,
        "deepest_underflow_layer_init": 3,
        "grad_factor_init": np.nan,
        "backward_factor_init": np.nan,
        "grad_ratio_init": np.nan,
    }
    flags = metrics.flags(row)
    assert "vanishing@init" in flags and "underflow@init" in flags
    vanishing = next(f for f in flags if f == "vanishing@init")
    assert "exactly 0" in vanishing.describe()
    note = tables._missing_note({**row, "statuses": {"ok": 1}}, "backward_factor_init")
    assert note == "all 0"
    assert (
        tables._missing_note({**row, "underflow_layers_init": 2, "statuses": {"ok": 1}}, "backward_factor_init")
        == "underflow"
    )


def test_pair_heatmaps_fit_the_page_and_label_their_colour_bars(report_pairs):
    _, runs_m, pairs = report_pairs
    _, main = tables.main_slice(runs_m)
    grid = tables.pair_grid(pairs, main)
    from vgbench.bench.report.build import _GRID_PANELS

    for name, panels in _GRID_PANELS.items():
        fig = figures.pair_heatmaps(grid, figures.category_palette(pairs["activation"]), panels, name)
        try:
            # At most the page's width: the page shows it at full size, 8-pt text is ≥ 9 px there.
            assert fig.get_figwidth() <= figures.PAGE_WIDTH
            heat = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
            for ax in heat:
                assert all(t.get_fontsize() * figures.DPI / 72 >= 9 for t in ax.texts)
            bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
            assert len(bars) == len(heat) and all("(" in ax.get_ylabel() for ax in bars)
        finally:
            figures.plt.close(fig)


def test_theory_figure_with_crowded_points_keeps_its_layout_and_labels_the_disagreements_first():
    # Many pairs close to the identity line (as in the full `make bench` results): labels that find no
    # room are left out and counted, none leaves its axes, and the layout does not collapse.
    rng = np.random.default_rng(0)
    n = 80
    predicted = np.exp(rng.uniform(np.log(0.02), 0.0, n))
    measured = predicted * np.exp(rng.normal(0, 0.02, n))
    measured[7] = predicted[7] * 3.0  # the one far off the line
    rows = [
        {
            "label": f"p{k}",
            "activation": ("relu", "tanh", "sigmoid")[k % 3],
            "initializer": "variance_scaling(distribution='uniform', scale=0.3333333333333333)"
            if k % 2
            else "he_normal",
            "depth": 20 + k,
            "fix": None,
            "signal": signal,
            "predicted": predicted[k],
            "measured": measured[k],
            "deviation": abs(np.log10(measured[k] / predicted[k])),
            "diverged": 0,
        }
        for k in range(n)
        for signal in ("backward", "forward")
    ]
    points = pd.DataFrame(rows)
    points.attrs["excluded"] = [f"relu + he_normal, depth {d}: fix 'batchnorm': batch normalization" for d in (2, 3)]
    fig = figures.theory_vs_measurement(points, figures.category_palette(points["activation"]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. "constrained_layout not applied"
            fig.savefig(io.BytesIO(), format="png", dpi=figures.DPI)
        renderer = fig.canvas.get_renderer()
        axes = [ax for ax in fig.axes if ax.get_visible()]
        labelled = 0
        for ax in axes:
            assert ax.get_position().width > 0.2  # the panels kept their room
            for t in ax.texts:
                box = t.get_window_extent(renderer)
                assert ax.bbox.contains(box.x0, box.y0) and ax.bbox.contains(box.x1, box.y1), t.get_text()
            texts = [t.get_text() for t in ax.texts]
            # Point 7, the farthest off the line, is labelled, its initializer written short.
            assert "tanh + variance_scaling(uniform, 0.333), depth 27" in texts
            labelled += len(texts)
        assert labelled < 2 * n
        note = fig.get_supxlabel()
        assert f"{2 * n - labelled} points unlabelled" in note
        assert "2 × batch normalization" in note and "2 pairs" in note
    finally:
        figures.plt.close(fig)
