"""Writing a comparison out: its tables, notes as words, Markdown, JSON and JUnit XML.

Everything a reader sees is written here, at the end: rows and benchmarks
become DataFrames in `frames`, a `Note` becomes words in `note_text` or
`notice_text`, and each metric writes its own values, changes and tolerances
(`bench.quantities.Quantity.format`, ``format_change``, ``format_tolerance``).
"""

from __future__ import annotations

import json
import math
import numbers
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

import pandas as pd

from vgbench.bench.backend import DEFAULT_BACKEND
from vgbench.bench.compare.records import (
    BENCHMARK_COLUMNS,
    FAILING_MARKS,
    RANK,
    ROW_COLUMNS,
    UPDATE_BASELINE_HINT,
    WHOLE,
    Benchmark,
    Note,
    Notice,
    Reason,
    Row,
)
from vgbench.bench.compare.tolerances import METRICS
from vgbench.bench.quantities import Quantity
from vgbench.bench.utils import json_safe

if TYPE_CHECKING:
    from vgbench.bench.compare.comparison import Comparison

# Markdown main table: at most this many rows; the JSON holds them all.
MAX_TABLE_ROWS = 60

# Longest error message of a run quoted in a note.
MAX_ERROR_CHARS = 100

# What a row about a whole benchmark formats its (absent) numbers with.
_WHOLE_BENCHMARK = Quantity(WHOLE, "run", "the whole benchmark")


def metric(name: str) -> Quantity:
    """The metric of a row, which writes its values."""
    return METRICS.get(name, _WHOLE_BENCHMARK)


# --------------------------------------------------------------------------- #
# Notes
# --------------------------------------------------------------------------- #


def _run_text(d: dict, fixed: bool) -> str:
    """``seed 1 (act_every=5): diverged at step 10``, or ``...: was diverged ...`` for a fix."""
    label = " ".join(f"{f} {v}" for f, v in d["sample"])
    if d["settings"]:
        label += f" ({', '.join(f'{f}={v}' for f, v in d['settings'])})"
    status = d["status"]
    if status == "diverged":
        how = f"diverged at step {d['step']}" if d["step"] is not None else "diverged"
    elif d["error"]:
        how = f"{status}: {d['error'][:MAX_ERROR_CHARS]}"
    else:
        how = status
    return f"{label}: was {how}" if fixed else f"{label}: {how}"


def _differs(field: str, baseline, current, width: int | None = None) -> str:
    cut = (lambda v: v[:width]) if width else (lambda v: v)
    return f"{field} differs: baseline {', '.join(map(cut, baseline))}, current {', '.join(map(cut, current))}"


_REASON_TEXT = {
    Reason.ONLY_IN_BASELINE: lambda d: "in the baseline only",
    Reason.ONLY_IN_CURRENT: lambda d: "in the current results only",
    Reason.NO_VALUE: lambda d: f"no finite value in the {d['side']}",
    Reason.NOT_SIGNIFICANT: lambda d: f"beyond tolerance but not significant (p={d['p_value']:.2g})",
    Reason.NEW_FAILURE: lambda d: _run_text(d, fixed=False),
    Reason.FIXED: lambda d: _run_text(d, fixed=True),
    Reason.MEASUREMENT: lambda d: _differs(d["field"], d["baseline"], d["current"]),
    # A checksum is recognizable by its first characters.
    Reason.DATA_CHECKSUM: lambda d: _differs("data_checksum", d["baseline"], d["current"], width=12),
    Reason.SCHEMA: lambda d: f"baseline schema_version={d['version']!r}, this vgbench reads {d['reads']}",
    Reason.SEEDS_DIFFER: lambda d: f"seeds differ: baseline {d['baseline']}, current {d['current']}",
}


def note_text(note: Note) -> str:
    """A row's or a benchmark's note in words."""
    return _REASON_TEXT[note.reason](note.detail)


def notes_text(notes) -> str:
    """Several notes in words, one clause each."""
    return "; ".join(note_text(n) for n in notes)


def benchmark_note_text(benchmark: Benchmark) -> str:
    """What is said about a benchmark: each metric's notes after its name, then its own."""
    return "; ".join(f"{m}: {notes_text(ns)}" if m is not None else notes_text(ns) for m, ns in benchmark.notes)


def _refresh(when: str = "") -> str:
    return f"refresh the baseline with `{UPDATE_BASELINE_HINT}`{when}"


def _not_gating_text(d: dict) -> str:
    labels = [metric(m).label for m in d["metrics"]]
    subject = " and ".join(labels)
    verb = "is reported but does not" if len(labels) == 1 else "are reported but do not"
    return f"{subject[:1].upper()}{subject[1:]} {verb} fail the comparison (use --fail-on-time)."


_NOTICE_TEXT = {
    Notice.NOTHING_COMPARED: lambda d: f"Nothing could be compared; {_refresh()}.",
    Notice.SCHEMA: lambda d: (
        f"The baseline {d['path']!r} was written with schema_version={d['version']!r} and this vgbench "
        f"reads schema_version={d['reads']}: nothing was compared. Refresh the baseline with "
        f"`{UPDATE_BASELINE_HINT}`."
    ),
    Notice.TOLERANCE_ONLY: lambda d: (
        f"Tolerance-only comparison: fewer than {d['min_samples']} successful seeds per side, "
        "so no significance test was made."
    ),
    Notice.PARTLY_TOLERANCE_ONLY: lambda d: (
        f"{d['count']} of {d['total']} benchmarks have fewer than {d['min_samples']} successful seeds "
        "on a side: compared by tolerance only."
    ),
    Notice.SIGNIFICANCE: lambda d: (
        f"With at least {d['min_samples']} seeds per side a difference counts only when significant "
        f"(two-sided Mann-Whitney U, or Welch's t-test where there are too few seeds for it; alpha={d['alpha']:g})."
    ),
    Notice.ONE_SIDED_FIELDS: lambda d: (
        f"Config field(s) {', '.join(d['fields'])} exist on one side only; runs were matched on the others."
    ),
    Notice.MEASUREMENT_DIFFERS: lambda d: (
        "Some metrics are not comparable because how they are measured differs between the sides; "
        f"{_refresh(' once the change is intended')}."
    ),
    Notice.DATA_DIFFERS: lambda d: (
        "Some benchmarks are not comparable because their data differs between the sides; "
        f"{_refresh(' once the change is intended')}."
    ),
    Notice.NOT_GATING: _not_gating_text,
    Notice.SUITE_CHANGED: lambda d: f"Benchmarks were added or removed; if the suite changed on purpose, {_refresh()}.",
    Notice.CROSS_BACKEND: lambda d: (
        f"Across backends: the baseline ran on {d['baseline']} and the current results on {d['current']}; "
        "runs were paired by their identity except the backend, with the same tolerances."
    ),
}


def notice_text(note: Note) -> str:
    """A remark on the whole comparison, as a sentence."""
    return _NOTICE_TEXT[note.reason](note.detail)


# --------------------------------------------------------------------------- #
# Tables
# --------------------------------------------------------------------------- #


def frames(rows: list[Row], benchmarks: list[Benchmark]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows and benchmarks as DataFrames, worst benchmark first, then by name.

    Within a benchmark: gating rows first, then worst mark first, then in
    the order of the metrics.
    """
    benchmarks = sorted(benchmarks, key=lambda b: (not b.fails, RANK[b.mark], b.name))
    order = {b.name: i for i, b in enumerate(benchmarks)}
    metric_order = {m: i for i, m in enumerate([WHOLE, *METRICS])}
    rows = sorted(rows, key=lambda r: (order[r.benchmark], not r.gating, RANK[r.mark], metric_order.get(r.metric, 99)))
    bench_df = pd.DataFrame(
        [
            {
                **{c: getattr(b, c) for c in BENCHMARK_COLUMNS if c not in ("benchmark", "note")},
                "benchmark": b.name,
                "note": benchmark_note_text(b),
            }
            for b in benchmarks
        ],
        columns=BENCHMARK_COLUMNS,
    )
    rows_df = pd.DataFrame(
        [{**{c: getattr(r, c) for c in ROW_COLUMNS if c != "note"}, "note": notes_text(r.notes)} for r in rows],
        columns=ROW_COLUMNS,
    ).astype({"baseline": "object", "current": "object"})
    return rows_df, bench_df


# --------------------------------------------------------------------------- #
# Markdown
# --------------------------------------------------------------------------- #


def _p_value_text(p, test) -> str:
    """The p-value of a row ("" where the comparison is by tolerance only)."""
    if test == "tolerance" or not isinstance(p, numbers.Real) or isinstance(p, bool) or math.isnan(p):
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
        first = f"**Not comparable**: {_refresh()}."
    elif c.verdict == "improvement":
        first = f"**No regression** in {n} benchmark{plural}; some improved."
    else:
        first = f"**No regression** in {n} benchmark{plural}."
    counts = {}
    for mark, fails in zip(c.benchmarks["mark"], c.benchmarks["fails"]):
        label = _mark_label(mark, fails)
        counts[label] = counts.get(label, 0) + 1
    labels = sorted(counts, key=lambda lab: (RANK[lab.split(" (")[0]], lab))
    return [first, "", " · ".join(f"{counts[lab]} {lab}" for lab in labels)]


def _n_runs(n) -> str:
    return "" if n is None else f", {n} run{'s' if n != 1 else ''}"


def _backends(side: dict, shown: bool) -> str:
    backends = side.get("backends")
    return f", backend {' + '.join(backends)}" if backends and shown else ""


def to_markdown(comparison: Comparison) -> str:
    """The comparison as Markdown for a pull-request comment.

    A headline verdict, a table of every row that is not unchanged (worst
    benchmark first), the notes, and the unchanged benchmarks collapsed in a
    ``<details>`` block. The first line is an HTML comment that lets a CI job
    find and update its earlier comment.
    """
    c = comparison
    b, cur = c.baseline, c.current
    # Named when they say something: TensorFlow alone on both sides is every earlier comparison.
    shown = {*b.get("backends", ()), *cur.get("backends", ())} - {DEFAULT_BACKEND} != set()
    lines = [
        "<!-- vgbench-compare -->",
        f"## vgbench compare: {c.verdict}",
        "",
        *_headline(c),
        "",
        f"Baseline `{b['path']}` (git `{b['git_sha'][:12]}`{_n_runs(b['runs'])}{_backends(b, shown)}) "
        f"vs current `{cur['path']}` (git `{cur['git_sha'][:12]}`{_n_runs(cur['runs'])}{_backends(cur, shown)}).",
        "",
    ]
    changed = c.rows[c.rows["mark"] != "unchanged"]
    if len(changed):
        lines += [
            "| Mark | Benchmark | Metric | Baseline | Current | Change | Tolerance | p | Note |",
            "|:--|:--|:--|--:|--:|--:|--:|--:|:--|",
        ]
        for r in changed.head(MAX_TABLE_ROWS).itertuples(index=False):
            m = metric(r.metric)
            cells = (
                _mark_label(r.mark, r.fails),
                f"`{r.benchmark}`",
                r.metric,
                m.format(r.baseline),
                m.format(r.current),
                m.format_change(r.change),
                m.format_tolerance(r.tolerance),
                _p_value_text(r.p_value, r.test),
                r.note,
            )
            lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
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
            for name in ("status", "test_accuracy", "grad_factor_final"):
                if (r.benchmark, name) in rows.index:
                    x = rows.loc[(r.benchmark, name)]
                    left, right = metric(name).format(x["baseline"]), metric(name).format(x["current"])
                    cells.append(left if left == right else f"{left} → {right}")
                else:
                    cells.append("")
            lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
        lines += ["", "</details>", ""]
    tol = ", ".join(f"{k} {metric(k).format_tolerance(v)}" for k, v in c.tolerances.items())
    lines += [f"<sub>Tolerances: {tol}; alpha {c.alpha:g}.</sub>", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# JSON and JUnit
# --------------------------------------------------------------------------- #


def to_dict(comparison: Comparison) -> dict:
    """The comparison as plain data (what `to_json` writes)."""
    c = comparison
    return json_safe(
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
    """One row in a line of plain text, for JUnit."""
    if r.metric == WHOLE:
        return f"{r.mark}: {r.note}"
    m = metric(r.metric)
    text = f"{r.mark}: {r.metric} {m.format(r.baseline)} -> {m.format(r.current)}"
    change = m.format_change(r.change)
    if change:
        text += f" ({change}, tolerance {m.format_tolerance(r.tolerance)})"
    if r.note:
        text += f" [{r.note}]"
    return text
