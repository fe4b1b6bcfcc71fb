"""Statistics of a report: long-form tables computed from stored results, drawing and writing nothing.

Every function here is pure: it takes DataFrames (the tables of
`bench.results.load_results` and the per-run table of
`bench.metrics.run_metrics`) and returns a DataFrame or plain values. The
figures, the findings and the written summary read these tables, so a number
in a caption, a sentence and a plot is computed once.

Which quantities a table holds, whether they are averaged in log space and
the range their intervals are clipped to come from their registry entries
(`bench.metrics.METRICS`, `bench.quantities.LAYER_QUANTITIES`).

Repetitions over seeds are summarised by a mean and a 95% Student-t interval
(`summarize`). Quantities that span decades (gradient norms, ratios, factors)
are averaged in log space, i.e. their geometric mean is reported, because an
arithmetic mean of ``1e-12`` and ``1e-2`` says nothing about either.

A table that has nothing to show carries the reason in ``df.attrs["note"]``,
which the figure functions turn into their "skipped" reason.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

from vgbench.bench import metrics
from vgbench.bench import quantities as Q
from vgbench.bench.config import NOT_APPLICABLE, benchmark_fields
from vgbench.bench.quantities import LAYER_QUANTITIES, Quantity
from vgbench.bench.report import predictions
from vgbench.bench.report.text import CORE_KEYS, describe_slice, pair_label, status_text
from vgbench.bench.results import STATUSES, manifest_datasets
from vgbench.bench.utils import plain

CONFIDENCE = 0.95

# MNIST and Fashion-MNIST have ten balanced classes; the manifest's
# data.num_classes overrides this when present.
DEFAULT_NUM_CLASSES = 10


def _metrics(*names) -> dict[str, Quantity]:
    return {name: metrics.METRICS[name] for name in names}


# Per-pair quantities of the ranked table, in table order.
PAIR_QUANTITIES = _metrics(
    "test_accuracy",
    "backward_factor_init",
    "backward_factor_final",
    "forward_factor_init",
    "forward_factor_final",
    "grad_factor_init",
    "grad_factor_final",
    "grad_ratio_init",
    "grad_ratio_final",
    "dead_fraction_init",
    "dead_fraction_final",
    "saturated_fraction_init",
    "saturated_fraction_final",
    "underflow_layers_init",
    "underflow_layers_final",
    "wall_time_s",
)

# Per-run columns of `bench.report.predictions` that a pair takes from its first seed (they do not depend on it).
THEORY_COLUMNS = [c for c in predictions.RUN_COLUMNS if c != "run_id"]

# The activation × initializer grid: each quantity and whether the grid holds its log10.
# Dead and saturated fractions stand for their ``_final`` or ``_init`` metric (see `pair_grid`).
GRID_QUANTITIES = {
    "test_accuracy": False,
    "backward_factor_init": False,
    "forward_factor_init": False,
    "grad_factor_init": False,
    "grad_ratio_init": True,
    Q.DEAD_FRACTION: False,
    Q.SATURATED_FRACTION: False,
}

# Grid quantities with a mean-field prediction beside them: the column of `pair_table` holding it.
GRID_PREDICTIONS = {
    "backward_factor_init": "predicted_backward_factor",
    "forward_factor_init": "predicted_forward_factor",
}

# Per-layer activation statistics of `activation_profiles`.
ACTIVATION_STATISTICS = {
    name: LAYER_QUANTITIES[name] for name in (Q.ACT_MEAN, Q.ACT_STD, Q.DEAD_FRACTION, Q.SATURATED_FRACTION)
}

# Compared between a fix and its baseline in `fix_effects`.
FIX_QUANTITIES = _metrics("test_accuracy", "grad_ratio_init", "grad_ratio_final")

# Against depth in `depth_sweep`.
SWEEP_QUANTITIES = _metrics("test_accuracy", "grad_ratio_init")


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def with_note(df: pd.DataFrame, note: str) -> pd.DataFrame:
    """Returns ``df`` with ``attrs["note"]`` set: why there is nothing to show."""
    df = df.copy()
    df.attrs["note"] = note
    return df


def pair_keys(runs: pd.DataFrame) -> list[str]:
    """Columns that identify a pair: `bench.config.benchmark_fields`, in the table's column order."""
    fields = set(benchmark_fields(runs.columns))
    return [c for c in runs.columns if c in fields]


def varying_keys(runs: pd.DataFrame) -> list[str]:
    """Pair keys that take more than one value across ``runs``, besides CORE_KEYS."""
    return [k for k in pair_keys(runs) if k not in CORE_KEYS and runs[k].nunique(dropna=False) > 1]


def summarize(df: pd.DataFrame, by: list[str], column: str, log: bool = False, bounds=None) -> pd.DataFrame:
    """Mean and 95% confidence interval of ``column`` within groups.

    Args:
        df: long-form table.
        by: grouping columns (missing values form their own group).
        column: the measured quantity; non-finite values are ignored.
        log: average in log10 space and return the geometric mean and its
            interval; zeros make the geometric mean 0.
        bounds: ``(low, high)`` of a bounded quantity (an accuracy, a
            fraction); the interval is clipped to it.

    Returns:
        DataFrame with ``by`` and ``n, mean, lo, hi``. With one value the
        interval has zero width.
    """
    d = df[list(by)].copy()
    v = pd.to_numeric(df[column], errors="coerce").astype("float64")
    v = v.where(np.isfinite(v))
    if log:
        d["_zero"] = (v == 0).astype("int64")
        v = np.log10(v.where(v > 0))
    d["_v"] = v
    g = d.groupby(list(by), dropna=False, sort=True)
    out = g["_v"].agg(n="count", mean="mean", sd="std").reset_index()
    half = _half_width(out["n"].to_numpy(), out["sd"].to_numpy())
    out["lo"] = out["mean"] - half
    out["hi"] = out["mean"] + half
    if log:
        for c in ("mean", "lo", "hi"):
            out[c] = np.power(10.0, out[c])
        zeros = g["_zero"].sum().to_numpy() > 0
        out.loc[zeros, ["mean", "lo"]] = 0.0
        out["n"] = out["n"] + g["_zero"].sum().to_numpy()
    if bounds is not None:
        out["lo"] = out["lo"].clip(*bounds)
        out["hi"] = out["hi"].clip(*bounds)
    return out.drop(columns="sd")


def _half_width(n: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Half-width of the Student-t interval of a mean (0 for a single value)."""
    n = n.astype("float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        t = _scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, np.maximum(n - 1, 1))
        half = t * sd / np.sqrt(n)
    return np.where(n > 1, half, 0.0)


def with_diverged(out: pd.DataFrame, runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """``out`` (a `summarize` result over ``by``) with ``diverged``: how many of each group's runs diverged.

    Args:
        out: the summarized table.
        runs: the rows that were summarized, with ``by`` and ``run_id``;
            ``status`` (or ``diverged`` per run) says which diverged.
        by: the grouping columns of ``out``.
    """
    if "status" in runs.columns:
        flag = runs["status"].astype(str).eq("diverged")
    elif "diverged" in runs.columns:
        flag = runs["diverged"].astype(bool)
    else:
        return out.assign(diverged=0)
    d = runs[list(by)].assign(_div=flag.to_numpy(), _run=runs["run_id"].to_numpy() if "run_id" in runs else 0)
    # A run counts once in a group however many rows (layers, steps) it has there.
    counts = d[d["_div"]].drop_duplicates([*by, "_run"]).groupby(list(by), dropna=False).size()
    counts = counts.rename("diverged").reset_index()
    merged = out.merge(counts, on=list(by), how="left") if len(counts) else out.assign(diverged=0)
    merged["diverged"] = merged["diverged"].fillna(0).astype("int64")
    return merged


def _same_value(a, b) -> bool:
    return (_isna(a) and _isna(b)) or (not _isna(a) and not _isna(b) and a == b)


def _match(df: pd.DataFrame, values: dict) -> pd.Series:
    """Rows of ``df`` whose columns equal ``values`` (missing equals missing)."""
    mask = pd.Series(True, index=df.index)
    for k, v in values.items():
        mask &= df[k].isna() if _isna(v) else df[k] == v
    return mask


def _isna(v) -> bool:
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _mode_group(df: pd.DataFrame, keys: list[str]) -> dict:
    """The most common combination of ``keys`` in ``df`` (first in sort order on ties)."""
    if not keys:
        return {}
    counts = df.groupby(keys, dropna=False, sort=True).size()
    best = counts.idxmax()
    best = best if isinstance(best, tuple) else (best,)
    return {k: plain(v) for k, v in zip(keys, best)}


# --------------------------------------------------------------------------- #
# Per run and per pair
# --------------------------------------------------------------------------- #


def run_table(runs: pd.DataFrame, layers: pd.DataFrame, predicted: pd.DataFrame | None = None) -> pd.DataFrame:
    """`metrics.run_metrics` plus each run's flags (a list of `metrics.flags`) and its prediction.

    Args:
        runs, layers: the stored tables.
        predicted: `bench.report.predictions.Predictions.runs`; without it
            the THEORY_COLUMNS say that no prediction was made.
    """
    m = metrics.run_metrics(runs, layers)
    m["flags"] = [metrics.flags(row) for row in m.to_dict("records")]
    if predicted is None:
        predicted = pd.DataFrame({"run_id": m["run_id"], "theory_applicable": False, "theory_reason": "not predicted"})
    m = m.merge(predicted, on="run_id", how="left")
    for c in THEORY_COLUMNS:
        if c not in m.columns:
            m[c] = np.nan
    m["theory_applicable"] = m["theory_applicable"].fillna(False).astype(bool)
    return m


def pair_table(runs_m: pd.DataFrame) -> pd.DataFrame:
    """One row per pair (config without seed), ranked best first.

    Every quantity of PAIR_QUANTITIES is averaged over the pair's seeds
    (geometric mean for gradient ratios and factors) with its 95% interval
    in ``<quantity>_lo`` / ``<quantity>_hi``. Ranking: mean test accuracy,
    highest first (missing last); ties go to the per-layer gradient factor
    at initialization closest to 1.

    Args:
        runs_m: the table of `run_table`.

    Returns:
        DataFrame with the pair keys, ``rank, seeds, n_seeds, statuses``
        ({status: number of seeds}), ``status`` (the same in words,
        `text.status_text`), ``flags`` (a list), ``run_ids``, and the quantities; ``seeds`` ascending and
        ``run_ids`` in the same order (``run_ids[i]`` ran ``seeds[i]``).
    """
    keys = pair_keys(runs_m)
    # Numeric seed order within each pair, so that seeds and run_ids line up
    # (sorting either as text would put seed 10 before seed 2).
    runs_m = runs_m.assign(_seed=pd.to_numeric(runs_m["seed"], errors="coerce"))
    runs_m = runs_m.sort_values("_seed", kind="stable").drop(columns="_seed")
    base = runs_m.groupby(keys, dropna=False, sort=True)
    out = base.size().rename("n_seeds").reset_index()
    out["seeds"] = list(base["seed"].apply(lambda s: [int(x) for x in s]))
    out["run_ids"] = list(base["run_id"].apply(list))
    out["statuses"] = [_status_counts(s) for _, s in base["status"]]
    out["status"] = [status_text(c) for c in out["statuses"]]
    diverged = runs_m["diverged_step"].where(runs_m["diverged_step"] >= 0)
    out["diverged_step"] = diverged.groupby([runs_m[k] for k in keys], dropna=False, sort=True).min().to_numpy()
    out["error"] = base["error"].agg(lambda s: next((e for e in s if isinstance(e, str) and e), "")).to_numpy()
    out["flags"] = [_union_flags(s) for _, s in base["flags"]]
    for name, q in PAIR_QUANTITIES.items():
        s = summarize(runs_m, keys, name, log=q.log, bounds=q.bounds)
        out[name] = s["mean"].to_numpy()
        out[f"{name}_lo"] = s["lo"].to_numpy()
        out[f"{name}_hi"] = s["hi"].to_numpy()
    for which in ("init", "final"):
        name = f"deepest_underflow_layer_{which}"
        column = runs_m[name] if name in runs_m.columns else pd.Series(np.nan, index=runs_m.index)
        out[name] = column.groupby([runs_m[k] for k in keys], dropna=False, sort=True).max().to_numpy()
    for c in THEORY_COLUMNS:
        if c in runs_m.columns:
            out[c] = base[c].first().to_numpy() if runs_m[c].notna().any() else np.nan
    if "theory_applicable" in out.columns:
        out["theory_applicable"] = out["theory_applicable"].fillna(False).astype(bool)
    out["flag_words"] = [_flag_words(row) for row in out.to_dict("records")]
    closeness = np.abs(np.log10(out["grad_factor_init"].where(out["grad_factor_init"] > 0)))
    out["_acc"] = out["test_accuracy"].fillna(-1.0)
    out["_close"] = closeness.fillna(np.inf)
    out = out.sort_values(["_acc", "_close"], ascending=[False, True], kind="stable")
    out = out.drop(columns=["_acc", "_close"]).reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


def _status_counts(s: pd.Series) -> dict:
    """{status: number of runs}, known statuses first in STATUSES order."""
    counts = s.value_counts()
    order = [k for k in STATUSES if k in counts.index] + sorted(str(k) for k in counts.index if k not in STATUSES)
    return {k: int(counts[k]) for k in order}


def _flag_words(pair: dict) -> list[str]:
    """The words of a pair's flags (`metrics.Flag.describe`), from the pair's mean numbers where they raise the
    same flag, else from the seed that raised it."""
    row = dict(pair)
    row["status"] = "ok"
    of_pair = {str(f): f for f in metrics.flags(row)}
    words = []
    for flag in pair["flags"]:
        f = of_pair.get(str(flag), flag)
        if not isinstance(f, metrics.Flag):
            words.append(str(f))
            continue
        words.append(f"{_FLAG_WHEN[f.when]}, {f.describe()}" if f.when in _FLAG_WHEN else f.describe())
    return words


# The moment of a timed flag, before its words.
_FLAG_WHEN = {"init": "at step 0", "final": "at the end of training"}


def _union_flags(s: pd.Series) -> list[str]:
    seen = []
    for flags in s:
        for flag in flags if isinstance(flags, (list, tuple, np.ndarray)) else ():
            if flag not in seen:
                seen.append(flag)
    return seen


def main_slice(table: pd.DataFrame, free=("activation", "initializer")) -> tuple[pd.DataFrame, dict]:
    """The rows of the most common setting, letting only ``free`` keys vary.

    Runs without a fix are preferred: the activation × initializer
    comparison is about the plain network.

    Args:
        table: a run or pair table (with the pair keys as columns).
        free: keys that may take any value within the slice.

    Returns:
        (rows of the slice, {key: value} of the fixed keys).
    """
    keys = [k for k in pair_keys(table) if k not in free]
    base = table[table["fix"] == "none"] if (table["fix"] == "none").any() else table
    chosen = _mode_group(base, keys)
    return base[_match(base, chosen)], chosen


# --------------------------------------------------------------------------- #
# Tables of the figures
# --------------------------------------------------------------------------- #


def gradient_profiles(
    runs_m: pd.DataFrame, layers: pd.DataFrame, predicted_layers: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per-layer gradient and signals at step 0 and at the end, measured and predicted, averaged over seeds.

    Uses `metrics.gradient_profile` (``‖∂L/∂W‖/√|W|``) for both the kernel
    and the bias of the hidden layers of ``runs_m``. A gradient that
    underflowed to exactly 0 in some seed makes that layer's geometric
    mean 0. At step 0 it adds the backward signal (``backward_rms``) and
    the forward one (``preact_rms``), each with its mean-field prediction
    (``source`` 'theory'): the predicted backward RMS, which the theory
    gives relative to the gradient with respect to the logits, is
    multiplied by the run's measured RMS of that gradient (the output
    layer's ``backward_rms``), so both lines are in the same units.

    Args:
        runs_m: the runs of the slice.
        layers: the stored layers table.
        predicted_layers: `bench.report.predictions.Predictions.layers`.

    Returns:
        DataFrame ``activation, initializer, parameter ('kernel'/'bias'/
        'backward'/'forward'), when ('step 0'/'end of training'), source
        ('measured'/'theory'), layer_index, n, mean, lo, hi``.
    """
    sel = layers[layers["run_id"].isin(runs_m["run_id"])]
    h = metrics.hidden(sel)
    frames = []
    for column, parameter in ((Q.KERNEL_GRAD_NORM, "kernel"), (Q.BIAS_GRAD_NORM, "bias")):
        for which, when in (("init", "step 0"), ("final", "end of training")):
            p = metrics.gradient_profile(h, which, column)
            # Zeros stay: an underflowed gradient is the most vanishing value, not a missing one.
            p = p[np.isfinite(p["value"])]
            if p.empty:
                continue
            p = p.assign(parameter=parameter, when=when)
            frames.append(p)
    init = sel[sel["step"] == 0]
    logits = init.loc[init["layer_name"] == "output"].set_index("run_id")
    for column, parameter, predicted in (
        (Q.BACKWARD_RMS, "backward", "predicted_backward_rms"),
        (Q.PREACT_RMS, "forward", "predicted_preact_rms"),
    ):
        if column not in init.columns:
            continue
        m = metrics.hidden(init)[["run_id", "layer_index", column]].rename(columns={column: "value"})
        m = m[np.isfinite(m["value"].astype("float64"))]
        frames.append(m.assign(parameter=parameter, when="step 0", source="measured"))
        if predicted_layers is None or predicted_layers.empty:
            continue
        t = predicted_layers[predicted_layers["run_id"].isin(m["run_id"].unique())]
        value = t[predicted].astype("float64")
        if parameter == "backward":
            value = value * t["run_id"].map(logits[column]).astype("float64")
        t = t[["run_id", "layer_index"]].assign(value=value.to_numpy())
        frames.append(t[np.isfinite(t["value"])].assign(parameter=parameter, when="step 0", source="theory"))
    columns = ["activation", "initializer", "parameter", "when", "source", "layer_index", "n", "mean", "lo", "hi"]
    if not frames:
        columns = [*columns, "diverged"]
        return with_note(pd.DataFrame(columns=columns), "no finite gradient norms were recorded")
    p = pd.concat(frames, ignore_index=True)
    p["source"] = p["source"].fillna("measured") if "source" in p.columns else "measured"
    p = p.merge(runs_m[["run_id", "activation", "initializer", "status"]], on="run_id")
    by = ["activation", "initializer", "parameter", "when", "source", "layer_index"]
    out = with_diverged(summarize(p, by, "value", log=True), p, by)
    return out[[*columns, "diverged"]]


def heatmap_runs(pairs: pd.DataFrame, layers: pd.DataFrame, main: dict | None = None) -> pd.DataFrame:
    """Layer × step RMS kernel gradient per weight of the best and the worst pair of one setting.

    Like is compared with like: both pairs come from the report's slice
    (``main``: the same depth, width, fix and other settings; only the
    activation and initializer differ). Best is the top of the ranking of
    `pair_table` (test accuracy, then the gradient factor); worst is the
    pair whose gradient is most unequal across layers at the end of
    training (largest ``|log10 grad_ratio_final|``, at step 0 where there
    is no end; a ratio of exactly 0, an underflowed first-layer gradient,
    counts as infinitely unequal). Only pairs with recorded gradient norms
    count. For each, the run of its lowest seed with recorded norms is
    shown. When the slice holds one such pair only, the worst is taken at
    the best pair's depth, and failing that anywhere; ``attrs["note"]``
    then says why.

    Args:
        pairs: the ranked table of `pair_table`.
        layers: the stored layers table.
        main: the fixed keys of the slice (`main_slice`); by default the
            most common setting of ``pairs``.

    Returns:
        DataFrame ``role, label, run_id, step, layer_index, layer_name,
        log10_norm``; ``role`` is 'best' or 'worst'.
    """
    columns = ["role", "label", "run_id", "step", "layer_index", "layer_name", "log10_norm"]
    recorded = set(layers.loc[layers[Q.KERNEL_GRAD_NORM].notna(), "run_id"])
    candidates = pairs[[bool(recorded & set(ids)) for ids in pairs["run_ids"]]]
    if candidates.empty:
        return with_note(pd.DataFrame(columns=columns), "no run recorded kernel gradient norms")
    extra = varying_keys(pairs)
    if main is None:
        _, main = main_slice(pairs)
    chosen_keys = {k: v for k, v in main.items() if k in candidates.columns}
    in_slice = candidates[_match(candidates, chosen_keys)]
    why = ""
    if len(in_slice) >= 2:
        candidates = in_slice
    else:
        top = in_slice.iloc[0] if len(in_slice) else candidates.iloc[0]
        same_depth = candidates[candidates["depth"] == top["depth"]]
        same_depth = pd.concat([same_depth[same_depth.index == top.name], same_depth[same_depth.index != top.name]])
        if len(same_depth) >= 2:
            candidates = same_depth
            why = f"the slice ({describe_slice(main)}) holds one pair: the worst is taken at depth {top['depth']}"
        else:
            candidates = pd.concat([candidates[candidates.index == top.name], candidates[candidates.index != top.name]])
            why = f"no other pair was run at depth {top['depth']}: the worst comes from another depth"
    best = candidates.iloc[0]
    chosen = [("best", best)]
    others = candidates.iloc[1:]
    if len(others):
        ratio = others["grad_ratio_final"].where(others["grad_ratio_final"].notna(), others["grad_ratio_init"])
        ratio = ratio.astype("float64")
        imbalance = np.abs(np.log10(ratio.where(ratio > 0)))
        imbalance[ratio == 0] = np.inf
        # Without any ratio, the lowest-ranked pair is the worst.
        worst = others.loc[imbalance.idxmax()] if imbalance.notna().any() else others.iloc[-1]
        chosen.append(("worst", worst))
    frames = []
    for role, row in chosen:
        # run_ids are in seed order (pair_table): the first recorded is the lowest seed.
        run_id = next(r for r in row["run_ids"] if r in recorded)
        d = layers.loc[layers["run_id"] == run_id]
        d = d[["run_id", "step", "layer_index", "layer_name"]].assign(kernel_grad_norm=metrics.per_weight(d))
        d = d.dropna(subset=[Q.KERNEL_GRAD_NORM])
        v = d[Q.KERNEL_GRAD_NORM].where(d[Q.KERNEL_GRAD_NORM] > 0)
        # The slice is named in the title: a pair names only the keys in which it differs from it.
        label = pair_label(row, [k for k in extra if k not in chosen_keys or not _same_value(row[k], chosen_keys[k])])
        status = metrics_status(row)
        d = d.assign(role=role, label=label + (f" ({status})" if status else ""), log10_norm=np.log10(v))
        frames.append(d)
    out = pd.concat(frames, ignore_index=True)
    out["log10_norm"] = out["log10_norm"].where(np.isfinite(out["log10_norm"]))
    out = out[columns]
    out.attrs["slice"] = describe_slice(main, extra)
    if why:
        out.attrs["why"] = why
    return out


def metrics_status(pair) -> str:
    """'' for a pair whose runs all finished ok, else its statuses in words ('1 diverged at step 3')."""
    counts = dict(pair.get("statuses") or {})
    if set(counts) <= {"ok"}:
        return ""
    step = pair.get("diverged_step")
    text = status_text(counts)
    if counts.get("diverged") and step is not None and np.isfinite(step) and step >= 0:
        text += f", diverged at step {int(step)}"
    return text


# (column of pair_table, label, log10?) of the activation × initializer grid.
def pair_grid(pairs: pd.DataFrame, main: dict | None = None) -> pd.DataFrame:
    """Activation × initializer values of the main slice, for annotated heatmaps.

    Dead and saturated fractions are taken at the end of training when any
    pair has them there, else at step 0; the quantity's label (its
    registry label) says which.

    Args:
        pairs: the ranked table of `pair_table`.
        main: the fixed keys of the report's slice (`main_slice` of the
            runs), so that this figure shows the same setting as the
            others; by default the most common setting of ``pairs``.

    Returns:
        DataFrame ``activation, initializer, quantity, label, value,
        predicted, note``; for the ratio, ``value`` is log10 of the
        geometric mean, ``-inf`` where the ratio is exactly 0 (the first
        layer's gradient underflowed). ``predicted`` is the mean-field
        prediction of the quantities of GRID_PREDICTIONS (NaN elsewhere);
        ``note`` says in a word or two why a value is missing.
    """
    columns = ["activation", "initializer", "quantity", "label", "value", "predicted", "note"]
    if main is None:
        sliced, chosen = main_slice(pairs)
    else:
        chosen = {k: v for k, v in main.items() if k in pairs.columns}
        sliced = pairs[_match(pairs, chosen)]
    if sliced.empty:
        return with_note(pd.DataFrame(columns=columns), "no runs")
    frames = []
    for quantity, log in GRID_QUANTITIES.items():
        column = quantity
        if quantity not in metrics.METRICS:
            final = f"{quantity}_final"
            column = final if sliced[final].notna().any() else f"{quantity}_init"
        label = metrics.METRICS[column].label
        label = f"log10 {label}" if log else label
        v = sliced[column].astype("float64")
        if log:
            # log10(0) = -inf is kept: it is the most vanishing pair, not a missing one.
            with np.errstate(divide="ignore"):
                v = np.log10(v.where(v >= 0))
        predicted = GRID_PREDICTIONS.get(quantity)
        if predicted in sliced.columns:
            pv = pd.to_numeric(sliced[predicted], errors="coerce").astype("float64").to_numpy()
        else:
            pv = np.full(len(sliced), np.nan)
        frames.append(
            pd.DataFrame(
                {
                    "activation": sliced["activation"].to_numpy(),
                    "initializer": sliced["initializer"].to_numpy(),
                    "quantity": quantity,
                    "label": label,
                    "value": v.to_numpy(),
                    "predicted": pv,
                    "note": [_missing_note(r, column) for r in sliced.to_dict("records")],
                }
            )
        )
    out = pd.concat(frames, ignore_index=True)
    out.attrs["slice"] = describe_slice(chosen, varying_keys(pairs))
    out.attrs["max_seeds"] = int(sliced["n_seeds"].max()) if "n_seeds" in sliced.columns else 1
    return out


def _missing_note(pair: dict, column: str) -> str:
    """Why a pair has no value of ``column``, in a word or two for a heatmap cell ("" when it has one)."""
    v = pair.get(column)
    if v is not None and not (isinstance(v, float) and np.isnan(v)):
        return ""
    statuses = pair.get("statuses") or {}
    if statuses and "ok" not in statuses:
        return "failed" if "failed" in statuses else "diverged"
    if column.endswith("_final") and pair.get("max_steps") == 0:
        return "no training"
    if column.startswith(Q.SATURATED_FRACTION):
        return "n/a"
    if column.startswith(("backward_factor", "forward_factor", "grad_factor", "grad_ratio")):
        n_under = pair.get(f"underflow_layers_{column.rsplit('_', 1)[-1]}")
        depth = pair.get("depth")
        if n_under is not None and depth is not None and n_under >= depth > 0:
            # No layer left to fit a factor over: every hidden layer's gradient is exactly 0.
            return "all 0"
        if n_under is not None and n_under > 0:
            return "underflow"
    return "not measured"


def theory_points(pairs: pd.DataFrame) -> pd.DataFrame:
    """Predicted against measured per-layer factors at step 0, one point per pair and signal.

    Args:
        pairs: the ranked table of `pair_table` (with the prediction columns).

    Returns:
        DataFrame ``label, activation, initializer, depth, fix, signal
        ('backward'/'forward'), predicted, measured, lo, hi, deviation``
        (|log10(measured/predicted)|). Pairs the theory does not cover are
        listed as ``"label: reason"`` in ``attrs["excluded"]``; the
        tolerance is in ``attrs["tolerance"]``.
    """
    columns = [
        "label",
        "activation",
        "initializer",
        "depth",
        "fix",
        "signal",
        "predicted",
        "measured",
        "lo",
        "hi",
        "deviation",
        "diverged",
    ]
    if "theory_applicable" not in pairs.columns:
        return with_note(pd.DataFrame(columns=columns), "no predictions were made")
    extra = varying_keys(pairs)
    rows, excluded = [], []
    for r in pairs.to_dict("records"):
        label = pair_label(r, extra)
        if not r["theory_applicable"]:
            excluded.append(f"{label}: {r.get('theory_reason') or 'not applicable'}")
            continue
        for signal in ("backward", "forward"):
            measured, predicted = r.get(f"{signal}_factor_init"), r.get(f"predicted_{signal}_factor")
            d = predictions.deviation(measured, predicted)
            if np.isfinite(d):
                rows.append(
                    {
                        "label": label,
                        "activation": r["activation"],
                        "initializer": r["initializer"],
                        "depth": r.get("depth"),
                        "fix": r.get("fix"),
                        "signal": signal,
                        "predicted": float(predicted),
                        "measured": float(measured),
                        "lo": r.get(f"{signal}_factor_init_lo"),
                        "hi": r.get(f"{signal}_factor_init_hi"),
                        "deviation": d,
                        "diverged": int((r.get("statuses") or {}).get("diverged", 0)),
                    }
                )
    out = pd.DataFrame(rows, columns=columns)
    out.attrs["excluded"] = excluded
    out.attrs["tolerance"] = predictions.TOLERANCE
    if out.empty:
        why = "no pair has both a prediction and a measured factor at step 0"
        out.attrs["note"] = why + (f" ({'; '.join(excluded[:3])})" if excluded else "")
    return out


def depth_sweep(runs_m: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy and first/last gradient ratio against depth.

    Only activation × initializer pairs run at two or more depths are kept
    (within the most common setting of the other keys, without fixes).

    Returns:
        DataFrame ``activation, initializer, depth, quantity, n, mean, lo,
        hi``; ``quantity`` is 'test_accuracy' or 'grad_ratio_init'.
    """
    columns = ["activation", "initializer", "depth", "quantity", "n", "mean", "lo", "hi"]
    sliced, chosen = main_slice(runs_m, free=("activation", "initializer", "depth"))
    by = ["activation", "initializer", "depth"]
    frames = [
        with_diverged(summarize(sliced, by, name, log=q.log, bounds=q.bounds), sliced, by).assign(quantity=name)
        for name, q in SWEEP_QUANTITIES.items()
    ]
    columns = [*columns, "diverged"]
    out = pd.concat(frames, ignore_index=True)[columns]
    # A depth where every run failed has no point; a single point is no sweep.
    out = out[out["mean"].notna()]
    depths = out.groupby(["activation", "initializer", "quantity"])["depth"].transform("nunique")
    out = out[depths >= 2].reset_index(drop=True)
    if out.empty:
        found = sorted(int(d) for d in runs_m["depth"].unique())
        run_at = sliced.groupby(["activation", "initializer"])["depth"].nunique()
        if len(found) == 1:
            why = f"found depth {found[0]} only"
        elif run_at.empty or run_at.max() < 2:
            why = f"found depths {', '.join(map(str, found))}, but never one pair in one setting at two of them"
        else:
            why = "the pairs run at several depths have no measured values (failed runs?)"
        return with_note(
            pd.DataFrame(columns=columns),
            f"a depth sweep needs an activation × initializer pair measured at two or more depths; {why}",
        )
    out.attrs["slice"] = describe_slice(chosen, varying_keys(runs_m))
    return out


def learning_curves(runs_m: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Loss and accuracy against step, per activation and initializer.

    Returns:
        DataFrame ``activation, initializer, step, quantity ('loss' /
        'accuracy'), split ('train'/'test'), n, mean, lo, hi`` (mean over
        seeds with its 95% interval).
    """
    columns = ["activation", "initializer", "step", "quantity", "split", "n", "mean", "lo", "hi"]
    needed = {"run_id", "step", "train_loss", "test_loss", "train_accuracy", "test_accuracy"}
    if history.empty or not needed <= set(history.columns):
        return with_note(pd.DataFrame(columns=columns), "no training history was recorded")
    h = history[history["run_id"].isin(runs_m["run_id"])]
    h = h.merge(runs_m[["run_id", "activation", "initializer", "status"]], on="run_id")
    if h.empty:
        return with_note(pd.DataFrame(columns=columns), "no training history was recorded for the runs shown")
    long = h.melt(
        id_vars=["run_id", "status", "activation", "initializer", "step"],
        value_vars=["train_loss", "test_loss", "train_accuracy", "test_accuracy"],
        var_name="metric",
    )
    long[["split", "quantity"]] = long["metric"].str.split("_", n=1, expand=True)
    long = long[np.isfinite(long["value"].astype("float64"))]
    if long.empty or long["step"].nunique() < 2:
        return with_note(pd.DataFrame(columns=columns), "the history holds fewer than two evaluation steps")
    by = ["activation", "initializer", "quantity", "split", "step"]
    out = with_diverged(summarize(long, by, "value"), long, by)
    # Losses are non-negative and accuracies lie in [0, 1]: clip the intervals.
    top = np.where(out["quantity"] == "accuracy", 1.0, np.inf)
    out["lo"] = out["lo"].clip(lower=0.0)
    out["hi"] = np.minimum(out["hi"], top)
    return out[[*columns, "diverged"]]


def activation_profiles(runs_m: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """Per-layer activation statistics at step 0 and at the last measured step.

    Returns:
        DataFrame ``activation, initializer, statistic, when, layer_index, n,
        mean, lo, hi`` over the hidden layers (mean over seeds).
    """
    columns = ["activation", "initializer", "statistic", "when", "layer_index", "n", "mean", "lo", "hi"]
    stats = [c for c in ACTIVATION_STATISTICS if c in layers.columns]
    h = metrics.hidden(layers[layers["run_id"].isin(runs_m["run_id"])])
    h = h.dropna(subset=[Q.ACT_STD]) if Q.ACT_STD in h.columns else h.iloc[0:0]
    if h.empty or not stats:
        return with_note(pd.DataFrame(columns=columns), "no activation statistics were recorded")
    last = h.groupby("run_id")["step"].transform("max")
    init = h[h["step"] == 0].assign(when="step 0")
    end = h[(h["step"] == last) & (h["step"] > 0)].assign(when="end of training")
    both = pd.concat([init, end], ignore_index=True).merge(
        runs_m[["run_id", "activation", "initializer", "status"]], on="run_id"
    )
    long = both.melt(
        id_vars=["run_id", "status", "activation", "initializer", "when", "layer_index"],
        value_vars=stats,
        var_name="statistic",
    )
    long = long.dropna(subset=["value"])
    by = ["activation", "initializer", "statistic", "when", "layer_index"]
    out = with_diverged(summarize(long, by, "value"), long, by)
    for name, q in ACTIVATION_STATISTICS.items():
        if q.bounds is not None:
            rows = out["statistic"] == name
            out.loc[rows, "lo"] = out.loc[rows, "lo"].clip(*q.bounds)
            out.loc[rows, "hi"] = out.loc[rows, "hi"].clip(*q.bounds)
    return out[[*columns, "diverged"]]


def fix_effects(runs_m: pd.DataFrame) -> pd.DataFrame:
    """Each fix against the no-fix baseline of the same setting.

    A case is a setting (every pair key but the fix) run both without a fix
    and with at least one fix.

    Returns:
        DataFrame ``case, fix, quantity, n, mean, lo, hi, baseline, delta``
        plus the case's keys; ratios are geometric means and their ``delta``
        is the change in log10.
    """
    columns = ["case", "fix", "quantity", "n", "mean", "lo", "hi", "baseline", "delta"]
    keys = [k for k in pair_keys(runs_m) if k != "fix"]
    if not (runs_m["fix"] != "none").any():
        return with_note(pd.DataFrame(columns=columns), "no run used a fix")
    gid = runs_m.groupby(keys, dropna=False, sort=True).ngroup()
    has_base = runs_m["fix"].eq("none").groupby(gid).transform("any")
    has_fix = runs_m["fix"].ne("none").groupby(gid).transform("any")
    cases = runs_m[has_base & has_fix]
    if cases.empty:
        return with_note(pd.DataFrame(columns=columns), "no fix run has a matching run without a fix")
    # Only what tells the cases apart is named in them.
    extra = varying_keys(cases)
    frames = []
    for name, q in FIX_QUANTITIES.items():
        s = summarize(cases, keys + ["fix"], name, log=q.log, bounds=q.bounds)
        frames.append(with_diverged(s, cases, keys + ["fix"]).assign(quantity=name))
    out = pd.concat(frames, ignore_index=True)
    out["case"] = [pair_label({**row, "fix": "none"}, extra) for row in out.to_dict("records")]
    base = out[out["fix"] == "none"].set_index(["case", "quantity"])["mean"]
    out["baseline"] = [base.get((c, q), np.nan) for c, q in zip(out["case"], out["quantity"])]
    ratio_rows = out["quantity"].map(lambda name: FIX_QUANTITIES[name].log).astype(bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_delta = np.log10(out["mean"]) - np.log10(out["baseline"])
    out["delta"] = np.where(ratio_rows, log_delta, out["mean"] - out["baseline"])
    return out[columns + ["diverged"] + keys]


def activation_curves(names, lo: float = -5.0, hi: float = 5.0, num: int = 401) -> pd.DataFrame:
    """Each activation and its derivative on ``[lo, hi]``.

    The derivative comes from `tf.GradientTape` through the function as the
    models apply it (`models.activations.get(name)`), so the plot shows what
    backpropagation multiplies by.

    Returns:
        DataFrame ``activation, family, x, f, df``; activations that cannot be
        evaluated are listed in ``attrs["note"]``.
    """
    columns = ["activation", "family", "x", "f", "df"]
    try:
        import tensorflow as tf

        from vgbench.models import activations as registry
    except ImportError as e:
        return with_note(pd.DataFrame(columns=columns), f"models.activations is not available ({e})")
    xs = np.linspace(lo, hi, num, dtype="float32")
    frames, failed = [], []
    for name in sorted(set(names) - {NOT_APPLICABLE}):
        try:
            act = registry.get(name)
            x = tf.constant(xs)
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = act(x)
            # Elementwise functions: the gradient of the sum is the derivative.
            dy = tape.gradient(y, x)
            if dy is None:
                raise ValueError("no gradient")
            frames.append(
                pd.DataFrame(
                    {"activation": name, "family": act.family, "x": xs, "f": np.asarray(y), "df": np.asarray(dy)}
                )
            )
        except Exception as e:  # one odd activation must not cost the others
            failed.append(f"{name} ({type(e).__name__}: {e})")
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    if failed:
        out.attrs["note"] = "could not evaluate " + "; ".join(failed)
    return out


# --------------------------------------------------------------------------- #
# Budget and chance
# --------------------------------------------------------------------------- #


def budget(runs: pd.DataFrame, manifest: dict) -> dict:
    """What the runs cost and how far they trained, from runs.parquet.

    Returns:
        A JSON-ready dict: run and pair counts, seeds, steps, epochs, batch
        sizes, optimizer, learning rates, samples and wall time
        (`bench.report.text.budget_text` writes it as one paragraph).
    """

    def values(col):
        if col not in runs.columns:
            return []
        return sorted({plain(v) for v in runs[col]}, key=lambda v: (v is None, str(v) if v is None else v))

    n_pairs = len(runs.groupby(pair_keys(runs), dropna=False))
    seeds_per_pair = runs.groupby(pair_keys(runs), dropna=False)["seed"].nunique()
    steps = pd.to_numeric(runs["steps"], errors="coerce")
    out = {
        "runs": int(len(runs)),
        "pairs": int(n_pairs),
        "statuses": {str(k): int(v) for k, v in runs["status"].value_counts().items()},
        "seeds": values("seed"),
        "seeds_per_pair": [int(seeds_per_pair.min()), int(seeds_per_pair.max())],
        "steps": [plain(steps.min()), plain(steps.max())],
        "max_steps": values("max_steps"),
        "epochs": values("epochs"),
        "batch_size": values("batch_size"),
        "optimizer": values("optimizer"),
        "learning_rate": values("learning_rate"),
        "dataset": values("dataset"),
        "train_samples": values("train_samples"),
        "test_samples": values("test_samples"),
        "n_train": _dataset_field(manifest, "n_train", values("dataset")),
        "n_test": _dataset_field(manifest, "n_test", values("dataset")),
        "wall_time_s": float(pd.to_numeric(runs["wall_time_s"], errors="coerce").sum()),
    }
    return out


def _dataset_field(manifest: dict, key: str, names=None):
    """``key`` of the manifest's datasets (those named, when given) if they all agree on it, else None."""
    infos = manifest_datasets(manifest)
    found = {plain(info.get(key)) for name, info in infos.items() if names is None or name in names}
    return found.pop() if len(found) == 1 else None


def chance_accuracy(manifest: dict) -> float:
    """Accuracy of guessing: 1 / number of classes."""
    n = _dataset_field(manifest, "num_classes") or DEFAULT_NUM_CLASSES
    return 1.0 / float(n)
