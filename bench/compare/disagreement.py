"""The step-0 disagreement of each run with the mean-field theory, a compared metric of `vgbench compare`.

``theory_deviation_init`` (registered in `bench.metrics`) is the larger of
``|log10(measured / predicted)|`` of the per-layer backward and forward
factors at step 0, in decades per layer: the measure by which the report
says that a pair disagrees with the theory. The prediction is
`bench.report.predictions.predict_runs` of the run's config. A comparison
reads no dataset: the prediction starts from the mean ``E[x²]`` of the
run's dataset and preprocessing (exactly 1 for standardized inputs), and the
runs of both sides get it from one call, so that a change of the metric is a
change of the measurement, never of the prediction. Runs the theory does not
cover (CNNs, normalization and residual fixes, models of one's own) have no
value, and their benchmarks no row for it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# The metric's column.
THEORY_DEVIATION = "theory_deviation_init"

# The config columns a prediction reads.
_CONFIG_COLUMNS = ("arch", "depth", "width", "activation", "initializer")


def theory_deviation(metrics: pd.DataFrame, predicted: pd.DataFrame) -> pd.Series:
    """Per run (aligned with ``metrics``): the larger deviation of the step-0 factors from their predictions.

    Args:
        metrics: `bench.metrics.run_metrics` rows (``backward_factor_init``, ``forward_factor_init``).
        predicted: `bench.report.predictions.Predictions.runs` of the same runs.

    Returns:
        Decades per layer; NaN where the theory does not apply or nothing was measured.
    """
    from vgbench.bench.report.predictions import deviation

    p = metrics[["run_id"]].merge(predicted, on="run_id", how="left")
    applicable = p["theory_applicable"].fillna(False).astype(bool).to_numpy()
    out = []
    for i, row in enumerate(metrics.to_dict("records")):
        devs = [
            deviation(row.get(f"{side}_factor_init"), p[f"predicted_{side}_factor"].iloc[i])
            for side in ("backward", "forward")
        ]
        devs = [d for d in devs if np.isfinite(d)]
        out.append(max(devs) if applicable[i] and devs else np.nan)
    return pd.Series(out, index=metrics.index, dtype="float64")


def add_theory_deviation(base: pd.DataFrame, cur: pd.DataFrame, manifest: dict) -> None:
    """Adds the ``theory_deviation_init`` column to the run metrics of both sides, from one prediction.

    Args:
        base, cur: `bench.metrics.run_metrics` of the baseline and the current results (changed in place).
        manifest: a manifest of the results (the data's image shape and classes).
    """
    from vgbench.bench.report.predictions import predict_runs

    both = pd.concat([base, cur], ignore_index=True)
    if both.empty or not set(_CONFIG_COLUMNS) <= set(both.columns):  # tables without configs: nothing to predict
        base[THEORY_DEVIATION] = np.nan
        cur[THEORY_DEVIATION] = np.nan
        return
    # One prediction per configuration, shared by the two sides (run ids of the two sides may coincide).
    predicted = predict_runs(both.drop_duplicates("run_id"), manifest or {}, load=False).runs
    base[THEORY_DEVIATION] = theory_deviation(base, predicted).to_numpy()
    cur[THEORY_DEVIATION] = theory_deviation(cur, predicted).to_numpy()
