"""Words and numbers of the written report: how values, pairs, statuses and budgets are written.

Everything here turns plain values into text and computes nothing: the
tables of `bench.report.tables` and the findings of `bench.report.findings`
are data until one of these helpers writes them.
"""

from __future__ import annotations

import math

import numpy as np

from vgbench.bench import quantities as Q
from vgbench.bench.config import CUSTOM_ARCH
from vgbench.bench.quantities import Quantity
from vgbench.bench.utils import plain

# The columns that name a pair in sentences and tables, always shown.
CORE_KEYS = ("activation", "initializer", "depth", "fix")

# The two moments a per-run metric is measured at, as written in table headers.
WHEN = {"init": "step 0", "final": "end"}

# Short headers of the ranked table, by metric stem (the registry's labels are
# written for sentences: "per-layer gradient factor at step 0").
SHORT_LABELS = {
    "backward_factor": "backward factor",
    "forward_factor": "forward factor",
    "grad_factor": "grad factor",
    "grad_ratio": "first/last",
    Q.DEAD_FRACTION: "dead",
    Q.SATURATED_FRACTION: "saturated",
}

# A missing value in a table cell.
MISSING = "–"

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


# --------------------------------------------------------------------------- #
# Numbers
# --------------------------------------------------------------------------- #


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


def factor_text(x, zero: str = "0.00") -> str:
    """A per-layer factor: '0.24', or two significant digits below 0.1 so that a small one never reads 0.00 ('0.004').

    ``zero`` writes an exact 0 (an underflow): '0.00' lines up in a grid of
    cells, a sentence says '0'.
    """
    if x == 0:
        return zero
    return f"{x:.2f}" if abs(x) >= 0.095 else f"{x:.2g}"


def pct(x) -> str:
    """0.1134 → '11%' (one decimal under 10%)."""
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{100 * x:.1f}%" if x < 0.1 else f"{100 * x:.0f}%"


def short(v) -> str:
    """A config value in a few characters: floats in %g form, anything else as text."""
    v = plain(v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def number(v) -> str:
    """A count or setting for a sentence: '1,500', '0.01'."""
    if isinstance(v, float) and not v.is_integer():
        return f"{v:g}"
    if isinstance(v, (int, float)):
        return f"{int(v):,}"
    return str(v)


def span(vals) -> str:
    """Up to four values listed, more as 'lowest–highest' ('?' when none)."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return "?"
    if len(vals) <= 4:
        return ", ".join(number(v) for v in vals)
    return f"{number(min(vals))}–{number(max(vals))}"


# --------------------------------------------------------------------------- #
# Table cells, one formatter per unit
# --------------------------------------------------------------------------- #


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def _accuracy_cell(v, lo=None, hi=None) -> str:
    """'91.2%', or '91.2% ± 1.3' when the interval has width."""
    text = f"{100 * v:.1f}%"
    if not _missing(lo) and not _missing(hi) and hi > lo:
        text += f" ± {100 * (hi - lo) / 2:.1f}"
    return text


_CELLS = {
    "accuracy": _accuracy_cell,
    "factor": lambda v, lo=None, hi=None: f"{v:.3g}",
    "ratio": lambda v, lo=None, hi=None: f"{v:.2e}",
    "fraction": lambda v, lo=None, hi=None: f"{v:.2f}",
    "seconds": lambda v, lo=None, hi=None: f"{v:.1f}",
}


def cell(quantity: Quantity, value, lo=None, hi=None) -> str:
    """A value of the ranked table, written as its unit is ('–' when missing).

    Args:
        quantity: the registry entry of the value (its unit decides the format).
        value: the pair's mean.
        lo, hi: its 95% interval; only accuracies show it.
    """
    if _missing(value):
        return MISSING
    write = _CELLS.get(quantity.unit)
    return write(value, lo, hi) if write else quantity.format(value)


def header(quantity: Quantity) -> str:
    """The ranked table's header of a per-run metric: 'grad factor (step 0)', 'wall time (s)'."""
    stem, _, which = quantity.name.rpartition("_")
    if which in WHEN and stem in SHORT_LABELS:
        return f"{SHORT_LABELS[stem]} ({WHEN[which]})"
    if quantity.unit == "seconds":
        return f"{quantity.label} (s)"
    return quantity.label


def join_flags(flags) -> str:
    """A run's or pair's flags in one cell: 'vanishing@init; dead units'."""
    return "; ".join(flags or ())


# --------------------------------------------------------------------------- #
# Pairs, slices, statuses
# --------------------------------------------------------------------------- #


def pair_label(row, extra_keys=()) -> str:
    """'sigmoid + glorot_uniform, depth 20' (+ fix and the keys that vary)."""
    model = plain(row.get("model"))
    if model is not None:  # a diagnosed model of one's own (`bench.diagnose`)
        text = f"{model}, depth {row['depth']}"
    else:
        text = f"{row['activation']} + {row['initializer']}, depth {row['depth']}"
    if row.get("fix", "none") != "none":
        text += f", fix {row['fix']}"
    extra = [f"{k} {short(row[k])}" for k in extra_keys if k in row and not (k == "model" and model is not None)]
    if extra:
        text += f" ({', '.join(extra)})"
    return text


def describe_slice(chosen: dict, extra_keys=()) -> str:
    """'mlp, depth 20, width 128, no fix' from a slice's fixed keys.

    Args:
        chosen: the fixed keys of `bench.report.tables.main_slice`.
        extra_keys: further keys worth naming (those that vary across the
            results, e.g. the learning rate).
    """
    parts = []
    for k in ("arch", "depth", "width"):
        if k == "width" and chosen.get("arch") == CUSTOM_ARCH:
            continue  # a model of one's own has no single width
        if k in chosen:
            parts.append(f"{k} {chosen[k]}" if k != "arch" else str(chosen[k]))
    parts += [
        f"{k} {short(chosen[k])}"
        for k in extra_keys
        if k in chosen and k not in CORE_KEYS and k not in ("arch", "width")
    ]
    if "fix" in chosen:
        parts.append("no fix" if chosen["fix"] == "none" else f"fix {chosen['fix']}")
    return ", ".join(parts)


def status_text(counts: dict) -> str:
    """A pair's statuses: 'ok' when all its runs share one, else '1 ok, 2 diverged'.

    Args:
        counts: {status: number of runs}, in the order to write them.
    """
    if len(counts) == 1:
        return str(next(iter(counts)))
    return ", ".join(f"{int(n)} {status}" for status, n in counts.items())


# --------------------------------------------------------------------------- #
# Budget
# --------------------------------------------------------------------------- #


def _samples(vals, total) -> str:
    if not vals or all(v is None for v in vals):
        return f"all {number(total)}" if total else "all"
    text = span([v for v in vals if v is not None]) + (" or all" if None in vals else "")
    return f"{text} of {number(total)}" if total else text


def budget_text(b: dict) -> str:
    """One paragraph on what the runs cost and how far they trained, from `tables.budget`."""
    lo, hi = b["steps"]
    steps = f"{number(lo)}" if lo == hi else f"{number(lo)}–{number(hi)}"
    seeds = b["seeds_per_pair"]
    per_pair = f"{seeds[0]}" if seeds[0] == seeds[1] else f"{seeds[0]}–{seeds[1]}"
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(b["statuses"].items()))
    minutes = b["wall_time_s"] / 60
    max_steps = span(b["max_steps"]) if b["max_steps"] != [None] else "unset"
    text = (
        f"{b['runs']} runs ({statuses}) of {b['pairs']} pairs × {per_pair} seed(s) "
        f"(seeds {span(b['seeds'])}) on {span(b['dataset'])}: "
        f"{steps} optimizer steps per run (max_steps {max_steps}), "
        f"{span(b['epochs'])} epoch(s), batch size {span(b['batch_size'])}, "
        f"{span(b['optimizer'])} at learning rate {span(b['learning_rate'])}; "
        f"training examples: {_samples(b['train_samples'], b['n_train'])}, "
        f"test examples: {_samples(b['test_samples'], b['n_test'])}; "
        f"total run time {minutes:.1f} min."
    )
    if b["max_steps"] == [0]:
        text += " Only initialization was measured: accuracies are those of untrained networks."
    elif b["max_steps"] and None not in b["max_steps"]:
        text += (
            f" Accuracies are those after at most {number(max(b['max_steps']))} steps, "
            "not of converged networks; the gradient measurements at step 0 do not depend on the budget."
        )
    if seeds[0] < 2:
        text += " Pairs with one seed have no confidence interval."
    return text
