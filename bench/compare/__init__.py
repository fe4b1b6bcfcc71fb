"""`vgbench compare BASELINE CURRENT`: regression check of one results directory against another.

Runs are matched by configuration, not by directory or run id: by
`bench.config.benchmark_fields`, the identity the report uses too. Runs
whose configs differ only in ``seed`` form one *benchmark* and their seeds
are its samples; ``log_every`` and ``act_every`` are not part of a benchmark's
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
backward_factor_final      decades further from 1, per layer           0.06
grad_ratio_init            decades further from 1                      0.5
backward_factor_init       decades further from 1, per layer           0.05
forward_factor_init        decades further from 1, per layer           0.1
theory_deviation_init      absolute increase, decades per layer        0.06
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
layer, i.e. about 1.9 decades over a 20-layer network. The tolerances of the
per-layer factors come from their measured seed-to-seed scatter (see
`bench.compare.tolerances`). The step-0 rows (``*_init``) catch a regression
of the initialization that a short run does not show in its accuracy;
``theory_deviation_init`` is the larger of ``|log10(measured / predicted)|``
of the backward and forward factors at step 0, against `bench.theory`'s
prediction for the run's config (`bench.compare.disagreement`): it grows when
the measurement leaves the theory, whichever way.

Only runs with status ``ok`` give metric samples: the numbers of a diverged
run describe its divergence, which the ``status`` row already reports.

Marks, per row and per benchmark (worst first): new failure, worse, missing,
not comparable, fixed, better, added, unchanged. The exit status of `run` is
1 on any regression (a gating row worse, a new failure, a benchmark missing
from the current results) or when nothing could be compared (a baseline of
another ``schema_version``, or every matched metric measured differently):
the baseline then needs a refresh. It is 0 otherwise, and 2 on bad input
(`UsageError`).

The package, stage by stage:

- `bench.compare.tolerances`: the compared metrics (registry entries of
  `bench.quantities`) and their tolerances;
- `bench.compare.matching`: runs paired into benchmarks;
- `bench.compare.statistics`: medians, changes, the significance test;
- `bench.compare.verdicts`: marks of rows and benchmarks, the verdict;
- `bench.compare.records`: the `Row`, `Benchmark` and `Note` records they
  produce (reasons are data, never parsed back from text);
- `bench.compare.comparison`: `compare`, which runs the stages;
- `bench.compare.render`: tables, Markdown, JSON and JUnit, written at the end;
- `bench.compare.cli`: the `vgbench compare` command.
"""

from vgbench.bench.compare.cli import add_arguments, run, write_report
from vgbench.bench.compare.comparison import Comparison, compare
from vgbench.bench.compare.matching import benchmark_name
from vgbench.bench.compare.records import (
    BENCHMARK_COLUMNS,
    FAILING_MARKS,
    MARKS,
    ROW_COLUMNS,
    UPDATE_BASELINE_HINT,
    Benchmark,
    Note,
    Notice,
    Reason,
    Row,
)
from vgbench.bench.compare.render import MAX_TABLE_ROWS, to_dict, to_json, to_junit, to_markdown
from vgbench.bench.compare.statistics import DEFAULT_ALPHA, MIN_SAMPLES
from vgbench.bench.compare.tolerances import DEFAULT_TOLERANCES, METRICS, check_tolerances, parse_tolerances

__all__ = [
    "BENCHMARK_COLUMNS",
    "DEFAULT_ALPHA",
    "DEFAULT_TOLERANCES",
    "FAILING_MARKS",
    "MARKS",
    "MAX_TABLE_ROWS",
    "METRICS",
    "MIN_SAMPLES",
    "ROW_COLUMNS",
    "UPDATE_BASELINE_HINT",
    "Benchmark",
    "Comparison",
    "Note",
    "Notice",
    "Reason",
    "Row",
    "add_arguments",
    "benchmark_name",
    "check_tolerances",
    "compare",
    "parse_tolerances",
    "run",
    "to_dict",
    "to_json",
    "to_junit",
    "to_markdown",
    "write_report",
]
