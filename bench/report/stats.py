"""Statistics of a report: long-form tables computed from stored results.

Every function here is pure: it takes DataFrames (the tables of
`bench.results.load_results` and the per-run table of
`bench.metrics.run_metrics`) and returns a DataFrame or plain values, without
drawing anything. The figures and the written summary read these tables, so a
number in a caption, a sentence and a plot is computed once.

Repetitions over seeds are summarised by a mean and a 95% Student-t interval
(`summarize`). Quantities that span decades (gradient norms, ratios, factors)
are averaged in log space, i.e. their geometric mean is reported, because an
arithmetic mean of ``1e-12`` and ``1e-2`` says nothing about either.

A table that has nothing to show carries the reason in ``df.attrs["note"]``,
which the figure functions turn into their "skipped" message.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

from bench import metrics
from bench.results import RUN_OUTCOME_COLUMNS

CONFIDENCE = 0.95

# MNIST and Fashion-MNIST have ten balanced classes; the manifest's
# data.num_classes overrides this when present.
DEFAULT_NUM_CLASSES = 10

# Accuracy below this multiple of chance is reported as "chance".
CHANCE_MARGIN = 1.5

# Config columns that differ between repetitions of one pair (seed) or only
# change how often things are measured, not what is trained.
NON_PAIR_FIELDS = ("seed", "log_every", "act_every")

# The columns that name a pair in sentences and tables, always shown.
CORE_KEYS = ("activation", "initializer", "depth", "fix")

# Dead or saturated fractions below this are not worth a word in a finding.
MENTION_FRACTION = 0.01

# Findings about single pairs beyond this many are left to the table.
MAX_PAIR_FINDINGS = 12

# Bounds of accuracies and fractions, to clip their intervals to.
UNIT = (0.0, 1.0)

# Per-pair quantities of the ranked table: column → (run_metrics column, log, bounds).
PAIR_QUANTITIES = {
    "test_accuracy": ("test_accuracy", False, UNIT),
    "grad_factor_init": ("grad_factor_init", True, None),
    "grad_factor_final": ("grad_factor_final", True, None),
    "grad_ratio_init": ("grad_ratio_init", True, None),
    "grad_ratio_final": ("grad_ratio_final", True, None),
    "dead_fraction_init": ("dead_fraction_init", False, UNIT),
    "dead_fraction_final": ("dead_fraction_final", False, UNIT),
    "saturated_fraction_init": ("saturated_fraction_init", False, UNIT),
    "saturated_fraction_final": ("saturated_fraction_final", False, UNIT),
    "wall_time_s": ("wall_time_s", False, (0.0, np.inf)),
}


# Columns of the run and pair tables that are not RunConfig fields.
_NOT_CONFIG = {
    "run_id",
    "traceback",
    "flags",
    "rank",
    "n_seeds",
    "seeds",
    "run_ids",
    *RUN_OUTCOME_COLUMNS,
    *metrics.METRIC_COLUMNS,
    *(f"{q}{s}" for q in PAIR_QUANTITIES for s in ("", "_lo", "_hi")),
}


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def with_note(df: pd.DataFrame, note: str) -> pd.DataFrame:
    """Returns ``df`` with ``attrs["note"]`` set: why there is nothing to show."""
    df = df.copy()
    df.attrs["note"] = note
    return df


def config_columns(runs: pd.DataFrame) -> list[str]:
    """The RunConfig columns of a run or pair table (everything that is not an outcome)."""
    return [c for c in runs.columns if c not in _NOT_CONFIG]


def pair_keys(runs: pd.DataFrame) -> list[str]:
    """Columns that identify a pair: the config without seed and logging periods."""
    return [c for c in config_columns(runs) if c not in NON_PAIR_FIELDS]


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
    return {k: _plain(v) for k, v in zip(keys, best)}


def _plain(v):
    """A numpy/pandas scalar as a plain Python value (None for missing)."""
    if _isna(v):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


# --------------------------------------------------------------------------- #
# Per run and per pair
# --------------------------------------------------------------------------- #


def run_table(runs: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """`metrics.run_metrics` plus each run's flags (a '; '-joined string)."""
    m = metrics.run_metrics(runs, layers)
    m["flags"] = ["; ".join(metrics.flags(row)) for row in m.to_dict("records")]
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
        DataFrame with the pair keys, ``rank, seeds, n_seeds, status,
        flags, run_ids``, and the quantities; ``seeds`` ascending and
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
    out["status"] = base["status"].agg(_status_text).to_numpy()
    diverged = runs_m["diverged_step"].where(runs_m["diverged_step"] >= 0)
    out["diverged_step"] = diverged.groupby([runs_m[k] for k in keys], dropna=False, sort=True).min().to_numpy()
    out["error"] = base["error"].agg(lambda s: next((e for e in s if isinstance(e, str) and e), "")).to_numpy()
    out["flags"] = base["flags"].agg(_union_flags).to_numpy()
    for name, (column, log, bounds) in PAIR_QUANTITIES.items():
        s = summarize(runs_m, keys, column, log=log, bounds=bounds)
        out[name] = s["mean"].to_numpy()
        out[f"{name}_lo"] = s["lo"].to_numpy()
        out[f"{name}_hi"] = s["hi"].to_numpy()
    closeness = np.abs(np.log10(out["grad_factor_init"].where(out["grad_factor_init"] > 0)))
    out["_acc"] = out["test_accuracy"].fillna(-1.0)
    out["_close"] = closeness.fillna(np.inf)
    out = out.sort_values(["_acc", "_close"], ascending=[False, True], kind="stable")
    out = out.drop(columns=["_acc", "_close"]).reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


def _status_text(s: pd.Series) -> str:
    counts = s.value_counts()
    if len(counts) == 1:
        return str(counts.index[0])
    return ", ".join(f"{int(counts[k])} {k}" for k in ("ok", "diverged", "failed") if k in counts)


def _union_flags(s: pd.Series) -> str:
    seen = []
    for text in s:
        for flag in str(text or "").split("; "):
            if flag and flag not in seen:
                seen.append(flag)
    return "; ".join(seen)


def pair_label(row, extra_keys=()) -> str:
    """'sigmoid + glorot_uniform, depth 20' (+ fix and the keys that vary)."""
    text = f"{row['activation']} + {row['initializer']}, depth {row['depth']}"
    if row.get("fix", "none") != "none":
        text += f", fix {row['fix']}"
    extra = [f"{k} {_short(row[k])}" for k in extra_keys if k in row]
    if extra:
        text += f" ({', '.join(extra)})"
    return text


def _short(v) -> str:
    v = _plain(v)
    return f"{v:g}" if isinstance(v, float) else str(v)


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


def describe_slice(chosen: dict, extra_keys=()) -> str:
    """'mlp, depth 20, width 128, no fix' from a slice's fixed keys.

    Args:
        chosen: the fixed keys of `main_slice`.
        extra_keys: further keys worth naming (those that vary across the
            results, e.g. the learning rate).
    """
    parts = []
    for k in ("arch", "depth", "width"):
        if k in chosen:
            parts.append(f"{k} {chosen[k]}" if k != "arch" else str(chosen[k]))
    parts += [f"{k} {_short(chosen[k])}" for k in extra_keys if k in chosen and k not in CORE_KEYS]
    if "fix" in chosen:
        parts.append("no fix" if chosen["fix"] == "none" else f"fix {chosen['fix']}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- #
# Tables of the figures
# --------------------------------------------------------------------------- #


def gradient_profiles(runs_m: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """Per-layer RMS gradient per weight at step 0 and at the end, averaged over seeds.

    Uses `metrics.gradient_profile` (``‖∂L/∂W‖/√|W|``) for both the kernel
    and the bias of the hidden layers of ``runs_m``. A gradient that
    underflowed to exactly 0 in some seed makes that layer's geometric
    mean 0.

    Returns:
        DataFrame ``activation, initializer, parameter ('kernel'/'bias'),
        when ('step 0'/'end of training'), layer_index, n, mean, lo, hi``.
    """
    h = metrics.hidden(layers[layers["run_id"].isin(runs_m["run_id"])])
    frames = []
    for column, parameter in (("kernel_grad_norm", "kernel"), ("bias_grad_norm", "bias")):
        for which, when in (("init", "step 0"), ("final", "end of training")):
            p = metrics.gradient_profile(h, which, column)
            # Zeros stay: an underflowed gradient is the most vanishing value, not a missing one.
            p = p[np.isfinite(p["value"])]
            if p.empty:
                continue
            p = p.assign(parameter=parameter, when=when)
            frames.append(p)
    columns = ["activation", "initializer", "parameter", "when", "layer_index", "n", "mean", "lo", "hi"]
    if not frames:
        return with_note(pd.DataFrame(columns=columns), "no finite gradient norms were recorded")
    p = pd.concat(frames, ignore_index=True).merge(runs_m[["run_id", "activation", "initializer"]], on="run_id")
    out = summarize(p, ["activation", "initializer", "parameter", "when", "layer_index"], "value", log=True)
    return out[columns]


def heatmap_runs(pairs: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """Layer × step RMS kernel gradient per weight of the best and the worst pair.

    Best is the top of the ranking of `pair_table` (test accuracy, then the
    gradient factor); worst is the pair whose gradient is most unequal
    across layers at the end of training (largest ``|log10 grad_ratio_final|``,
    at step 0 where there is no end; a ratio of exactly 0, an underflowed
    first-layer gradient, counts as infinitely unequal). Only pairs with
    recorded gradient norms count. For each, the run of its lowest seed
    with recorded norms is shown.

    Returns:
        DataFrame ``role, label, run_id, step, layer_index, layer_name,
        log10_norm``; ``role`` is 'best' or 'worst'.
    """
    columns = ["role", "label", "run_id", "step", "layer_index", "layer_name", "log10_norm"]
    recorded = set(layers.loc[layers["kernel_grad_norm"].notna(), "run_id"])
    candidates = pairs[[bool(recorded & set(ids)) for ids in pairs["run_ids"]]]
    if candidates.empty:
        return with_note(pd.DataFrame(columns=columns), "no run recorded kernel gradient norms")
    extra = varying_keys(pairs)
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
        d = d.dropna(subset=["kernel_grad_norm"])
        v = d["kernel_grad_norm"].where(d["kernel_grad_norm"] > 0)
        d = d.assign(role=role, label=pair_label(row, extra), log10_norm=np.log10(v))
        frames.append(d)
    out = pd.concat(frames, ignore_index=True)
    out["log10_norm"] = out["log10_norm"].where(np.isfinite(out["log10_norm"]))
    return out[columns]


# (column of pair_table, label, log10?) of the activation × initializer grid.
GRID_QUANTITIES = (
    ("test_accuracy", "test accuracy", False),
    ("grad_ratio_init", "log10 first/last gradient ratio (step 0)", True),
    ("grad_factor_init", "per-layer gradient factor (step 0)", False),
    ("dead_fraction", "dead fraction", False),
    ("saturated_fraction", "saturated fraction", False),
)


def pair_grid(pairs: pd.DataFrame, main: dict | None = None) -> pd.DataFrame:
    """Activation × initializer values of the main slice, for annotated heatmaps.

    Dead and saturated fractions are taken at the end of training when any
    pair has them there, else at step 0; the quantity's label says which.

    Args:
        pairs: the ranked table of `pair_table`.
        main: the fixed keys of the report's slice (`main_slice` of the
            runs), so that this figure shows the same setting as the
            others; by default the most common setting of ``pairs``.

    Returns:
        DataFrame ``activation, initializer, quantity, label, value``; for
        the ratio, ``value`` is log10 of the geometric mean, ``-inf`` where
        the ratio is exactly 0 (the first layer's gradient underflowed).
    """
    columns = ["activation", "initializer", "quantity", "label", "value"]
    if main is None:
        sliced, chosen = main_slice(pairs)
    else:
        chosen = {k: v for k, v in main.items() if k in pairs.columns}
        sliced = pairs[_match(pairs, chosen)]
    if sliced.empty:
        return with_note(pd.DataFrame(columns=columns), "no runs")
    frames = []
    for quantity, label, log in GRID_QUANTITIES:
        column = quantity
        if quantity in ("dead_fraction", "saturated_fraction"):
            final = f"{quantity}_final"
            column = final if sliced[final].notna().any() else f"{quantity}_init"
            label = f"{label} ({'end' if column == final else 'step 0'})"
        v = sliced[column].astype("float64")
        if log:
            # log10(0) = -inf is kept: it is the most vanishing pair, not a missing one.
            with np.errstate(divide="ignore"):
                v = np.log10(v.where(v >= 0))
        frames.append(
            pd.DataFrame(
                {
                    "activation": sliced["activation"].to_numpy(),
                    "initializer": sliced["initializer"].to_numpy(),
                    "quantity": quantity,
                    "label": label,
                    "value": v.to_numpy(),
                }
            )
        )
    out = pd.concat(frames, ignore_index=True)
    out.attrs["slice"] = describe_slice(chosen, varying_keys(pairs))
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
    acc = summarize(sliced, by, "test_accuracy", bounds=UNIT).assign(quantity="test_accuracy")
    ratio = summarize(sliced, by, "grad_ratio_init", log=True).assign(quantity="grad_ratio_init")
    out = pd.concat([acc, ratio], ignore_index=True)[columns]
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
    h = h.merge(runs_m[["run_id", "activation", "initializer"]], on="run_id")
    long = h.melt(
        id_vars=["activation", "initializer", "step"],
        value_vars=["train_loss", "test_loss", "train_accuracy", "test_accuracy"],
        var_name="metric",
    )
    long[["split", "quantity"]] = long["metric"].str.split("_", n=1, expand=True)
    long = long[np.isfinite(long["value"].astype("float64"))]
    if long.empty or long["step"].nunique() < 2:
        return with_note(pd.DataFrame(columns=columns), "the history holds fewer than two evaluation steps")
    out = summarize(long, ["activation", "initializer", "quantity", "split", "step"], "value")
    # Losses are non-negative and accuracies lie in [0, 1]: clip the intervals.
    top = np.where(out["quantity"] == "accuracy", 1.0, np.inf)
    out["lo"] = out["lo"].clip(lower=0.0)
    out["hi"] = np.minimum(out["hi"], top)
    return out[columns]


# Per-layer activation statistics: column → log scale?
ACTIVATION_STATISTICS = {
    "act_mean": False,
    "act_std": True,
    "dead_fraction": False,
    "saturated_fraction": False,
}


def activation_profiles(runs_m: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """Per-layer activation statistics at step 0 and at the last measured step.

    Returns:
        DataFrame ``activation, initializer, statistic, when, layer_index, n,
        mean, lo, hi`` over the hidden layers (mean over seeds).
    """
    columns = ["activation", "initializer", "statistic", "when", "layer_index", "n", "mean", "lo", "hi"]
    stats = [c for c in ACTIVATION_STATISTICS if c in layers.columns]
    h = metrics.hidden(layers[layers["run_id"].isin(runs_m["run_id"])])
    h = h.dropna(subset=["act_std"]) if "act_std" in h.columns else h.iloc[0:0]
    if h.empty or not stats:
        return with_note(pd.DataFrame(columns=columns), "no activation statistics were recorded")
    last = h.groupby("run_id")["step"].transform("max")
    init = h[h["step"] == 0].assign(when="step 0")
    end = h[(h["step"] == last) & (h["step"] > 0)].assign(when="end of training")
    both = pd.concat([init, end], ignore_index=True).merge(
        runs_m[["run_id", "activation", "initializer"]], on="run_id"
    )
    long = both.melt(
        id_vars=["activation", "initializer", "when", "layer_index"], value_vars=stats, var_name="statistic"
    )
    long = long.dropna(subset=["value"])
    out = summarize(long, ["activation", "initializer", "statistic", "when", "layer_index"], "value")
    fraction = out["statistic"].isin(["dead_fraction", "saturated_fraction"])
    out.loc[fraction, "lo"] = out.loc[fraction, "lo"].clip(*UNIT)
    out.loc[fraction, "hi"] = out.loc[fraction, "hi"].clip(*UNIT)
    return out[columns]


# (quantity, run_metrics column, log, bounds) compared between a fix and its baseline.
FIX_QUANTITIES = (
    ("test_accuracy", "test_accuracy", False, UNIT),
    ("grad_ratio_init", "grad_ratio_init", True, None),
    ("grad_ratio_final", "grad_ratio_final", True, None),
)


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
    extra = varying_keys(runs_m)
    frames = []
    for quantity, column, log, bounds in FIX_QUANTITIES:
        s = summarize(cases, keys + ["fix"], column, log=log, bounds=bounds).assign(quantity=quantity)
        frames.append(s)
    out = pd.concat(frames, ignore_index=True)
    out["case"] = [pair_label({**row, "fix": "none"}, extra) for row in out.to_dict("records")]
    base = out[out["fix"] == "none"].set_index(["case", "quantity"])["mean"]
    out["baseline"] = [base.get((c, q), np.nan) for c, q in zip(out["case"], out["quantity"])]
    ratio_rows = out["quantity"] != "test_accuracy"
    with np.errstate(divide="ignore", invalid="ignore"):
        log_delta = np.log10(out["mean"]) - np.log10(out["baseline"])
    out["delta"] = np.where(ratio_rows, log_delta, out["mean"] - out["baseline"])
    return out[columns + keys]


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

        from models import activations as registry
    except ImportError as e:
        return with_note(pd.DataFrame(columns=columns), f"models.activations is not available ({e})")
    xs = np.linspace(lo, hi, num, dtype="float32")
    frames, failed = [], []
    for name in sorted(set(names)):
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
# Budget, provenance and findings
# --------------------------------------------------------------------------- #


def budget(runs: pd.DataFrame, manifest: dict) -> dict:
    """What the runs cost and how far they trained, from runs.parquet.

    Returns:
        A JSON-ready dict: run and pair counts, seeds, steps, epochs, batch
        sizes, optimizer, learning rates, samples, wall time, and ``text``,
        one paragraph saying all of it.
    """
    data = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}

    def values(col):
        if col not in runs.columns:
            return []
        return sorted({_plain(v) for v in runs[col]}, key=lambda v: (v is None, str(v) if v is None else v))

    n_pairs = len(runs.groupby(pair_keys(runs), dropna=False))
    seeds_per_pair = runs.groupby(pair_keys(runs), dropna=False)["seed"].nunique()
    steps = pd.to_numeric(runs["steps"], errors="coerce")
    out = {
        "runs": int(len(runs)),
        "pairs": int(n_pairs),
        "statuses": {str(k): int(v) for k, v in runs["status"].value_counts().items()},
        "seeds": values("seed"),
        "seeds_per_pair": [int(seeds_per_pair.min()), int(seeds_per_pair.max())],
        "steps": [_plain(steps.min()), _plain(steps.max())],
        "max_steps": values("max_steps"),
        "epochs": values("epochs"),
        "batch_size": values("batch_size"),
        "optimizer": values("optimizer"),
        "learning_rate": values("learning_rate"),
        "dataset": values("dataset"),
        "train_samples": values("train_samples"),
        "test_samples": values("test_samples"),
        "n_train": data.get("n_train"),
        "n_test": data.get("n_test"),
        "wall_time_s": float(pd.to_numeric(runs["wall_time_s"], errors="coerce").sum()),
    }
    out["text"] = _budget_text(out)
    return out


def _span(vals) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "?"
    if len(vals) <= 4:
        return ", ".join(_num(v) for v in vals)
    return f"{_num(min(vals))}–{_num(max(vals))}"


def _num(v) -> str:
    if isinstance(v, float) and not v.is_integer():
        return f"{v:g}"
    if isinstance(v, (int, float)):
        return f"{int(v):,}"
    return str(v)


def _samples(vals, total) -> str:
    if not vals or all(v is None for v in vals):
        return f"all {_num(total)}" if total else "all"
    text = _span([v for v in vals if v is not None]) + (" or all" if None in vals else "")
    return f"{text} of {_num(total)}" if total else text


def _budget_text(b: dict) -> str:
    lo, hi = b["steps"]
    steps = f"{_num(lo)}" if lo == hi else f"{_num(lo)}–{_num(hi)}"
    seeds = b["seeds_per_pair"]
    per_pair = f"{seeds[0]}" if seeds[0] == seeds[1] else f"{seeds[0]}–{seeds[1]}"
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(b["statuses"].items()))
    minutes = b["wall_time_s"] / 60
    text = (
        f"{b['runs']} runs ({statuses}) of {b['pairs']} pairs × {per_pair} seed(s) "
        f"(seeds {_span(b['seeds'])}) on {_span(b['dataset'])}: "
        f"{steps} optimizer steps per run (max_steps {_span(b['max_steps']) if b['max_steps'] != [None] else 'unset'}), "
        f"{_span(b['epochs'])} epoch(s), batch size {_span(b['batch_size'])}, "
        f"{_span(b['optimizer'])} at learning rate {_span(b['learning_rate'])}; "
        f"training examples: {_samples(b['train_samples'], b['n_train'])}, "
        f"test examples: {_samples(b['test_samples'], b['n_test'])}; "
        f"total run time {minutes:.1f} min."
    )
    if b["max_steps"] == [0]:
        text += " Only initialization was measured: accuracies are those of untrained networks."
    elif b["max_steps"] and None not in b["max_steps"]:
        text += (
            f" Accuracies are those after at most {_num(max(b['max_steps']))} steps, "
            "not of converged networks; the gradient measurements at step 0 do not depend on the budget."
        )
    if seeds[0] < 2:
        text += " Pairs with one seed have no confidence interval."
    return text


def provenance(manifest: dict) -> dict:
    """The manifest fields a reader needs to trust or reproduce the numbers."""
    data = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}
    return {
        "suite": manifest.get("suite"),
        "command": manifest.get("command"),
        "created": manifest.get("created"),
        "updated": manifest.get("updated"),
        "vgbench_version": manifest.get("vgbench_version"),
        "git_sha": manifest.get("git_sha"),
        "packages": manifest.get("packages") or {},
        "platform": manifest.get("platform") or {},
        "data": data,
        "schema_version": manifest.get("schema_version"),
    }


def chance_accuracy(manifest: dict) -> float:
    """Accuracy of guessing: 1 / number of classes."""
    data = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}
    n = data.get("num_classes") or DEFAULT_NUM_CLASSES
    return 1.0 / float(n)


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def power_of_ten(x) -> str:
    """A ratio for prose: '0.24' between 0.01 and 100, else '10⁻¹²'."""
    if x is None or not np.isfinite(x):
        return "n/a"
    if x == 0:
        # A gradient below float32's range reaches the first layer as exactly 0.
        return "0 (underflow)"
    if 0.01 <= abs(x) <= 100:
        return f"{x:.2g}"
    return "10" + str(int(round(math.log10(abs(x))))).translate(_SUPERSCRIPT)


def pct(x) -> str:
    """0.1134 → '11%' (one decimal under 10%)."""
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{100 * x:.1f}%" if x < 0.1 else f"{100 * x:.0f}%"


def describe_pair(row, chance: float, extra_keys=()) -> str:
    """One sentence with a pair's numbers, e.g. for sigmoid at depth 20."""
    parts = []
    f0, r0, f1 = row.get("grad_factor_init"), row.get("grad_ratio_init"), row.get("grad_factor_final")
    if _finite(f0):
        if f"{f0:.2f}" == "1.00":
            parts.append(f"at initialization the gradient keeps its size (×{f0:.2f} per layer)")
        else:
            verb = "shrinks" if f0 < 1 else "grows"
            parts.append(f"at initialization the gradient {verb} ×{f0:.2f} per layer")
    if _finite(r0):
        share = f"{power_of_ten(r0)} of" if r0 < 1 else f"{power_of_ten(r0)}×"
        parts.append(f"the first hidden layer receives {share} the last hidden layer's gradient")
    if _finite(f1):
        parts.append(f"after training ×{f1:.2f} per layer")
    dead = _first_finite(row.get("dead_fraction_final"), row.get("dead_fraction_init"))
    if _finite(dead) and dead >= MENTION_FRACTION:
        parts.append(f"{pct(dead)} of units dead")
    sat = _first_finite(row.get("saturated_fraction_final"), row.get("saturated_fraction_init"))
    if _finite(sat) and sat >= MENTION_FRACTION:
        parts.append(f"{pct(sat)} of units saturated")
    acc = row.get("test_accuracy")
    if _finite(acc):
        note = " (chance)" if acc < CHANCE_MARGIN * chance else ""
        parts.append(f"test accuracy {pct(acc)}{note}")
    body = "; ".join(parts) if parts else "nothing was measured"
    return f"{pair_label(row, extra_keys)}: {body}."


def describe_problem(row, extra_keys=()) -> str:
    """One sentence on a pair's diverged or failed runs."""
    status, n = str(row.get("status") or ""), int(row["n_seeds"])
    # `status` is "diverged" when all seeds share it, else "1 ok, 2 diverged".
    if "," in status:
        counts = {k: int(v) for v, k in (part.split(" ", 1) for part in status.split(", "))}
    else:
        counts = {status: n}
    parts = []
    if counts.get("diverged"):
        step = row.get("diverged_step")
        at = f", first at step {int(step)}" if _finite(step) else ""
        parts.append(f"diverged in {counts['diverged']} of {n} seed(s){at}")
    if counts.get("failed"):
        error = f" ({row['error']})" if row.get("error") else ""
        parts.append(f"failed in {counts['failed']} of {n} seed(s){error}")
    return f"{pair_label(row, extra_keys)}: {'; '.join(parts)}."


def _finite(x) -> bool:
    return metrics._finite(x)


def _first_finite(*xs):
    for x in xs:
        if _finite(x):
            return x
    return np.nan


def findings(pairs: pd.DataFrame, sweep: pd.DataFrame, fixes: pd.DataFrame, chance: float) -> list[dict]:
    """Plain sentences with the numbers behind the report's conclusions.

    Args:
        pairs: the ranked table of `pair_table`.
        sweep: the table of `depth_sweep`.
        fixes: the table of `fix_effects`.
        chance: the accuracy of guessing.

    Returns:
        A list of ``{"kind", "text", ...numbers}`` dicts: the best and the
        worst pair among those whose runs all finished ok (diverged and
        failed pairs have their own sentence), every flagged pair (up to
        MAX_PAIR_FINDINGS, most severe first), each fix against its
        baseline, and each depth trend.
    """
    out = []
    extra = varying_keys(pairs)
    keys = pair_keys(pairs)
    if pairs.empty:
        return out

    def pair_finding(kind, row):
        values = {q: _plain(row[q]) for q in PAIR_QUANTITIES}
        return {
            "kind": kind,
            "text": describe_pair(row, chance, extra),
            "pair": {k: _plain(row[k]) for k in keys},
            "rank": int(row["rank"]),
            "flags": row["flags"],
            "values": values,
        }

    rows = pairs.to_dict("records")
    measured = [r for r in rows if r["status"] == "ok" and _finite(r["test_accuracy"])]
    ends = []
    if measured:
        ends.append(("best", "Best", measured[0]))
        if len(measured) > 1:
            ends.append(("worst", "Worst", measured[-1]))
    for kind, title, r in ends:
        out.append(pair_finding(kind, r) | {"text": f"{title}: " + describe_pair(r, chance, extra)})
    for r in rows:
        if r["status"] != "ok":
            out.append(pair_finding("problem", r) | {"text": describe_problem(r, extra)})
    shown = {id(r) for _, _, r in ends}
    flagged = [r for r in rows if id(r) not in shown and _gradient_flags(r["flags"])]
    # Most severe first, so that the cap cuts off the mildest cases.
    flagged.sort(key=_severity, reverse=True)
    for r in flagged[:MAX_PAIR_FINDINGS]:
        f = pair_finding("flagged", r)
        f["text"] = f"Flagged {', '.join(_gradient_flags(r['flags']))}: {f['text']}"
        out.append(f)
    if len(flagged) > MAX_PAIR_FINDINGS:
        out.append(
            {"kind": "more", "text": f"{len(flagged) - MAX_PAIR_FINDINGS} more flagged pairs are in the table."}
        )
    out.extend(_fix_findings(fixes))
    out.extend(_depth_findings(sweep))
    return out


def _severity(row) -> tuple:
    """Sort key of a flagged pair: diverged or failed runs first, then the
    per-layer gradient factor farthest from 1 (0, an underflow, is farthest)."""
    logs = []
    for q in ("grad_factor_init", "grad_factor_final"):
        f = row.get(q)
        if _finite(f):
            logs.append(math.inf if f <= 0 else abs(math.log10(f)))
    return (row["status"] != "ok", max(logs, default=-1.0))


def _gradient_flags(flags: str) -> list[str]:
    """The flags about gradients and units (diverged/failed have their own sentence)."""
    return [f for f in str(flags or "").split("; ") if f and f not in ("diverged", "failed")]


def _fix_findings(fixes: pd.DataFrame) -> list[dict]:
    out = []
    if fixes.empty:
        return out
    t = fixes.pivot_table(index=["case", "fix"], columns="quantity", values="mean", aggfunc="first", dropna=False)
    for (case, fix), row in t.iterrows():
        if fix == "none" or (case, "none") not in t.index:
            continue
        base = t.loc[(case, "none")]
        parts = []
        a0, a1 = base.get("test_accuracy"), row.get("test_accuracy")
        if _finite(a0) and _finite(a1):
            parts.append(f"test accuracy {pct(a0)} → {pct(a1)} ({100 * (a1 - a0):+.0f} points)")
        r0, r1 = base.get("grad_ratio_init"), row.get("grad_ratio_init")
        if _finite(r0) and _finite(r1):
            parts.append(f"first/last gradient ratio at step 0 {power_of_ten(r0)} → {power_of_ten(r1)}")
        if not parts:
            continue
        out.append(
            {
                "kind": "fix",
                "text": f"{fix} on {case}: " + "; ".join(parts) + ".",
                "case": case,
                "fix": fix,
                "values": {
                    "baseline_test_accuracy": _plain(a0),
                    "test_accuracy": _plain(a1),
                    "baseline_grad_ratio_init": _plain(r0),
                    "grad_ratio_init": _plain(r1),
                },
            }
        )
    return out


def _depth_findings(sweep: pd.DataFrame) -> list[dict]:
    out = []
    if sweep.empty:
        return out
    for (act, init), g in sweep.groupby(["activation", "initializer"], sort=True):
        ratio = g[g["quantity"] == "grad_ratio_init"].sort_values("depth")
        acc = g[g["quantity"] == "test_accuracy"].sort_values("depth")
        if ratio["depth"].nunique() < 2:
            continue
        d0, d1 = int(ratio["depth"].iloc[0]), int(ratio["depth"].iloc[-1])
        r0, r1 = ratio["mean"].iloc[0], ratio["mean"].iloc[-1]
        if not (_finite(r0) and _finite(r1)):
            continue
        verb = "falls" if r1 < r0 else "rises"
        text = (
            f"{act} + {init}: the first/last gradient ratio at step 0 {verb} "
            f"from {power_of_ten(r0)} at depth {d0} to {power_of_ten(r1)} at depth {d1}"
        )
        # At the ratio's own depths, so both halves of the sentence compare the same networks.
        acc_at = acc.set_index("depth")["mean"]
        a0, a1 = acc_at.get(d0, np.nan), acc_at.get(d1, np.nan)
        if _finite(a0) and _finite(a1):
            text += f"; test accuracy {pct(a0)} → {pct(a1)}"
        out.append(
            {
                "kind": "depth",
                "text": text + ".",
                "activation": act,
                "initializer": init,
                "depths": [d0, d1],
                "values": {"grad_ratio_init": [_plain(r0), _plain(r1)], "test_accuracy": [_plain(a0), _plain(a1)]},
            }
        )
    return out
