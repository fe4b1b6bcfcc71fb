"""`vgbench compare BASELINE CURRENT`: regression check of one results directory against another.

Runs are matched by configuration, not by directory or run id. Runs whose
configs differ only in ``seed`` form one *benchmark* and their seeds are its
samples; ``log_every`` and ``act_every`` are not part of a benchmark's
identity either, because they change how a metric is measured rather than
what is trained (a difference in them makes the affected metrics "not
comparable" instead of turning one benchmark into a missing and an added one).

Each (benchmark, metric) row is compared the way asv's ``compare`` does it:
with at least ``MIN_SAMPLES`` seeds on both sides it first asks whether the
two samples differ significantly, two-sided, and only then whether the
difference of the medians exceeds the metric's tolerance. The test is
Mann-Whitney U, or Welch's t-test where there are too few seeds for Mann-Whitney
U to reach ``alpha`` (3 per side: its p-value cannot go below 0.1 there). With
fewer than ``MIN_SAMPLES`` seeds the comparison is tolerance-only, and the
report says so.

Metrics (per-run values from `bench.metrics.run_metrics`, so a number here is
the number in the report), with the default tolerances:

=========================  ==========================================  =========
metric                     change measured as                          tolerance
=========================  ==========================================  =========
status                     ok → diverged/failed is a new failure       —
test_accuracy              absolute drop                               0.02
grad_factor_final          decades further from 1, per layer           0.1
grad_ratio_final           decades further from 1                      0.5
grad_ratio_init            decades further from 1                      0.5
dead_fraction_final        absolute increase                           0.1
saturated_fraction_final   absolute increase                           0.1
wall_time_s                factor (slower); reported, not gating       2.0
=========================  ==========================================  =========

A gradient ratio (or per-layer factor) of 1 means the gradient reaches the
input layer undiminished; its distance from 1 in decades, ``|log10 x|``, is
how badly it vanishes (below 1) or explodes (above 1). A row is worse when
that distance grows by more than the tolerance, so 0.5 → 2 (equally healthy)
is no change while 1e-3 → 1e-4 is one decade worse. 0.5 decades is a factor
of about 3 in the ratio; 0.1 decades per layer is a factor of about 1.26 per
layer, i.e. about 1.9 decades over a 20-layer network, which keeps seed noise
of shallow and deep networks alike below the line.

Only runs with status ``ok`` give metric samples: the numbers of a diverged
run describe its divergence, which the ``status`` row already reports.

Marks, per row and per benchmark (worst first): new failure, worse, missing,
not comparable, fixed, better, added, unchanged. The exit status of `run` is
1 on any regression (a gating row worse, a new failure, a benchmark missing
from the current results) or when nothing could be compared (a baseline of
another ``schema_version``, or every matched metric measured differently):
the baseline then needs a refresh. It is 0 otherwise, and 2 on bad input
(`UsageError`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.config import CONFIG_FIELDS
from bench.errors import UsageError
from bench.metrics import METRICS as REGISTERED_METRICS
from bench.metrics import run_metrics
from bench.results import SCHEMA_VERSION, load_results, require_manifest

MIN_SAMPLES = 3
DEFAULT_ALPHA = 0.05
UPDATE_BASELINE_HINT = "make update-baseline"

# Config fields that say how a run is measured rather than what is trained:
# not part of a benchmark's identity, but the metrics they define must agree.
MEASUREMENT_FIELDS = ("log_every", "act_every")
SAMPLE_FIELD = "seed"

MARKS = ("new failure", "worse", "missing", "not comparable", "fixed", "better", "added", "unchanged")
FAILING_MARKS = ("new failure", "worse", "missing")
_RANK = {m: i for i, m in enumerate(MARKS)}

# Markdown main table: at most this many rows; the JSON holds them all.
MAX_TABLE_ROWS = 60


@dataclass(frozen=True)
class Metric:
    """How one metric is compared.

    Attributes:
        name: a column of `bench.metrics.run_metrics` (or ``"status"``).
        kind: ``"drop"`` (higher is better, absolute change), ``"increase"``
            (lower is better, absolute change), ``"decades"`` (1 is best,
            change of ``|log10 x|``), ``"factor"`` (lower is better, ratio of
            medians) or ``"status"``.
        tolerance: the default tolerance, in the units of ``kind``.
        gating: whether a worse row fails the comparison by default.
        definition: the config fields whose values define the metric; when
            they differ between the sides, the metric is not comparable.
    """

    name: str
    kind: str
    tolerance: float | None
    gating: bool = True
    definition: tuple[str, ...] = ()

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Values on the scale where the tolerance applies and larger is worse."""
        x = np.asarray(x, dtype="float64")
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.kind == "drop":
                return -x
            if self.kind == "increase":
                return x
            if self.kind == "decades":
                return np.abs(np.log10(x))
            if self.kind == "factor":
                return np.log(x)
        raise ValueError(f"Metric {self.name!r} of kind {self.kind!r} has no numeric scale.")

    def threshold(self, tolerance: float) -> float:
        """The tolerance on the `transform` scale."""
        return math.log(tolerance) if self.kind == "factor" else tolerance


# Every registered metric that has a default tolerance, in the registry's order.
METRICS = {
    m.name: m
    for m in (
        Metric("status", "status", None),
        *(
            Metric(q.name, q.change_kind, q.tolerance, gating=q.gating, definition=q.definition)
            for q in REGISTERED_METRICS.values()
            if q.tolerance is not None
        ),
    )
}
DEFAULT_TOLERANCES = {name: m.tolerance for name, m in METRICS.items() if m.tolerance is not None}

ROW_COLUMNS = [
    "benchmark",
    "metric",
    "mark",
    "fails",
    "gating",
    "baseline",
    "current",
    "change",
    "tolerance",
    "p_value",
    "test",
    "n_baseline",
    "n_current",
    "note",
]
BENCHMARK_COLUMNS = [
    "benchmark",
    "mark",
    "fails",
    "n_baseline",
    "n_current",
    "seeds_baseline",
    "seeds_current",
    "run_ids_baseline",
    "run_ids_current",
    "config",
    "note",
]


# --------------------------------------------------------------------------- #
# Tolerances
# --------------------------------------------------------------------------- #


def _closest(name, choices):
    import difflib

    match = difflib.get_close_matches(name, choices, n=1)
    return f" Did you mean {match[0]!r}?" if match else ""


def check_tolerances(tolerances) -> dict:
    """Defaults overridden by ``tolerances`` ({metric: number}), validated.

    Raises:
        UsageError: an unknown metric, or a tolerance that is not a positive
            number (a factor above 1 for ``wall_time_s``).
    """
    out = dict(DEFAULT_TOLERANCES)
    for name, value in (tolerances or {}).items():
        if name not in DEFAULT_TOLERANCES:
            raise UsageError(
                f"Unknown metric {name!r} in tolerances.{_closest(str(name), list(DEFAULT_TOLERANCES))} "
                f"Valid metrics: {', '.join(DEFAULT_TOLERANCES)}"
            )
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float range
            number = float("nan")
        if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
            raise UsageError(f"Tolerance of `{name}` must be a positive number. Received: {name}={value!r}")
        if METRICS[name].kind == "factor" and number <= 1:
            raise UsageError(f"Tolerance of `{name}` is a factor and must be above 1. Received: {name}={value!r}")
        out[name] = number
    return out


def parse_tolerances(items=(), path=None) -> dict:
    """Tolerance overrides from ``--tolerances FILE`` and ``--tolerance METRIC=VALUE``.

    The file is YAML or JSON: a mapping of metric to tolerance. Command-line
    items override the file.

    Raises:
        UsageError: an unreadable file, a malformed item or a bad tolerance.
    """
    overrides = {}
    if path is not None:
        import yaml

        try:
            with open(path) as f:
                loaded = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise UsageError(f"Cannot read tolerances file {str(path)!r}: {str(e).splitlines()[0]}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UsageError(
                f"Tolerances file {str(path)!r} must hold a mapping of metric to tolerance. "
                f"Received: {type(loaded).__name__}"
            )
        overrides.update(loaded)
    for item in items or ():
        name, sep, value = str(item).partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UsageError(f"Argument `--tolerance` takes METRIC=VALUE. Received: {item!r}")
        overrides[name.strip()] = value.strip()
    check_tolerances(overrides)
    return {k: float(v) for k, v in overrides.items()}


# --------------------------------------------------------------------------- #
# Benchmarks: runs grouped by config without the seed
# --------------------------------------------------------------------------- #


def _plain(value):
    """A config value in a form that is equal on both sides whatever the dtype."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        # A column with a missing value is float on one side and int on the other.
        if value.is_integer():
            return int(value)
    return value


def _key_fields(base_runs: pd.DataFrame, cur_runs: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(fields that identify a benchmark, config fields present on one side only)."""
    present_b = [c for c in CONFIG_FIELDS if c in base_runs.columns]
    present_c = [c for c in CONFIG_FIELDS if c in cur_runs.columns]
    common = [c for c in present_b if c in present_c]
    one_side = sorted(set(present_b) ^ set(present_c))
    keys = [c for c in common if c != SAMPLE_FIELD and c not in MEASUREMENT_FIELDS]
    return keys, one_side


def _benchmark_names(runs: pd.DataFrame, keys: list[str]) -> tuple[pd.Series, dict]:
    """The benchmark of each run, and {benchmark: its config without the seed}."""
    names, configs = [], {}
    for _, row in runs.iterrows():
        if not keys:
            # Tables without config columns: each run is its own benchmark.
            name, config = str(row["run_id"]), {}
        else:
            config = {k: _plain(row[k]) for k in keys}
            blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
            digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
            parts = [config.get("arch")]
            for f, prefix in (("depth", "d"), ("width", "w")):
                if config.get(f) is not None:
                    parts.append(f"{prefix}{config[f]}")
            parts += [config.get("activation"), config.get("initializer"), config.get("fix")]
            slug = "-".join(_slug(str(p)) for p in parts if p is not None)
            name = f"{slug}-{digest}" if slug else digest
        names.append(name)
        configs[name] = config
    return pd.Series(names, index=runs.index, dtype="object"), configs


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "_", text.lower()).strip("_")


# --------------------------------------------------------------------------- #
# Statistics
# --------------------------------------------------------------------------- #


def _median(x: np.ndarray) -> float:
    return float(np.median(x)) if len(x) else float("nan")


def _difference(tb: np.ndarray, tc: np.ndarray) -> float:
    """Median of ``tc`` minus median of ``tb``, with inf - inf counted as no change."""
    mb, mc = _median(tb), _median(tc)
    if mb == mc:
        return 0.0
    return mc - mb


def _significance(tb: np.ndarray, tc: np.ndarray, alpha: float) -> tuple[float, str]:
    """(two-sided p-value, test name) for two samples of at least MIN_SAMPLES each."""
    from scipy import stats

    n1, n2 = len(tb), len(tc)
    # Mann-Whitney U's smallest possible p-value is 2 / C(n1+n2, n1): 0.1 for
    # 3 vs 3 seeds, so it could never reject there. Welch's t-test can.
    if 2 / math.comb(n1 + n2, n1) <= alpha:
        test = "mannwhitneyu"
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(stats.mannwhitneyu(tb, tc, alternative="two-sided").pvalue)
    else:
        test = "welch"
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(stats.ttest_ind(tb, tc, equal_var=False).pvalue)
    if not math.isfinite(p):
        # Welch's test is undefined without spread (deterministic seeds): then
        # equal medians are no difference and unequal ones a certain one.
        p = 1.0 if _difference(tb, tc) == 0 else 0.0
    return p, test


def _compare_metric(metric: Metric, base: np.ndarray, cur: np.ndarray, tolerance: float, alpha: float) -> dict:
    """The row of one numeric metric: mark, change, p-value."""
    base = base[~np.isnan(base)]
    cur = cur[~np.isnan(cur)]
    row = {
        "baseline": _median(base),
        "current": _median(cur),
        "tolerance": tolerance,
        "n_baseline": len(base),
        "n_current": len(cur),
        "p_value": float("nan"),
        "test": "tolerance",
        "change": float("nan"),
        "note": "",
    }
    if not len(base) or not len(cur):
        side = "baseline" if not len(base) else "current"
        row.update(mark="not comparable", note=f"no finite value in the {side}")
        return row
    tb, tc = metric.transform(base), metric.transform(cur)
    worse_by = _difference(tb, tc)
    if metric.kind == "drop":
        row["change"] = row["current"] - row["baseline"]
    elif metric.kind == "increase" or metric.kind == "decades":
        row["change"] = worse_by
    else:
        row["change"] = float(np.exp(worse_by))
    significant = True
    if len(tb) >= MIN_SAMPLES and len(tc) >= MIN_SAMPLES:
        p, test = _significance(tb, tc, alpha)
        row.update(p_value=p, test=test)
        significant = p < alpha
    # Exactly at the tolerance is within it, whatever the float rounding of the difference.
    limit = metric.threshold(tolerance) * (1 + 1e-9) + 1e-12
    if significant and worse_by > limit:
        row["mark"] = "worse"
    elif significant and worse_by < -limit:
        row["mark"] = "better"
    else:
        row["mark"] = "unchanged"
        if not significant and abs(worse_by) > limit:
            row["note"] = f"beyond tolerance but not significant (p={row['p_value']:.2g})"
    return row


def _status_text(runs: pd.DataFrame) -> str:
    if len(runs) == 1:
        return str(runs["status"].iloc[0])
    n_ok = int((runs["status"] == "ok").sum())
    return f"{n_ok}/{len(runs)} ok"


def _why(run) -> str:
    """Why a run is not ok, in a few words."""
    status = str(run["status"])
    if status == "diverged":
        step = run.get("diverged_step")
        if step is not None and not pd.isna(step) and int(step) >= 0:
            return f"diverged at step {int(step)}"
        return "diverged"
    error = run.get("error")
    if isinstance(error, str) and error.strip():
        return f"{status}: {error.strip().splitlines()[0][:100]}"
    return status


def _pairing_fields(base: pd.DataFrame, cur: pd.DataFrame) -> tuple[str, ...]:
    """The fields that pair a baseline run with a current run of one benchmark.

    The seed alone pairs them, also across a change of a measurement setting
    (which does not change whether a run fails). A suite may run one seed
    with several measurement settings, though: those runs share the
    benchmark, and keyed by seed alone one of them would hide the other.
    """
    for fields in ((SAMPLE_FIELD,), (SAMPLE_FIELD, *MEASUREMENT_FIELDS)):
        present = [f for f in fields if f in base.columns and f in cur.columns]
        if not present or not (base.duplicated(subset=present).any() or cur.duplicated(subset=present).any()):
            return fields
    return fields


def _pairing_key(run: dict, fields: tuple[str, ...]) -> tuple:
    seed = run.get(SAMPLE_FIELD)
    seed = 0 if seed is None or pd.isna(seed) else int(seed)
    return (seed, *(_plain(run.get(f)) for f in fields[1:]))


def _run_label(key: tuple, fields: tuple[str, ...]) -> str:
    """``seed 1``, or ``seed 1 (act_every=5)`` when the measurement settings are part of the key."""
    extra = ", ".join(f"{f}={v}" for f, v in zip(fields[1:], key[1:]) if v is not None)
    return f"seed {key[0]} ({extra})" if extra else f"seed {key[0]}"


def _compare_status(base: pd.DataFrame, cur: pd.DataFrame) -> dict:
    """The ``status`` row: seeds that newly fail or got fixed."""
    row = {
        "baseline": _status_text(base),
        "current": _status_text(cur),
        "tolerance": float("nan"),
        "n_baseline": len(base),
        "n_current": len(cur),
        "p_value": float("nan"),
        "test": "",
        "change": float("nan"),
        "note": "",
    }
    fields = _pairing_fields(base, cur)
    b = {_pairing_key(r, fields): r for r in base.to_dict("records")}
    c = {_pairing_key(r, fields): r for r in cur.to_dict("records")}
    # Unset settings (None) sort last, so that keys of mixed values still sort.
    common = sorted(set(b) & set(c), key=lambda k: [(v is None, v if v is not None else 0) for v in k])
    if common:
        broke = [k for k in common if b[k]["status"] == "ok" and c[k]["status"] != "ok"]
        fixed = [k for k in common if b[k]["status"] != "ok" and c[k]["status"] == "ok"]
        if broke:
            row["mark"] = "new failure"
            row["note"] = "; ".join(f"{_run_label(k, fields)}: {_why(c[k])}" for k in broke)
        elif fixed:
            row["mark"] = "fixed"
            row["note"] = "; ".join(f"{_run_label(k, fields)}: was {_why(b[k])}" for k in fixed)
        else:
            row["mark"] = "unchanged"
        return row
    # Disjoint seeds: compare the share of runs that are not ok.
    bad_b = float((base["status"] != "ok").mean())
    bad_c = float((cur["status"] != "ok").mean())
    row["mark"] = "new failure" if bad_c > bad_b else "fixed" if bad_c < bad_b else "unchanged"
    return row


# --------------------------------------------------------------------------- #
# The comparison
# --------------------------------------------------------------------------- #


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
    settings = dict(tolerances=tolerances, alpha=alpha, fail_on_time=fail_on_time)
    if base_manifest.get("schema_version") != SCHEMA_VERSION:
        return _incomparable_schema(base_path, base_manifest, current, settings)
    baseline = _load(base_path)

    base = run_metrics(baseline.runs, baseline.layers)
    cur = run_metrics(current.runs, current.layers)
    keys, one_side = _key_fields(base, cur)
    base["benchmark"], base_configs = _benchmark_names(base, keys)
    cur["benchmark"], cur_configs = _benchmark_names(cur, keys)
    configs = {**base_configs, **cur_configs}

    rows, benches = [], []
    n_tolerance_only = n_compared = 0
    for name in sorted(set(base["benchmark"]) | set(cur["benchmark"])):
        b = base[base["benchmark"] == name].sort_values(SAMPLE_FIELD if SAMPLE_FIELD in base else "run_id")
        c = cur[cur["benchmark"] == name].sort_values(SAMPLE_FIELD if SAMPLE_FIELD in cur else "run_id")
        bench_rows = _compare_benchmark(name, b, c, tolerances, alpha, fail_on_time)
        if len(b) and len(c):
            n_compared += 1
            ok_b, ok_c = (b["status"] == "ok").sum(), (c["status"] == "ok").sum()
            if min(ok_b, ok_c) < MIN_SAMPLES:
                n_tolerance_only += 1
        rows += bench_rows
        benches.append(_benchmark_record(name, b, c, bench_rows, configs.get(name, {})))

    notes = []
    if n_compared and n_tolerance_only == n_compared:
        notes.append(
            f"Tolerance-only comparison: fewer than {MIN_SAMPLES} successful seeds per side, "
            "so no significance test was made."
        )
    elif n_tolerance_only:
        notes.append(
            f"{n_tolerance_only} of {n_compared} benchmarks have fewer than {MIN_SAMPLES} successful seeds "
            "on a side: compared by tolerance only."
        )
    if n_compared > n_tolerance_only:
        notes.append(
            f"With at least {MIN_SAMPLES} seeds per side a difference counts only when significant "
            f"(two-sided Mann-Whitney U, or Welch's t-test where there are too few seeds for it; alpha={alpha:g})."
        )
    if one_side:
        notes.append(
            f"Config field(s) {', '.join(one_side)} exist on one side only; runs were matched on the others."
        )
    incomparable = [r["note"] for r in rows if r["mark"] == "not comparable"]
    if any(f"{f} differs" in note for note in incomparable for f in MEASUREMENT_FIELDS):
        notes.append(
            "Some metrics are not comparable because how they are measured differs between the sides; "
            f"refresh the baseline with `{UPDATE_BASELINE_HINT}` once the change is intended."
        )
    if any("data_checksum differs" in note for note in incomparable):
        notes.append(
            "Some benchmarks are not comparable because their data differs between the sides; "
            f"refresh the baseline with `{UPDATE_BASELINE_HINT}` once the change is intended."
        )
    if any(r["metric"] == "wall_time_s" and r["mark"] == "worse" for r in rows) and not fail_on_time:
        notes.append("Wall time is reported but does not fail the comparison (use --fail-on-time).")
    if any(r["mark"] in ("missing", "added") for r in rows):
        notes.append(
            f"Benchmarks were added or removed; if the suite changed on purpose, refresh the baseline "
            f"with `{UPDATE_BASELINE_HINT}`."
        )

    rows_df, bench_df = _frames(rows, benches)
    if bench_df["fails"].any():
        verdict = "regression"
    elif n_compared and rows_df.loc[rows_df["metric"] != "all", "mark"].eq("not comparable").all():
        verdict = "not comparable"
        notes.insert(0, f"Nothing could be compared; refresh the baseline with `{UPDATE_BASELINE_HINT}`.")
    elif (rows_df["mark"].isin(["better", "fixed"]) & rows_df["gating"]).any():
        verdict = "improvement"
    else:
        verdict = "no change"
    return Comparison(
        rows=rows_df,
        benchmarks=bench_df,
        verdict=verdict,
        notes=notes,
        baseline=_provenance(base_path, baseline.manifest, baseline.runs),
        current=_provenance(current.path, current.manifest, current.runs),
        **settings,
    )


def _definition_differences(b: pd.DataFrame, c: pd.DataFrame) -> dict[str, str]:
    """{field: 'field differs: baseline X, current Y'} for measurement fields and data."""
    out = {}
    for column in (*MEASUREMENT_FIELDS, "data_checksum"):
        if column not in b.columns or column not in c.columns:
            continue
        vb = sorted({str(_plain(v)) for v in b[column] if _plain(v) not in (None, "")})
        vc = sorted({str(_plain(v)) for v in c[column] if _plain(v) not in (None, "")})
        if vb and vc and vb != vc:
            short = (lambda v: v[:12]) if column == "data_checksum" else (lambda v: v)
            out[column] = (
                f"{column} differs: baseline {', '.join(map(short, vb))}, current {', '.join(map(short, vc))}"
            )
    return out


def _compare_benchmark(name, b, c, tolerances, alpha, fail_on_time) -> list[dict]:
    def row(metric, **values):
        gating = metric not in METRICS or METRICS[metric].gating or fail_on_time
        out = {
            "benchmark": name,
            "metric": metric,
            "gating": bool(gating),
            "baseline": None,
            "current": None,
            "change": float("nan"),
            "tolerance": float("nan"),
            "p_value": float("nan"),
            "test": "",
            "n_baseline": len(b),
            "n_current": len(c),
            "note": "",
            **values,
        }
        out["fails"] = bool(out["mark"] in FAILING_MARKS and out["gating"])
        return out

    if not len(c):
        return [row("all", mark="missing", note="in the baseline only")]
    if not len(b):
        return [row("all", mark="added", note="in the current results only")]
    differences = _definition_differences(b, c)
    ok_b, ok_c = b[b["status"] == "ok"], c[c["status"] == "ok"]
    rows = []
    for metric in METRICS.values():
        why = [differences[f] for f in ("data_checksum", *metric.definition) if f in differences]
        if metric.kind == "status":
            values = _compare_status(b, c)
        elif not len(ok_b) or not len(ok_c):
            continue  # no successful run on a side: the status row says why
        else:
            vb = ok_b[metric.name].to_numpy(dtype="float64") if metric.name in ok_b else np.array([])
            vc = ok_c[metric.name].to_numpy(dtype="float64") if metric.name in ok_c else np.array([])
            if np.isnan(vb).all() and np.isnan(vc).all():
                continue  # not measured on either side (e.g. no saturation for ReLU)
            values = _compare_metric(metric, vb, vc, tolerances[metric.name], alpha)
        if why:
            nan = float("nan")
            values.update(mark="not comparable", note="; ".join(why), change=nan, p_value=nan, test="")
        rows.append(row(metric.name, **values))
    return rows


def _benchmark_record(name, b, c, rows, config) -> dict:
    """One benchmark's line: its worst mark, whether it fails, its seeds and runs."""
    # A row that cannot fail (wall time) names the benchmark's mark only when
    # nothing that can fail changed.
    gating = [r["mark"] for r in rows if r["gating"] and r["mark"] != "unchanged"]
    mark = min(gating or [r["mark"] for r in rows], key=_RANK.__getitem__)
    notes = [f"{r['metric']}: {r['note']}" for r in rows if r["note"] and r["mark"] != "unchanged"]
    seeds = lambda df: [int(s) for s in df[SAMPLE_FIELD]] if SAMPLE_FIELD in df else []  # noqa: E731
    if len(b) and len(c) and seeds(b) != seeds(c):
        notes.append(f"seeds differ: baseline {seeds(b)}, current {seeds(c)}")
    return {
        "benchmark": name,
        "mark": mark,
        "fails": any(r["fails"] for r in rows),
        "n_baseline": len(b),
        "n_current": len(c),
        "seeds_baseline": seeds(b),
        "seeds_current": seeds(c),
        "run_ids_baseline": [str(r) for r in b["run_id"]],
        "run_ids_current": [str(r) for r in c["run_id"]],
        "config": config,
        "note": "; ".join(notes),
    }


def _frames(rows, benches) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows and benchmarks in a deterministic order: worst benchmark first, then name."""
    benches = sorted(benches, key=lambda b: (not b["fails"], _RANK[b["mark"]], b["benchmark"]))
    bench_df = pd.DataFrame(benches, columns=BENCHMARK_COLUMNS)
    order = {n: i for i, n in enumerate(bench_df["benchmark"])}
    metric_order = {m: i for i, m in enumerate(["all", *METRICS])}
    rows = sorted(
        rows,
        key=lambda r: (order[r["benchmark"]], not r["gating"], _RANK[r["mark"]], metric_order.get(r["metric"], 99)),
    )
    rows_df = pd.DataFrame(rows, columns=ROW_COLUMNS).astype({"baseline": "object", "current": "object"})
    return rows_df, bench_df


def _incomparable_schema(base_path, base_manifest, current, settings) -> Comparison:
    """Every current benchmark marked not comparable: the baseline is of another schema."""
    version = base_manifest.get("schema_version")
    why = f"baseline schema_version={version!r}, this vgbench reads {SCHEMA_VERSION}"
    cur = current.runs.copy()
    keys, _ = _key_fields(cur, cur)
    cur["benchmark"], configs = _benchmark_names(cur, keys)
    rows, benches = [], []
    empty = cur.iloc[0:0]
    for name in sorted(set(cur["benchmark"])):
        c = cur[cur["benchmark"] == name]
        r = {
            "benchmark": name,
            "metric": "all",
            "mark": "not comparable",
            "fails": True,
            "gating": True,
            "baseline": None,
            "current": None,
            "change": float("nan"),
            "tolerance": float("nan"),
            "p_value": float("nan"),
            "test": "",
            "n_baseline": 0,
            "n_current": len(c),
            "note": why,
        }
        rows.append(r)
        rec = _benchmark_record(name, empty, c, [r], configs.get(name, {}))
        rec["note"] = why
        benches.append(rec)
    rows_df, bench_df = _frames(rows, benches)
    notes = [
        f"The baseline {str(base_path)!r} was written with schema_version={version!r} and this vgbench "
        f"reads schema_version={SCHEMA_VERSION}: nothing was compared. Refresh the baseline with "
        f"`{UPDATE_BASELINE_HINT}`."
    ]
    return Comparison(
        rows=rows_df,
        benchmarks=bench_df,
        verdict="not comparable",
        notes=notes,
        baseline=_provenance(base_path, base_manifest, None),
        current=_provenance(current.path, current.manifest, current.runs),
        **settings,
    )


# --------------------------------------------------------------------------- #
# Formatting
# --------------------------------------------------------------------------- #


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool)


def _fmt_value(metric: str, x) -> str:
    if x is None or (_is_number(x) and math.isnan(x)):
        return ""
    if not _is_number(x):
        return str(x)
    kind = METRICS[metric].kind if metric in METRICS else ""
    if kind == "decades":
        return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 or x == 0 else f"{x:.2e}"
    if kind == "factor":
        return f"{x:.2f} s"
    if metric == "test_accuracy":
        return f"{x:.4f}"
    return f"{x:.3f}"


def _fmt_change(metric: str, x) -> str:
    if x is None or not _is_number(x) or math.isnan(x):
        return ""
    kind = METRICS[metric].kind if metric in METRICS else ""
    if kind == "decades":
        return f"{x:+.2f} dec"
    if kind == "factor":
        return f"x{x:.2f}"
    if metric == "test_accuracy":
        return f"{x:+.4f}"
    return f"{x:+.3f}"


def _fmt_tolerance(metric: str, x) -> str:
    if not _is_number(x) or math.isnan(x):
        return ""
    kind = METRICS[metric].kind if metric in METRICS else ""
    if kind == "decades":
        return f"{x:g} dec"
    if kind == "factor":
        return f"x{x:g}"
    return f"{x:g}"


def _fmt_p(p, test) -> str:
    if test == "tolerance":
        return ""
    if not _is_number(p) or math.isnan(p):
        return ""
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _mark_label(mark: str, fails: bool) -> str:
    return f"{mark} (not gating)" if mark in FAILING_MARKS and not fails else mark


def _headline(c: Comparison) -> list[str]:
    n = len(c.benchmarks)
    plural = "s" if n != 1 else ""
    if c.verdict == "regression":
        first = f"**Regression** in {int(c.benchmarks['fails'].sum())} of {n} benchmark{plural}."
    elif c.verdict == "not comparable":
        first = f"**Not comparable**: refresh the baseline with `{UPDATE_BASELINE_HINT}`."
    elif c.verdict == "improvement":
        first = f"**No regression** in {n} benchmark{plural}; some improved."
    else:
        first = f"**No regression** in {n} benchmark{plural}."
    counts = {}
    for mark, fails in zip(c.benchmarks["mark"], c.benchmarks["fails"]):
        label = _mark_label(mark, fails)
        counts[label] = counts.get(label, 0) + 1
    labels = sorted(counts, key=lambda lab: (_RANK[lab.split(" (")[0]], lab))
    return [first, "", " · ".join(f"{counts[lab]} {lab}" for lab in labels)]


def _n_runs(n) -> str:
    return "" if n is None else f", {n} run{'s' if n != 1 else ''}"


def to_markdown(comparison: Comparison) -> str:
    """The comparison as Markdown for a pull-request comment.

    A headline verdict, a table of every row that is not unchanged (worst
    benchmark first), the notes, and the unchanged benchmarks collapsed in a
    ``<details>`` block. The first line is an HTML comment that lets a CI job
    find and update its earlier comment.
    """
    c = comparison
    b, cur = c.baseline, c.current
    lines = [
        "<!-- vgbench-compare -->",
        f"## vgbench compare: {c.verdict}",
        "",
        *_headline(c),
        "",
        f"Baseline `{b['path']}` (git `{b['git_sha'][:12]}`{_n_runs(b['runs'])}) "
        f"vs current `{cur['path']}` (git `{cur['git_sha'][:12]}`{_n_runs(cur['runs'])}).",
        "",
    ]
    changed = c.rows[c.rows["mark"] != "unchanged"]
    if len(changed):
        lines += [
            "| Mark | Benchmark | Metric | Baseline | Current | Change | Tolerance | p | Note |",
            "|:--|:--|:--|--:|--:|--:|--:|--:|:--|",
        ]
        for r in changed.head(MAX_TABLE_ROWS).itertuples(index=False):
            m = r.metric
            lines.append(
                "| "
                + " | ".join(
                    _cell(x)
                    for x in (
                        _mark_label(r.mark, r.fails),
                        f"`{r.benchmark}`",
                        m,
                        _fmt_value(m, r.baseline),
                        _fmt_value(m, r.current),
                        _fmt_change(m, r.change),
                        _fmt_tolerance(m, r.tolerance),
                        _fmt_p(r.p_value, r.test),
                        r.note,
                    )
                )
                + " |"
            )
        if len(changed) > MAX_TABLE_ROWS:
            lines.append(f"\n{len(changed) - MAX_TABLE_ROWS} more rows in the JSON report (`--json`).")
        lines += [
            "",
            "Values are medians over seeds; p is blank where the comparison is by tolerance only. "
            "Change: absolute for accuracy and fractions; for gradient ratios and factors, decades "
            "further from 1 (positive is worse); a factor for wall time.",
            "",
        ]
    if c.notes:
        lines += [f"- {note}" for note in c.notes] + [""]
    unchanged = c.benchmarks[c.benchmarks["mark"] == "unchanged"]
    if len(unchanged):
        rows = c.rows.set_index(["benchmark", "metric"])
        lines += [
            "<details>",
            f"<summary>{len(unchanged)} unchanged benchmark{'s' if len(unchanged) != 1 else ''}</summary>",
            "",
            "| Benchmark | Seeds | Status | Test accuracy | Grad factor (final) |",
            "|:--|--:|:--|--:|--:|",
        ]
        for r in unchanged.itertuples(index=False):
            cells = [f"`{r.benchmark}`", f"{r.n_baseline} / {r.n_current}"]
            for metric in ("status", "test_accuracy", "grad_factor_final"):
                if (r.benchmark, metric) in rows.index:
                    x = rows.loc[(r.benchmark, metric)]
                    left, right = _fmt_value(metric, x["baseline"]), _fmt_value(metric, x["current"])
                    cells.append(left if left == right else f"{left} → {right}")
                else:
                    cells.append("")
            lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
        lines += ["", "</details>", ""]
    tol = ", ".join(f"{k} {_fmt_tolerance(k, v)}" for k, v in c.tolerances.items())
    lines += [f"<sub>Tolerances: {tol}; alpha {c.alpha:g}.</sub>", ""]
    return "\n".join(lines)


def _json_value(x):
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        # JSON has no NaN or Infinity; null keeps the file strict.
        return None
    if isinstance(x, dict):
        return {str(k): _json_value(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_value(v) for v in x]
    return x


def to_dict(comparison: Comparison) -> dict:
    """The comparison as plain data (what `to_json` writes)."""
    c = comparison
    return _json_value(
        {
            "format": "vgbench-compare/1",
            "verdict": c.verdict,
            "exit_code": c.exit_code,
            "baseline": c.baseline,
            "current": c.current,
            "tolerances": c.tolerances,
            "alpha": c.alpha,
            "fail_on_time": c.fail_on_time,
            "notes": list(c.notes),
            "benchmarks": c.benchmarks.to_dict("records"),
            "rows": c.rows.to_dict("records"),
        }
    )


def to_json(comparison: Comparison) -> str:
    """The comparison as a JSON document (strict JSON: NaN and inf become null)."""
    return json.dumps(to_dict(comparison), indent=2, allow_nan=False) + "\n"


def to_junit(comparison: Comparison) -> str:
    """The comparison as JUnit XML: one testcase per benchmark.

    A benchmark that fails the comparison is a ``<failure>``; one that is not
    comparable (and does not fail) is ``<skipped>``.
    """
    c = comparison
    failures = int(c.benchmarks["fails"].sum())
    skipped = int(((c.benchmarks["mark"] == "not comparable") & ~c.benchmarks["fails"]).sum())
    suites = ET.Element("testsuites", name="vgbench compare", tests=str(len(c.benchmarks)), failures=str(failures))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="vgbench-compare",
        tests=str(len(c.benchmarks)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
    )
    for bench in c.benchmarks.itertuples(index=False):
        case = ET.SubElement(suite, "testcase", classname="vgbench.compare", name=bench.benchmark)
        rows = c.rows[c.rows["benchmark"] == bench.benchmark]
        details = [_row_text(r) for r in rows.itertuples(index=False) if r.mark != "unchanged"]
        if bench.fails:
            failing = [_row_text(r) for r in rows.itertuples(index=False) if r.fails]
            failure = ET.SubElement(case, "failure", message="; ".join(failing), type=bench.mark)
            failure.text = "\n".join(details)
        elif bench.mark == "not comparable":
            ET.SubElement(case, "skipped", message=bench.note or "not comparable")
        elif details:
            ET.SubElement(case, "system-out").text = "\n".join(details)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _row_text(r) -> str:
    m = r.metric
    if m == "all":
        return f"{r.mark}: {r.note}"
    text = f"{r.mark}: {m} {_fmt_value(m, r.baseline)} -> {_fmt_value(m, r.current)}"
    change = _fmt_change(m, r.change)
    if change:
        text += f" ({change}, tolerance {_fmt_tolerance(m, r.tolerance)})"
    if r.note:
        text += f" [{r.note}]"
    return text


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #


def add_arguments(parser) -> None:
    """Adds the arguments of `vgbench compare` to an argparse parser."""
    parser.add_argument("baseline", help="results directory of the baseline")
    parser.add_argument("current", help="results directory to check against the baseline")
    parser.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="override one tolerance (repeatable); defaults: "
        + ", ".join(f"{k}={v:g}" for k, v in DEFAULT_TOLERANCES.items()),
    )
    parser.add_argument("--tolerances", metavar="FILE", help="YAML or JSON file of metric: tolerance")
    parser.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help="significance level with >= 3 seeds per side (default 0.05)"
    )
    parser.add_argument("--fail-on-time", action="store_true", help="let a slower wall time fail the comparison")
    parser.add_argument("--markdown", metavar="FILE", help="write the Markdown report here instead of stdout")
    parser.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    parser.add_argument("--junit", metavar="FILE", help="also write the comparison as JUnit XML")


def run(args) -> int:
    """Runs `vgbench compare`; returns the exit status (1 on a regression).

    Raises:
        UsageError: bad directories or options (the CLI exits with 2).
    """
    tolerances = parse_tolerances(args.tolerance, args.tolerances)
    comparison = compare(args.baseline, args.current, tolerances, args.alpha, fail_on_time=args.fail_on_time)
    markdown = to_markdown(comparison)
    for path, text in ((args.json, to_json), (args.junit, to_junit)):
        if path:
            _write(path, text(comparison))
    if args.markdown:
        _write(args.markdown, markdown)
    else:
        print(markdown, end="")
    return comparison.exit_code


def _write(path, text: str) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise UsageError(f"Cannot write {str(path)!r}: {e.strerror or e}") from None
