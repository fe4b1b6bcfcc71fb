"""One comparison of two results directories: load both sides, match their runs, judge, collect the outcome."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from vgbench.bench.compare import matching, render, verdicts
from vgbench.bench.compare.disagreement import add_theory_deviation
from vgbench.bench.compare.records import UPDATE_BASELINE_HINT, WHOLE, Note, Notice, Reason, Row
from vgbench.bench.compare.statistics import DEFAULT_ALPHA
from vgbench.bench.compare.tolerances import check_tolerances
from vgbench.bench.errors import UsageError
from vgbench.bench.metrics import run_metrics
from vgbench.bench.results import SCHEMA_VERSION, load_results, require_manifest


@dataclass
class Comparison:
    """The outcome of `compare`: one row per (benchmark, metric), one per benchmark.

    Attributes:
        rows: DataFrame with ``ROW_COLUMNS``, worst benchmark first.
        benchmarks: DataFrame with ``BENCHMARK_COLUMNS``, worst first.
        verdict: ``"regression"``, ``"not comparable"``, ``"improvement"``
            or ``"no change"``.
        notes: sentences for the reader of the report, in order.
        baseline: provenance of the baseline (path, git sha, runs, schema).
        current: provenance of the current results.
        tolerances: the tolerance of every numeric metric.
        alpha: significance level of the test.
        fail_on_time: whether a worse wall time fails the comparison.
    """

    rows: pd.DataFrame
    benchmarks: pd.DataFrame
    verdict: str
    notes: list[str] = field(default_factory=list)
    baseline: dict = field(default_factory=dict)
    current: dict = field(default_factory=dict)
    tolerances: dict = field(default_factory=dict)
    alpha: float = DEFAULT_ALPHA
    fail_on_time: bool = False

    @property
    def exit_code(self) -> int:
        """1 on a regression or an incomparable baseline, else 0."""
        return 1 if self.verdict in ("regression", "not comparable") else 0


def _provenance(path, manifest, runs) -> dict:
    return {
        "path": str(path),
        "git_sha": str(manifest.get("git_sha", "unknown")),
        "suite": str(manifest.get("suite", "")),
        "schema_version": manifest.get("schema_version"),
        "runs": int(len(runs)) if runs is not None else None,
    }


def _load(path):
    """`load_results`, with an I/O error as a one-line `UsageError`.

    Results without runs.parquet are consolidated on loading, which writes
    into the directory: a read-only baseline fails there.
    """
    try:
        return load_results(path)
    except OSError as e:
        detail = " ".join(str(e).split())
        if not (Path(path) / "runs.parquet").is_file():
            detail = f"it has no runs.parquet and writing one failed ({detail})"
        raise UsageError(f"Cannot load results {str(path)!r}: {detail}") from None


def _outcome(rows, benchmarks, verdict, notices, **settings) -> Comparison:
    """The `Comparison` of judged records: their tables and remarks written out."""
    rows_df, bench_df = render.frames(rows, benchmarks)
    return Comparison(
        rows=rows_df,
        benchmarks=bench_df,
        verdict=verdict,
        notes=[render.notice_text(n) for n in notices],
        **settings,
    )


def compare(baseline_dir, current_dir, tolerances=None, alpha=DEFAULT_ALPHA, *, fail_on_time=False) -> Comparison:
    """Compares the results in ``current_dir`` against ``baseline_dir``.

    Args:
        baseline_dir: results directory of the reference (e.g. the main branch).
        current_dir: results directory to check.
        tolerances: {metric: tolerance} overriding `DEFAULT_TOLERANCES`.
        alpha: significance level of the test on seeds (0 < alpha < 1).
        fail_on_time: let a wall time beyond its factor fail the comparison.

    Returns:
        A `Comparison`.

    Raises:
        UsageError: a directory that is not vgbench results, current results
            of another schema, or a bad tolerance or alpha.
    """
    tolerances = check_tolerances(tolerances)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise UsageError(f"Argument `alpha` must be a number between 0 and 1. Received: alpha={alpha!r}")
    alpha = float(alpha)
    current = _load(current_dir)
    # The baseline's manifest is read first: results of another schema are a
    # baseline to refresh, not an error (load_results would refuse them).
    base_path = Path(baseline_dir)
    base_manifest = require_manifest(base_path, "Baseline directory", f"create one with `{UPDATE_BASELINE_HINT}`")
    settings = dict(
        tolerances=tolerances,
        alpha=alpha,
        fail_on_time=fail_on_time,
        current=_provenance(current.path, current.manifest, current.runs),
    )
    if base_manifest.get("schema_version") != SCHEMA_VERSION:
        return _incomparable_schema(base_path, base_manifest, current, settings)
    baseline = _load(base_path)
    settings["baseline"] = _provenance(base_path, baseline.manifest, baseline.runs)

    base = run_metrics(baseline.runs, baseline.layers)
    cur = run_metrics(current.runs, current.layers)
    add_theory_deviation(base, cur, baseline.manifest)
    cross = matching.fill_backend(base, cur)
    settings["baseline"]["backends"] = sorted(set(base[matching.BACKEND]))
    settings["current"]["backends"] = sorted(set(cur[matching.BACKEND]))
    keys, one_side = matching.key_fields(base, cur)
    if cross is not None:
        # One backend on each side, and they differ: the runs pair by everything else.
        keys = [k for k in keys if k != matching.BACKEND]
    base["benchmark"], base_configs = matching.name_benchmarks(base, keys)
    cur["benchmark"], cur_configs = matching.name_benchmarks(cur, keys)
    configs = {**base_configs, **cur_configs}

    rows, benchmarks = [], []
    n_tolerance_only = n_compared = 0
    for name in sorted(set(base["benchmark"]) | set(cur["benchmark"])):
        b, c = matching.runs_of(base, name), matching.runs_of(cur, name)
        differences = matching.definition_differences(b, c)
        bench_rows = verdicts.benchmark_rows(name, b, c, differences, tolerances, alpha, fail_on_time)
        if len(b) and len(c):
            n_compared += 1
            n_tolerance_only += verdicts.is_tolerance_only(b, c)
        rows += bench_rows
        benchmarks.append(verdicts.benchmark_record(name, b, c, bench_rows, configs.get(name, {})))

    verdict = verdicts.verdict(rows, benchmarks, n_compared)
    notices = verdicts.notices(rows, n_compared, n_tolerance_only, one_side, alpha, verdict)
    if cross is not None:
        notices.insert(0, Note(Notice.CROSS_BACKEND, {"baseline": cross[0], "current": cross[1]}))
    return _outcome(rows, benchmarks, verdict, notices, **settings)


def _incomparable_schema(base_path, base_manifest, current, settings) -> Comparison:
    """Every current benchmark marked not comparable: the baseline is of another schema."""
    version = base_manifest.get("schema_version")
    why = Note(Reason.SCHEMA, {"version": version, "reads": SCHEMA_VERSION})
    cur = current.runs.copy()
    keys, _ = matching.key_fields(cur, cur)
    cur["benchmark"], configs = matching.name_benchmarks(cur, keys)
    empty = cur.iloc[0:0]
    rows, benchmarks = [], []
    for name in sorted(set(cur["benchmark"])):
        c = cur[cur["benchmark"] == name]
        row = Row(name, WHOLE, "not comparable", n_current=len(c), notes=(why,), blocking=True)
        rows.append(row)
        record = verdicts.benchmark_record(name, empty, c, [row], configs.get(name, {}))
        # The reason is the baseline's, not a metric's.
        benchmarks.append(dataclasses.replace(record, notes=((None, (why,)),)))
    notice = Note(Notice.SCHEMA, {"path": str(base_path), "version": version, "reads": SCHEMA_VERSION})
    settings = dict(settings, baseline=_provenance(base_path, base_manifest, None))
    return _outcome(rows, benchmarks, "not comparable", [notice], **settings)
