"""The records a comparison is made of: marks, notes with their reasons, rows and benchmarks, as data.

Nothing here is text for a reader: a note carries its `Reason` and the values
behind it, and `bench.compare.render` writes it out at the end. Decisions
(which remarks a report makes, whether nothing could be compared) read the
reasons, never the words.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

# Worst first: a benchmark's mark is the worst of its rows'.
MARKS = ("new failure", "worse", "missing", "not comparable", "fixed", "better", "added", "unchanged")
FAILING_MARKS = ("new failure", "worse", "missing")
RANK = {m: i for i, m in enumerate(MARKS)}

# How a stale baseline is refreshed, for the remarks that ask for it.
UPDATE_BASELINE_HINT = "make update-baseline"

# The row of a whole benchmark (missing, added, or nothing to compare it with).
WHOLE = "all"

# The columns of `Comparison.rows` and `Comparison.benchmarks`.
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


class Reason(enum.Enum):
    """Why a row or a benchmark got its mark, beyond its numbers.

    The values a `Note` of each reason carries (its ``detail``):

    - ``ONLY_IN_BASELINE``, ``ONLY_IN_CURRENT``: none.
    - ``NO_VALUE``: ``side`` ("baseline" or "current") without a finite value.
    - ``NOT_SIGNIFICANT``: ``p_value`` of a change beyond the tolerance.
    - ``NEW_FAILURE``, ``FIXED``: one run: ``sample`` and ``settings`` (its
      pairing key as ``(field, value)`` pairs), ``status``, ``step`` (where
      it diverged, or None) and ``error`` (first line, or "") of the run
      that is not ok (the current one for a new failure, the baseline one
      for a fix).
    - ``MEASUREMENT``: ``field`` (a measurement setting) and the sorted
      ``baseline`` and ``current`` values it has.
    - ``DATA_CHECKSUM``: the sorted ``baseline`` and ``current`` checksums.
    - ``SCHEMA``: ``version`` of the baseline and the version this vgbench
      ``reads``.
    - ``SEEDS_DIFFER``: the ``baseline`` and ``current`` seeds.
    """

    ONLY_IN_BASELINE = "only_in_baseline"
    ONLY_IN_CURRENT = "only_in_current"
    NO_VALUE = "no_value"
    NOT_SIGNIFICANT = "not_significant"
    NEW_FAILURE = "new_failure"
    FIXED = "fixed"
    MEASUREMENT = "measurement"
    DATA_CHECKSUM = "data_checksum"
    SCHEMA = "schema"
    SEEDS_DIFFER = "seeds_differ"


class Notice(enum.Enum):
    """A remark on the whole comparison, for the reader of the report.

    Detail values: ``NOTHING_COMPARED``: none. ``SCHEMA``: ``path`` and
    ``version`` of the baseline, the version this vgbench ``reads``.
    ``TOLERANCE_ONLY``: ``min_samples``. ``PARTLY_TOLERANCE_ONLY``: ``count``
    of ``total`` benchmarks, ``min_samples``. ``SIGNIFICANCE``:
    ``min_samples``, ``alpha``. ``ONE_SIDED_FIELDS``: ``fields``.
    ``NOT_GATING``: the non-gating ``metrics`` that got worse.
    ``MEASUREMENT_DIFFERS``, ``DATA_DIFFERS``, ``SUITE_CHANGED``: none.
    ``CROSS_BACKEND``: the ``baseline`` and ``current`` backends.
    """

    NOTHING_COMPARED = "nothing_compared"
    SCHEMA = "schema"
    TOLERANCE_ONLY = "tolerance_only"
    PARTLY_TOLERANCE_ONLY = "partly_tolerance_only"
    SIGNIFICANCE = "significance"
    ONE_SIDED_FIELDS = "one_sided_fields"
    MEASUREMENT_DIFFERS = "measurement_differs"
    DATA_DIFFERS = "data_differs"
    NOT_GATING = "not_gating"
    SUITE_CHANGED = "suite_changed"
    CROSS_BACKEND = "cross_backend"


@dataclass(frozen=True)
class Note:
    """One remark: its reason (a `Reason` or a `Notice`) and the values it is about."""

    reason: Reason | Notice
    detail: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Row:
    """The comparison of one metric of one benchmark.

    Attributes:
        benchmark: the benchmark's name.
        metric: a metric of `bench.compare.METRICS`, or ``"all"`` for the
            benchmark as a whole.
        mark: one of MARKS.
        gating: whether a failing mark fails the comparison.
        baseline, current: the medians over seeds (the status text for
            ``status``; None where there is no value).
        change: on the scale of the tolerance (absolute, decades further
            from 1, or a factor); NaN where nothing was compared.
        tolerance: NaN where none applies.
        p_value: of the significance test; NaN without one.
        test: ``"mannwhitneyu"``, ``"welch"``, ``"tolerance"`` (too few seeds
            for a test) or ``""`` (not a numeric comparison).
        n_baseline, n_current: the samples on each side.
        notes: why the row has its mark, beyond its numbers.
        blocking: the row fails even though its mark is not a failing one
            (a baseline that could not be read at all).
    """

    benchmark: str
    metric: str
    mark: str
    gating: bool = True
    baseline: Any = None
    current: Any = None
    change: float = math.nan
    tolerance: float = math.nan
    p_value: float = math.nan
    test: str = ""
    n_baseline: int = 0
    n_current: int = 0
    notes: tuple[Note, ...] = ()
    blocking: bool = False

    @property
    def fails(self) -> bool:
        """Whether this row fails the comparison."""
        return self.blocking or (self.mark in FAILING_MARKS and self.gating)

    def reasons(self) -> set:
        """The reasons of its notes."""
        return {n.reason for n in self.notes}


@dataclass(frozen=True)
class Benchmark:
    """One benchmark's line: its worst mark, whether it fails, its seeds and runs.

    Attributes:
        name: the benchmark's name (`bench.compare.matching.benchmark_name`).
        mark: the mark that sums up its rows.
        fails: whether it fails the comparison.
        n_baseline, n_current: its runs on each side.
        seeds_baseline, seeds_current: their seeds, in order.
        run_ids_baseline, run_ids_current: their run ids, in the same order.
        config: the config fields that identify it, with their values.
        notes: what is said about it: ``(metric, notes)`` pairs, the metric
            None for notes about the benchmark itself.
    """

    name: str
    mark: str
    fails: bool = False
    n_baseline: int = 0
    n_current: int = 0
    seeds_baseline: list = field(default_factory=list)
    seeds_current: list = field(default_factory=list)
    run_ids_baseline: list = field(default_factory=list)
    run_ids_current: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    notes: tuple[tuple[str | None, tuple[Note, ...]], ...] = ()
