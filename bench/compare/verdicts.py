"""Marks and verdicts: each (benchmark, metric) row, each benchmark and the whole comparison judged.

A numeric row is compared the way asv's ``compare`` does it: with at least
`MIN_SAMPLES` seeds per side the two samples must first differ
significantly, and only then does the difference of the medians count when
it exceeds the tolerance. The ``status`` row pairs runs across the sides and
reports seeds that newly fail or got fixed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from vgbench.bench.compare import statistics
from vgbench.bench.compare.matching import DATA_COLUMN, pairing_fields, pairing_key, seeds, sort_keys
from vgbench.bench.compare.records import RANK, WHOLE, Benchmark, Note, Notice, Reason, Row
from vgbench.bench.compare.statistics import MIN_SAMPLES
from vgbench.bench.compare.tolerances import METRICS, STATUS
from vgbench.bench.config import SAMPLE_FIELDS
from vgbench.bench.quantities import Quantity

NAN = float("nan")


def is_gating(metric: str, fail_on_time: bool) -> bool:
    """Whether a worse row of ``metric`` fails the comparison (every metric does with ``fail_on_time``)."""
    return bool(metric not in METRICS or METRICS[metric].gating or fail_on_time)


def metric_row(quantity: Quantity, base: np.ndarray, cur: np.ndarray, tolerance: float, alpha: float, **common) -> Row:
    """The row of one numeric metric: mark, change, p-value.

    Args:
        quantity: the compared metric.
        base, cur: its values in the successful runs of each side (NaN: not measured).
        tolerance: on the scale of ``quantity.change_kind``.
        alpha: significance level of the test on seeds.
        **common: the other `Row` fields (benchmark, metric, gating).
    """
    base = base[~np.isnan(base)]
    cur = cur[~np.isnan(cur)]
    fields = dict(
        common,
        baseline=statistics.median(base),
        current=statistics.median(cur),
        tolerance=tolerance,
        n_baseline=len(base),
        n_current=len(cur),
        test="tolerance",
    )
    if not len(base) or not len(cur):
        side = "baseline" if not len(base) else "current"
        return Row(mark="not comparable", notes=(Note(Reason.NO_VALUE, {"side": side}),), **fields)
    kind = quantity.change_kind
    tb, tc = statistics.worse_scale(kind, base), statistics.worse_scale(kind, cur)
    worse_by = statistics.difference(tb, tc)
    if kind == "drop":
        change = fields["current"] - fields["baseline"]
    elif kind == "factor":
        change = float(np.exp(worse_by))
    else:
        change = worse_by
    significant, p_value = True, NAN
    if len(tb) >= MIN_SAMPLES and len(tc) >= MIN_SAMPLES:
        p_value, fields["test"] = statistics.significance(tb, tc, alpha)
        significant = p_value < alpha
    # Exactly at the tolerance is within it, whatever the float rounding of the difference.
    limit = statistics.threshold(kind, tolerance) * (1 + 1e-9) + 1e-12
    notes = ()
    if significant and worse_by > limit:
        mark = "worse"
    elif significant and worse_by < -limit:
        mark = "better"
    else:
        mark = "unchanged"
        if not significant and abs(worse_by) > limit:
            notes = (Note(Reason.NOT_SIGNIFICANT, {"p_value": p_value}),)
    return Row(mark=mark, change=change, p_value=p_value, notes=notes, **fields)


def _status_value(runs: pd.DataFrame) -> str:
    """The status of a benchmark's runs: the one status, or ``"k/n ok"``."""
    if len(runs) == 1:
        return str(runs["status"].iloc[0])
    n_ok = int((runs["status"] == "ok").sum())
    return f"{n_ok}/{len(runs)} ok"


def _run_note(reason: Reason, key: tuple, fields: tuple[str, ...], run: dict) -> Note:
    """A note on one run that is not ok: which run (its pairing key) and how it ended."""
    step = run.get("diverged_step")
    step = int(step) if step is not None and not pd.isna(step) and int(step) >= 0 else None
    error = run.get("error")
    error = error.strip().splitlines()[0] if isinstance(error, str) and error.strip() else ""
    pairs = list(zip(fields, key))
    return Note(
        reason,
        {
            "sample": tuple((f, v) for f, v in pairs if f in SAMPLE_FIELDS),
            "settings": tuple((f, v) for f, v in pairs if f not in SAMPLE_FIELDS and v is not None),
            "status": str(run["status"]),
            "step": step,
            "error": error,
        },
    )


def status_row(base: pd.DataFrame, cur: pd.DataFrame, **common) -> Row:
    """The ``status`` row: seeds that newly fail or got fixed.

    Args:
        base, cur: the benchmark's runs on each side.
        **common: the other `Row` fields (benchmark, metric, gating).
    """
    fields = dict(
        common,
        baseline=_status_value(base),
        current=_status_value(cur),
        n_baseline=len(base),
        n_current=len(cur),
    )
    pairing = pairing_fields(base, cur)
    b = {pairing_key(r, pairing): r for r in base.to_dict("records")}
    c = {pairing_key(r, pairing): r for r in cur.to_dict("records")}
    common_keys = sort_keys(set(b) & set(c))
    if common_keys:
        broke = [k for k in common_keys if b[k]["status"] == "ok" and c[k]["status"] != "ok"]
        fixed = [k for k in common_keys if b[k]["status"] != "ok" and c[k]["status"] == "ok"]
        if broke:
            notes = tuple(_run_note(Reason.NEW_FAILURE, k, pairing, c[k]) for k in broke)
            return Row(mark="new failure", notes=notes, **fields)
        if fixed:
            notes = tuple(_run_note(Reason.FIXED, k, pairing, b[k]) for k in fixed)
            return Row(mark="fixed", notes=notes, **fields)
        return Row(mark="unchanged", **fields)
    # Disjoint seeds: compare the share of runs that are not ok.
    bad_b = float((base["status"] != "ok").mean())
    bad_c = float((cur["status"] != "ok").mean())
    mark = "new failure" if bad_c > bad_b else "fixed" if bad_c < bad_b else "unchanged"
    return Row(mark=mark, **fields)


def benchmark_rows(
    name: str,
    b: pd.DataFrame,
    c: pd.DataFrame,
    differences: dict[str, Note],
    tolerances: dict,
    alpha: float,
    fail_on_time: bool,
) -> list[Row]:
    """Every row of one benchmark.

    Args:
        name: the benchmark.
        b, c: its runs on each side (with the `bench.metrics.run_metrics` columns).
        differences: `bench.compare.matching.definition_differences` of the runs.
        tolerances: {metric: tolerance}.
        alpha: significance level.
        fail_on_time: whether a worse row of a non-gating metric fails.
    """

    def common(metric):
        return dict(benchmark=name, metric=metric, gating=is_gating(metric, fail_on_time))

    if not len(c):
        return [Row(mark="missing", n_baseline=len(b), notes=(Note(Reason.ONLY_IN_BASELINE),), **common(WHOLE))]
    if not len(b):
        return [Row(mark="added", n_current=len(c), notes=(Note(Reason.ONLY_IN_CURRENT),), **common(WHOLE))]
    ok_b, ok_c = b[b["status"] == "ok"], c[c["status"] == "ok"]
    rows = []
    for metric in METRICS.values():
        why = tuple(differences[f] for f in (DATA_COLUMN, *metric.definition) if f in differences)
        if metric is STATUS:
            row = status_row(b, c, **common(metric.name))
        elif not len(ok_b) or not len(ok_c):
            continue  # no successful run on a side: the status row says why
        else:
            vb = ok_b[metric.name].to_numpy(dtype="float64") if metric.name in ok_b else np.array([])
            vc = ok_c[metric.name].to_numpy(dtype="float64") if metric.name in ok_c else np.array([])
            if np.isnan(vb).all() and np.isnan(vc).all():
                continue  # not measured on either side (e.g. no saturation for ReLU)
            row = metric_row(metric, vb, vc, tolerances[metric.name], alpha, **common(metric.name))
        if why:
            row = dataclasses.replace(row, mark="not comparable", notes=why, change=NAN, p_value=NAN, test="")
        rows.append(row)
    return rows


def benchmark_record(name: str, b: pd.DataFrame, c: pd.DataFrame, rows: list[Row], config: dict) -> Benchmark:
    """One benchmark's line: its worst mark, whether it fails, its seeds and runs."""
    # A row that cannot fail (wall time) names the benchmark's mark only when
    # nothing that can fail changed.
    gating = [r.mark for r in rows if r.gating and r.mark != "unchanged"]
    mark = min(gating or [r.mark for r in rows], key=RANK.__getitem__)
    notes = [(r.metric, r.notes) for r in rows if r.notes and r.mark != "unchanged"]
    if len(b) and len(c) and seeds(b) != seeds(c):
        notes.append((None, (Note(Reason.SEEDS_DIFFER, {"baseline": seeds(b), "current": seeds(c)}),)))
    return Benchmark(
        name=name,
        mark=mark,
        fails=any(r.fails for r in rows),
        n_baseline=len(b),
        n_current=len(c),
        seeds_baseline=seeds(b),
        seeds_current=seeds(c),
        run_ids_baseline=[str(r) for r in b["run_id"]],
        run_ids_current=[str(r) for r in c["run_id"]],
        config=config,
        notes=tuple(notes),
    )


def verdict(rows: list[Row], benchmarks: list[Benchmark], n_compared: int) -> str:
    """``"regression"``, ``"not comparable"``, ``"improvement"`` or ``"no change"``.

    Not comparable: benchmarks were matched but none of their metrics could
    be compared, which must not pass as no change.
    """
    if any(b.fails for b in benchmarks):
        return "regression"
    if n_compared and all(r.mark == "not comparable" for r in rows if r.metric != WHOLE):
        return "not comparable"
    if any(r.mark in ("better", "fixed") and r.gating for r in rows):
        return "improvement"
    return "no change"


def notices(
    rows: list[Row], n_compared: int, n_tolerance_only: int, one_side: list[str], alpha: float, verdict: str
) -> list[Note]:
    """The remarks on the whole comparison, in the order a reader needs them."""
    out = []
    if verdict == "not comparable":
        out.append(Note(Notice.NOTHING_COMPARED))
    if n_compared and n_tolerance_only == n_compared:
        out.append(Note(Notice.TOLERANCE_ONLY, {"min_samples": MIN_SAMPLES}))
    elif n_tolerance_only:
        out.append(
            Note(
                Notice.PARTLY_TOLERANCE_ONLY,
                {"count": n_tolerance_only, "total": n_compared, "min_samples": MIN_SAMPLES},
            )
        )
    if n_compared > n_tolerance_only:
        out.append(Note(Notice.SIGNIFICANCE, {"min_samples": MIN_SAMPLES, "alpha": alpha}))
    if one_side:
        out.append(Note(Notice.ONE_SIDED_FIELDS, {"fields": list(one_side)}))
    incomparable = set().union(*(r.reasons() for r in rows if r.mark == "not comparable"))
    if Reason.MEASUREMENT in incomparable:
        out.append(Note(Notice.MEASUREMENT_DIFFERS))
    if Reason.DATA_CHECKSUM in incomparable:
        out.append(Note(Notice.DATA_DIFFERS))
    not_gating = {r.metric for r in rows if r.mark == "worse" and not r.gating}
    if not_gating:
        out.append(Note(Notice.NOT_GATING, {"metrics": [m for m in METRICS if m in not_gating]}))
    if any(r.mark in ("missing", "added") for r in rows):
        out.append(Note(Notice.SUITE_CHANGED))
    return out


def is_tolerance_only(b: pd.DataFrame, c: pd.DataFrame) -> bool:
    """Whether a benchmark on both sides has too few successful seeds on a side for a significance test."""
    ok_b, ok_c = (b["status"] == "ok").sum(), (c["status"] == "ok").sum()
    return bool(min(ok_b, ok_c) < MIN_SAMPLES)
