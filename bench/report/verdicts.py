"""The Claims section of a report: each claim's verdict with its key numbers, budget, figure and learning rates.

`claims_section` decides every claim of `bench.claims` on the report's
tables (`bench.claims.evaluate`, the same call a reader makes) and adds
what the page shows beside each verdict: a few of the numbers the claim
reports, its budget in a line, the report figures that show the same
runs, and the long-form table of its own compact figure (the median test
accuracy at each configuration's best learning rate with the seeds'
min–max, or the backward factor at initialization). `protocol_table` gives
the winning learning rate per configuration where a suite declared the
``best_lr`` protocol. Nothing here draws or writes.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re

import numpy as np
import pandas as pd

from vgbench.bench import claims as registry
from vgbench.bench import protocol
from vgbench.bench.backend import DEFAULT_BACKEND
from vgbench.bench.config import DEFAULT_BIAS_INITIALIZER
from vgbench.bench.report.text import number
from vgbench.bench.utils import finite, plain

# Report figures that show a claim's runs or its mechanism, by claim id (linked when drawn).
RELATED_FIGURES = {
    "sigmoid-derivative-bound": ("activation_functions", "theory_vs_measurement"),
    "sigmoid-deep-fails": ("depth_sweep",),
    "relu-fixes-vanishing": ("depth_sweep", "gradient_depth"),
    "relu-dead-units": ("activation_stats",),
    "leaky-relu-no-dead-units": ("activation_stats",),
    "init-matters": ("pair_heatmaps",),
    "glorot2010-sigmoid-worst": ("pair_heatmaps",),
    "glorot2010-normalized-init": ("pair_heatmaps",),
    "he2015-relu-depth30": ("learning_curves",),
    "klambauer2017-selu-self-normalizing": ("activation_stats",),
    "schoenholz2017-depth-scale": ("theory_vs_measurement",),
    "normalization-residual-fix-deep-sigmoid": ("fixes",),
    "clipping-does-not-cure-vanishing": ("fixes",),
    "pennington2017-dynamical-isometry": ("jacobian_spectrum",),
}

# Key numbers shown in the claims table, at most.
MAX_KEY_NUMBERS = 4

# The claim whose figure marks the sigmoid derivative's bound.
_BOUNDS = {"sigmoid-derivative-bound": 0.25}


def claims_section(runs_m: pd.DataFrame, layers: pd.DataFrame, history: pd.DataFrame, manifest: dict) -> dict:
    """Every claim's verdict and what the report shows beside it.

    Args:
        runs_m: the per-run table with the run metrics
            (`bench.metrics.run_metrics`, or the report's run table).
        layers, history: the stored tables.
        manifest: the results directory's manifest.

    Returns:
        ``{"claims": [...], "present": bool, "note": str}``: per claim the
        fields of `bench.claims.ClaimResult` plus ``missing`` (True when
        its runs are not all here), ``key_numbers`` ([name, text] pairs),
        ``budget_text``, ``related_figures`` and ``evidence_table`` (a
        DataFrame, the data of its figure; dropped before writing JSON).
        ``present`` is False when no claim has its runs here; ``note`` then
        says so in one line.
    """
    results = registry.evaluate(runs_m, layers, history, manifest)
    out = []
    for r in results:
        d = dataclasses.asdict(r)
        missing = "missing_runs" in r.evidence
        d["missing"] = missing
        d["key_numbers"] = [] if missing else key_numbers(r)
        d["budget_text"] = budget_text(r.budget)
        d["related_figures"] = list(RELATED_FIGURES.get(r.id, ()))
        backend = r.budget.get("backend", DEFAULT_BACKEND)
        d["evidence_table"] = (
            pd.DataFrame()
            if missing
            else evidence_table(registry.get(r.id), runs_m, backend, layers=layers, history=history, result=r)
        )
        d["bound"] = _BOUNDS.get(r.id)
        out.append(d)
    present = any(not d["missing"] for d in out)
    note = (
        ""
        if present
        else f"No run of the claims suite is in this directory, so none of the {len(out)} claims is decided: "
        "run `vgbench run --suite claims --out DIR` into it to decide them."
    )
    return {"claims": out, "present": present, "note": note}


def _expand(pattern: str) -> list[str]:
    """'a.{b,c}' → ['a.b', 'a.c'] (one brace group or none)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    return [pattern[: m.start()] + alt + pattern[m.end() :] for alt in m.group(1).split(",")]


def key_numbers(result, limit: int = MAX_KEY_NUMBERS) -> list[list[str]]:
    """The first numbers of a claim's evidence that its declaration reports, as [name, text] pairs.

    Args:
        result: a `bench.claims.ClaimResult`.
        limit: how many at most.
    """
    claim = registry.get(result.id)
    evidence = result.evidence
    chosen = []
    for pattern in claim.reports:
        for p in _expand(pattern):
            for key in evidence:
                if fnmatch.fnmatchcase(key, p) and key not in chosen and _shown(evidence[key]):
                    chosen.append(key)
    # The seeds' min and max stand behind a median: the table shows the median, the details all three.
    medians = {k.rsplit(".", 1)[0] for k in chosen if k.endswith(".median")}
    chosen = [k for k in chosen if not (k.endswith((".min", ".max")) and k.rsplit(".", 1)[0] in medians)]
    return [[short_key(k), value_text(k, evidence[k])] for k in chosen[:limit]]


# Suffixes of evidence names, as the claims table writes them.
_SHORT_SUFFIXES = {
    ".median_accuracy": " accuracy",
    ".backward_factor_init.median": " backward ×/layer at init",
    ".backward_factor_final.median": " backward ×/layer at the end",
    ".grad_ratio_init.median": " first/last at init",
    ".steps_to_accuracy": " steps to 0.80",
}


def short_key(name: str) -> str:
    """An evidence name for the claims table: 'relu_he_d10.median_accuracy' → 'relu_he_d10 accuracy'."""
    for suffix, words in _SHORT_SUFFIXES.items():
        if name.endswith(suffix):
            return name[: -len(suffix)] + words
    return name.replace("_", " ") if "." not in name else name


def _shown(v) -> bool:
    return isinstance(v, (list, tuple, str)) or v is None or isinstance(v, (int, float, np.floating, np.integer))


def value_text(name: str, v) -> str:
    """An evidence value in a few characters: accuracies and factors with 3 digits, counts as integers."""
    if isinstance(v, (list, tuple)):
        return ", ".join(value_text(name, x) for x in v) or "none"
    if isinstance(v, str):  # a word: where a best learning rate sits ("low", "high", "" for neither), a diagnosis
        return v or "none"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "never" if "steps" in name else "∞"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if float(v).is_integer() and not name.endswith(("accuracy", "factor", "fraction")):
        return f"{int(v):,}"
    return f"{float(v):.3g}"


def budget_text(b: dict) -> str:
    """A claim's budget in one line: '300 steps × batch 64, width 64, depth 2–20, lr 0.003/0.03/0.3, seeds 0–2'."""

    def listed(v, sep="/"):
        v = v if isinstance(v, list) else [v]
        v = sorted(v) if all(isinstance(x, (int, float)) for x in v) else v
        return sep.join(number(x) for x in v)

    def spread(v):
        v = v if isinstance(v, list) else [v]
        return number(v[0]) if len(v) == 1 else f"{number(min(v))}–{number(max(v))}"

    steps = b.get("steps")
    parts = [f"{listed(steps)} steps × batch {listed(b.get('batch_size'))}" if steps else "at initialization only"]
    parts.append(f"width {listed(b.get('width'))}")
    parts.append(f"depth {listed(b.get('depth'), ', ')}")
    if b.get("learning_rates"):
        parts.append(f"lr {listed(b['learning_rates'])}")
    if b.get("seeds"):
        parts.append(f"seeds {spread(b['seeds'])}")
    if b.get("dataset") not in (None, "mnist"):
        parts.append(f"data {listed(b['dataset'])}")
    if b.get("backend"):
        parts.append(str(b["backend"]))
    text = ", ".join(parts)
    # A budget of its own (bench.claims.Claim.budget_reason): why, in the claim's words.
    return f"{text}. Budget: {b['why']}" if b.get("why") else text


# The quantity beside accuracy that a claim's verdict rests on, drawn as a panel of its figure
# (`evidence_table` kinds): the backward factor at init of the trained sets, the dead fraction at the
# end, the steps to the accuracy threshold, or the activation mean and variance by layer at init.
VERDICT_QUANTITIES = {
    "relu-fixes-vanishing": ("factor",),
    "init-matters": ("factor",),
    "relu-dead-units": ("dead",),
    "leaky-relu-no-dead-units": ("dead",),
    "he2015-relu-depth30": ("steps",),
    "klambauer2017-selu-self-normalizing": ("act_mean", "act_variance"),
    "sigmoid-deep-fails": ("ratio",),
}

_COLUMNS = [
    "run_set",
    "kind",
    "median",
    "min",
    "max",
    "n",
    "best_learning_rate",
    "diverged",
    "runs",
    "trainability",
    "predicted",
    "diverged_lrs",
    "diverged_at_best",
    "learning_rates",
    "edge",
    "layer",
    "limit_low",
    "limit_high",
    "max_steps",
]


def evidence_table(
    claim,
    runs_m: pd.DataFrame,
    backend: str = DEFAULT_BACKEND,
    *,
    layers: pd.DataFrame | None = None,
    history: pd.DataFrame | None = None,
    result=None,
) -> pd.DataFrame:
    """The data of a claim's figure: one row per run set, and the rows of the quantity its verdict rests on.

    A trained set gives its median test accuracy at its best learning rate
    with the seeds' min–max (`bench.protocol.best_learning_rate`, over the
    grid the protocol extended, `bench.protocol.extended_configs`); a set at
    initialization its per-layer backward factor (median, min, max over
    seeds) and the mean-field prediction. The claims of
    `VERDICT_QUANTITIES` add rows of their quantity: per trained set at its
    best learning rate, the backward factor at init (kind ``factor``), the
    first/last gradient ratio at init (``ratio``), the mean dead fraction at
    the last step (``dead``), the steps to the accuracy threshold (``steps``,
    ``limit_high`` the budget); per run set and hidden layer at init, the
    activation mean and variance over seeds (``act_mean``,
    ``act_variance``, ``layer``, with the rule's bounds ``limit_low`` and
    ``limit_high``).

    Returns:
        DataFrame ``run_set, kind, median, min, max, n, best_learning_rate,
        diverged, runs, trainability, predicted, diverged_lrs,
        diverged_at_best, learning_rates, edge, layer, limit_low,
        limit_high, max_steps``: ``diverged`` counts the set's diverged runs over every
        learning rate (``diverged_lrs`` names those rates),
        ``diverged_at_best`` those at the best one, ``runs`` the set's runs,
        ``learning_rates`` the final grid ("/"-joined), ``edge`` where
        the best sits when at an edge of it, and ``max_steps`` the set's
        training budget in steps.
    """
    rows = []
    ids = set(runs_m["run_id"])
    for rs in claim.run_sets:
        configs = rs.configs(backend)
        run_ids = [c.run_id for c in configs]
        if not set(run_ids) <= ids:
            continue
        if rs.kind == "train":
            run_ids = [c.run_id for c in protocol.extended_configs(configs, runs_m)]
        runs = runs_m[runs_m["run_id"].isin(run_ids)]
        if runs.empty:
            continue
        diverged = int((runs["status"] == "diverged").sum())
        lrs = sorted(runs.loc[runs["status"] == "diverged", "learning_rate"].unique())
        row = {
            "run_set": rs.name,
            "kind": rs.kind,
            "diverged": diverged,
            "runs": len(runs),
            "predicted": np.nan,
            "diverged_lrs": "/".join(f"{float(x):g}" for x in lrs),
            "diverged_at_best": 0,
            "learning_rates": "",
            "edge": "",
            "layer": np.nan,
            "limit_low": np.nan,
            "limit_high": np.nan,
            "max_steps": configs[0].max_steps if configs[0].max_steps is not None else np.nan,
        }
        by_layer = any(k in ("act_mean", "act_variance") for k in VERDICT_QUANTITIES.get(claim.id, ()))
        if rs.kind == "init" and (by_layer or "backward_factor_init" not in runs.columns):
            # Measured at init for its layer rows (the SELU claim's Gaussian inputs), not for a backward factor.
            row = None
        elif rs.kind == "init":
            v = pd.to_numeric(runs["backward_factor_init"], errors="coerce").dropna()
            row |= {
                "median": float(v.median()) if len(v) else np.nan,
                "min": float(v.min()) if len(v) else np.nan,
                "max": float(v.max()) if len(v) else np.nan,
                "n": int(len(v)),
                "best_learning_rate": np.nan,
                "trainability": "",
            }
            try:
                from vgbench.bench import theory

                pred = theory.predict_config(configs[0])
                row["predicted"] = pred.factor if pred.applicable else np.nan
            except Exception:  # a prediction is a bonus beside the measurement, never a reason to lose it
                pass
        else:
            best = protocol.best_learning_rate(runs).iloc[0]
            row |= {
                "median": plain(best["median_accuracy"]),
                "min": plain(best["min_accuracy"]),
                "max": plain(best["max_accuracy"]),
                "n": int(best["n_seeds"]),
                "best_learning_rate": plain(best["best_learning_rate"]),
                "trainability": registry.trainability(best["median_accuracy"]),
                "diverged_at_best": int((best["diverged_by_lr"] or {}).get(best["best_learning_rate"], 0)),
                "learning_rates": "/".join(f"{float(x):g}" for x in best["learning_rates"]),
                "edge": best["edge"],
            }
        if row is not None:
            rows.append(row)
        if rs.kind == "train":
            at_best = runs[runs["run_id"].isin(best["run_ids"])]
            for kind in VERDICT_QUANTITIES.get(claim.id, ()):
                extra = _quantity_row(kind, rs, at_best, layers, history, configs[0])
                if extra is not None:
                    rows.append({**row, **extra, "kind": kind})
        if by_layer:
            rows.extend(_layer_rows(rs, runs, layers, result))
    table = pd.DataFrame(rows, columns=_COLUMNS)
    order = {
        k: i for i, k in enumerate(("train", "init", "factor", "ratio", "dead", "steps", "act_mean", "act_variance"))
    }
    return table.sort_values("kind", key=lambda k: k.map(order), kind="stable").reset_index(drop=True)


def _spread(values) -> dict:
    v = pd.to_numeric(pd.Series(values, dtype=float), errors="coerce").dropna()
    return {
        "median": float(v.median()) if len(v) else np.nan,
        "min": float(v.min()) if len(v) else np.nan,
        "max": float(v.max()) if len(v) else np.nan,
        "n": int(len(v)),
    }


def _quantity_row(kind, rs, at_best, layers, history, config) -> dict | None:
    """The row of a trained set's verdict quantity over the seeds at its best learning rate (None: not measured)."""
    if kind in ("factor", "ratio"):
        metric = "backward_factor_init" if kind == "factor" else "grad_ratio_init"
        if metric not in at_best.columns:
            return None
        return _spread(at_best[metric])
    if kind == "dead":
        if layers is None or "dead_fraction" not in layers.columns:
            return None
        lay = layers[layers["run_id"].isin(at_best["run_id"]) & (layers["layer_name"] != "output")]
        lay = lay.dropna(subset=["dead_fraction"])
        last = lay[lay["step"] == lay.groupby("run_id")["step"].transform("max")]
        first = lay[lay["step"] == 0].groupby("run_id")["dead_fraction"].mean()
        # "predicted" holds the median at step 0, drawn beside the end's (the verdict compares the two).
        return {
            **_spread(last.groupby("run_id")["dead_fraction"].mean()),
            "predicted": float(first.median()) if len(first) else np.nan,
        }
    if kind == "steps":
        if history is None:
            return None
        steps = [
            registry.steps_to_accuracy(history, [rid], registry.TRAINS_ACCURACY) for rid in sorted(at_best["run_id"])
        ]
        # "never" (inf) is drawn at the budget, the line's right end.
        budget = float(config.max_steps)
        return {**_spread([min(s, budget) for s in steps]), "limit_high": budget, "limit_low": np.nan}
    return None


def _layer_rows(rs, runs, layers, result) -> list[dict]:
    """Per hidden layer at step 0: the activation mean and variance over the set's seeds, with the rule's bounds."""
    if layers is None or not {"act_mean", "act_std"} <= set(layers.columns):
        return []
    lay = layers[layers["run_id"].isin(runs["run_id"]) & (layers["step"] == 0) & (layers["layer_name"] != "output")]
    lay = lay.dropna(subset=["act_mean", "act_std"]).assign(variance=lambda d: d["act_std"] ** 2)
    # Runs of one seed at other learning rates share their initialization: one value per seed.
    lay = lay.assign(seed=lay["run_id"].map(runs.set_index("run_id")["seed"]))
    ev = result.evidence if result is not None else {}
    prefix = "gaussian." if rs.fields.get("dataset") == "gaussian" else ""
    tol = ev.get(f"{prefix}act_mean_tolerance", np.nan)
    bounds = {
        "act_mean": (-tol, tol),
        "act_variance": tuple(ev.get(f"{prefix}act_variance_bounds") or (np.nan, np.nan)),
    }
    rows = []
    for kind, column in (("act_mean", "act_mean"), ("act_variance", "variance")):
        for layer, g in lay.groupby("layer_index"):
            rows.append(
                {
                    "run_set": rs.name,
                    "kind": kind,
                    **_spread(g.groupby("seed")[column].first()),
                    "layer": int(layer),
                    "limit_low": bounds[kind][0],
                    "limit_high": bounds[kind][1],
                    "diverged": 0,
                    "runs": int(g["seed"].nunique()),
                }
            )
    return rows


def protocol_table(runs_m: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    """The winning learning rate per configuration, where a suite of the directory declares ``best_lr``.

    Only configurations run at two or more learning rates are listed (the
    protocol's grid). Empty when no suite declared the protocol.

    Returns:
        The table of `bench.protocol.best_learning_rate` with ``label``
        (the configuration in words) first.
    """
    protocols = (manifest or {}).get("protocols")
    if not isinstance(protocols, dict) or "best_lr" not in protocols.values() or runs_m.empty:
        return pd.DataFrame()
    keys = protocol.configuration_fields(runs_m.columns)
    n_lr = runs_m.groupby(keys, dropna=False)["learning_rate"].transform("nunique")
    grid = runs_m[n_lr >= 2]
    if grid.empty:
        return pd.DataFrame()
    table = protocol.best_learning_rate(grid)
    table.insert(0, "label", [configuration_label(r) for r in table.to_dict("records")])
    return table.sort_values("label", kind="stable").reset_index(drop=True)


def configuration_label(row: dict) -> str:
    """'sigmoid + glorot_uniform, depth 20, width 64, fix batchnorm' (and a bias initializer that is not zeros)."""
    text = f"{row.get('activation')} + {row.get('initializer')}, depth {row.get('depth')}, width {row.get('width')}"
    if row.get("fix") not in (None, "none"):
        text += f", fix {row['fix']}"
    bias = row.get("bias_initializer")
    if bias not in (None, DEFAULT_BIAS_INITIALIZER) and not (isinstance(bias, float) and math.isnan(bias)):
        text += f", bias {bias}"
    return text


def lr_medians_text(row: dict) -> str:
    """'0.003: 0.412 · 0.03: 0.931 · 0.3: 0.100 (3 diverged)' from a `protocol_table` row."""
    parts = []
    diverged = row.get("diverged_by_lr") or {}
    for lr, m in sorted((row.get("median_by_lr") or {}).items()):
        text = f"{number(float(lr))}: {m:.3f}" if finite(m) else f"{number(float(lr))}: n/a"
        d = diverged.get(lr, 0)
        if d:
            text += f" ({d} diverged)"
        parts.append(text)
    return " · ".join(parts)
