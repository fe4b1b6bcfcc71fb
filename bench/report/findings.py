"""Findings of a report: the conclusions its tables support, as data, written as sentences last.

`find` reads the ranked pair table, the depth sweep and the fix effects of
`bench.report.tables` and returns `Finding` objects: what kind of finding
it is, which pair, fix case or activation it is about, and its numbers.
`render` is the one place where a finding becomes a sentence; `written`
does both for the summary. Nothing reads a sentence back: a finding about
a diverged pair carries the pair's status counts, not its status text.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from bench.report import predictions
from bench.report.tables import PAIR_QUANTITIES, THEORY_COLUMNS, pair_keys, varying_keys
from bench.report.text import pair_label, pct, power_of_ten
from bench.utils import finite, plain

# Accuracy below this multiple of chance is reported as "chance".
CHANCE_MARGIN = 1.5

# Dead or saturated fractions below this are not worth a word in a finding.
MENTION_FRACTION = 0.01

# Findings about single pairs beyond this many are left to the table.
MAX_PAIR_FINDINGS = 12

# Disagreements with the theory beyond this many are counted, not listed.
MAX_THEORY_FINDINGS = 8

# A run with more dead units than this at step 0 has inputs that became alike with depth.
ALIKE_DEAD_FRACTION = 0.05

# What a finding is about: the best and worst pair that finished ok, a pair
# with diverged or failed runs, a pair flagged for its gradients or units,
# the count of flagged pairs left to the table, how the measurements compare
# with the theory overall ("theory"), a pair whose measurement and theory
# disagree ("disagreement"), a fix against its baseline, a depth trend.
KINDS = ("best", "worst", "problem", "flagged", "more", "theory", "disagreement", "fix", "depth")

# Flags that have a finding of their own ("problem") rather than a "flagged" one.
_RUN_FLAGS = ("diverged", "failed")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One conclusion of a report, with the numbers behind it.

    Attributes:
        kind: one of KINDS.
        pair: pair findings: the pair's keys ({key: value}).
        rank: pair findings: the pair's rank in the ranked table.
        flags: pair findings: the pair's flags.
        values: the numbers the finding states (pair findings: every
            quantity of `tables.PAIR_QUANTITIES`; fix and depth findings:
            the compared values).
        statuses: problem findings: {status: number of seeds}.
        diverged_step: problem findings: the earliest step a seed diverged at.
        error: problem findings: the first error message of a failed seed.
        case: fix findings: the setting, in words.
        fix: fix findings: the fix.
        activation, initializer, depths: depth findings: the pair and the
            (shallowest, deepest) depths compared.
        count: "more" findings: how many flagged pairs the list leaves out;
            "theory" findings: how many pairs were compared with the theory.
        words: pair findings: the words of the pair's flags
            (`metrics.Flag.describe`).
        reasons: disagreement findings: what may explain it, in words.
        notes: theory findings: how the inputs' second moments were obtained.
    """

    kind: str
    pair: dict | None = None
    rank: int | None = None
    flags: tuple[str, ...] = ()
    values: dict = dataclasses.field(default_factory=dict)
    statuses: dict = dataclasses.field(default_factory=dict)
    diverged_step: int | None = None
    error: str = ""
    case: str | None = None
    fix: str | None = None
    activation: str | None = None
    initializer: str | None = None
    depths: tuple[int, int] | None = None
    count: int = 0
    words: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Argument `kind` must be one of {', '.join(KINDS)}. Received: kind={self.kind!r}")

    @property
    def gradient_flags(self) -> list[str]:
        """The flags about gradients and units (diverged/failed runs have their own finding)."""
        return [f for f in self.flags if f not in _RUN_FLAGS]

    def to_dict(self, text: str) -> dict:
        """The finding as the summary writes it: ``kind``, ``text`` and the fields of its kind."""
        out = {"kind": self.kind, "text": text}
        if self.pair is not None:
            out |= {"pair": self.pair, "rank": self.rank, "flags": list(self.flags), "values": self.values}
            if self.words:
                out["flag_words"] = list(self.words)
            if self.kind == "disagreement":
                out["reasons"] = list(self.reasons)
        elif self.kind == "theory":
            out |= {"count": self.count, "values": self.values, "inputs": list(self.notes)}
        elif self.kind == "fix":
            out |= {"case": self.case, "fix": self.fix, "values": self.values}
        elif self.kind == "depth":
            out |= {
                "activation": self.activation,
                "initializer": self.initializer,
                "depths": list(self.depths),
                "values": self.values,
            }
        return out


def _all_ok(row) -> bool:
    return set(row["statuses"]) == {"ok"}


# --------------------------------------------------------------------------- #
# Finding
# --------------------------------------------------------------------------- #


def find(pairs: pd.DataFrame, sweep: pd.DataFrame, fixes: pd.DataFrame, inputs=()) -> list[Finding]:
    """The findings of a report, in the order the summary lists them.

    Args:
        pairs: the ranked table of `tables.pair_table`.
        sweep: the table of `tables.depth_sweep`.
        fixes: the table of `tables.fix_effects`.
        inputs: how the predictions' input second moments were obtained
            (`bench.report.predictions.Predictions.inputs`).

    Returns:
        The best and the worst pair among those whose runs all finished ok
        (diverged and failed pairs have their own finding), every flagged
        pair (up to MAX_PAIR_FINDINGS, most severe first, and a "more"
        finding for the rest), how measurement and theory compare (and
        each pair where they disagree beyond `predictions.TOLERANCE`), each
        fix against its baseline, and each depth trend.
    """
    if pairs.empty:
        return []
    keys = pair_keys(pairs)
    rows = pairs.to_dict("records")

    def pair_finding(kind, row, **more):
        values = {q: plain(row[q]) for q in PAIR_QUANTITIES}
        values |= {c: plain(row.get(c)) for c in THEORY_COLUMNS}
        values |= {f"deepest_underflow_layer_{w}": plain(row.get(f"deepest_underflow_layer_{w}")) for w in _WHENS}
        return Finding(
            kind,
            pair={k: plain(row[k]) for k in keys},
            rank=int(row["rank"]),
            flags=tuple(row["flags"]),
            values=values,
            words=tuple(row.get("flag_words") or ()),
            **more,
        )

    out = []
    measured = [r for r in rows if _all_ok(r) and finite(r["test_accuracy"])]
    ends = [("best", measured[0])] if measured else []
    if len(measured) > 1:
        ends.append(("worst", measured[-1]))
    out += [pair_finding(kind, r) for kind, r in ends]
    for r in rows:
        if not _all_ok(r):
            step = r.get("diverged_step")
            out.append(
                pair_finding(
                    "problem",
                    r,
                    statuses=dict(r["statuses"]),
                    diverged_step=int(step) if finite(step) else None,
                    error=str(r.get("error") or ""),
                )
            )
    shown = {id(r) for _, r in ends}
    flagged = [r for r in rows if id(r) not in shown and any(f not in _RUN_FLAGS for f in r["flags"])]
    # Most severe first, so that the cap cuts off the mildest cases.
    flagged.sort(key=_severity, reverse=True)
    out += [pair_finding("flagged", r) for r in flagged[:MAX_PAIR_FINDINGS]]
    if len(flagged) > MAX_PAIR_FINDINGS:
        out.append(Finding("more", count=len(flagged) - MAX_PAIR_FINDINGS))
    out += theory_findings(rows, pair_finding, inputs)
    out += fix_findings(fixes)
    out += depth_findings(sweep)
    return out


_WHENS = ("init", "final")


def theory_findings(rows: list[dict], pair_finding, inputs=()) -> list[Finding]:
    """How the step-0 factors compare with the mean-field predictions, and each pair where they disagree.

    A pair disagrees when its backward or forward factor at step 0 differs
    from the prediction by more than `predictions.TOLERANCE` either way
    (|log10(measured/predicted)| > log10(TOLERANCE)).
    """
    compared, disagree = 0, []
    for r in rows:
        if not r.get("theory_applicable"):
            continue
        devs = {
            s: predictions.deviation(r.get(f"{s}_factor_init"), r.get(f"predicted_{s}_factor"))
            for s in ("backward", "forward")
        }
        if not any(finite(d) for d in devs.values()):
            continue
        compared += 1
        if any(finite(d) and d > math.log10(predictions.TOLERANCE) for d in devs.values()):
            disagree.append((max(d for d in devs.values() if finite(d)), r))
    if not compared:
        return []
    notes = tuple(i["text"] for i in inputs)
    values = {"compared": compared, "disagree": len(disagree), "tolerance": predictions.TOLERANCE}
    out = [Finding("theory", count=compared, values=values, notes=notes)]
    disagree.sort(key=lambda x: x[0], reverse=True)
    exact = all(i.get("exact") for i in inputs) if inputs else False
    for _, r in disagree[:MAX_THEORY_FINDINGS]:
        out.append(pair_finding("disagreement", r, reasons=tuple(_disagreement_reasons(r, exact))))
    return out


def _disagreement_reasons(r: dict, exact_inputs: bool) -> list[str]:
    """What may move a measurement away from the theory, from what is known about the pair."""
    reasons = []
    n = r.get("underflow_layers_init")
    if finite(n) and n > 0:
        reasons.append(
            f"underflow: {int(n)} hidden layer{'s' * (n != 1)} got exactly zero gradient, and the measured "
            "factor is fitted over the others"
        )
    dead = r.get("dead_fraction_init")
    if finite(dead) and dead > ALIKE_DEAD_FRACTION:
        reasons.append(
            f"non-Gaussian inputs: the examples become alike with depth ({pct(dead)} of the units are dead for "
            "the whole batch at step 0), which the theory's independent Gaussian units do not have"
        )
    if not exact_inputs or not r.get("input_exact", True):
        reasons.append("E[x²] is the mean alone: the spread of the inputs' second moments across examples is ignored")
    reasons.append(f"finite width: {r.get('width', 'this')} units per layer and one batch, against the theory's "
                   "infinite width")
    return reasons


def _severity(row) -> tuple:
    """Sort key of a flagged pair: diverged or failed runs first, then the
    per-layer gradient factor farthest from 1 (0, an underflow, is farthest)."""
    logs = []
    for q in ("backward_factor_init", "forward_factor_init", "grad_factor_init", "grad_factor_final"):
        f = row.get(q)
        if finite(f):
            logs.append(math.inf if f <= 0 else abs(math.log10(f)))
    return (not _all_ok(row), max(logs, default=-1.0))


def fix_findings(fixes: pd.DataFrame) -> list[Finding]:
    """Each fix against the no-fix baseline of its case: test accuracy and the step-0 gradient ratio."""
    out = []
    if fixes.empty:
        return out
    t = fixes.pivot_table(index=["case", "fix"], columns="quantity", values="mean", aggfunc="first", dropna=False)
    for (case, fix), row in t.iterrows():
        if fix == "none" or (case, "none") not in t.index:
            continue
        base = t.loc[(case, "none")]
        a0, a1 = base.get("test_accuracy"), row.get("test_accuracy")
        r0, r1 = base.get("grad_ratio_init"), row.get("grad_ratio_init")
        if not (finite(a0) and finite(a1) or finite(r0) and finite(r1)):
            continue
        values = {
            "baseline_test_accuracy": plain(a0),
            "test_accuracy": plain(a1),
            "baseline_grad_ratio_init": plain(r0),
            "grad_ratio_init": plain(r1),
        }
        out.append(Finding("fix", case=case, fix=fix, values=values))
    return out


def depth_findings(sweep: pd.DataFrame) -> list[Finding]:
    """Per activation × initializer of the depth sweep: the step-0 gradient ratio and the
    accuracy at the shallowest and the deepest depth where the ratio was measured."""
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
        if not (finite(r0) and finite(r1)):
            continue
        # At the ratio's own depths, so that both halves of the sentence compare the same networks.
        acc_at = acc.set_index("depth")["mean"]
        a0, a1 = acc_at.get(d0, np.nan), acc_at.get(d1, np.nan)
        values = {"grad_ratio_init": [plain(r0), plain(r1)], "test_accuracy": [plain(a0), plain(a1)]}
        out.append(Finding("depth", activation=act, initializer=init, depths=(d0, d1), values=values))
    return out


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


def render(finding: Finding, chance: float, extra_keys=()) -> str:
    """The sentence of a finding.

    Args:
        finding: a finding of `find`.
        chance: the accuracy of guessing (accuracies below CHANCE_MARGIN
            times it are called chance).
        extra_keys: pair keys besides `text.CORE_KEYS` that vary across the
            results, named in every pair's label.
    """
    kind = finding.kind
    if kind in ("best", "worst"):
        return f"{kind.capitalize()}: " + _pair_sentence(finding, chance, extra_keys)
    if kind == "flagged":
        return "Flagged: " + _pair_sentence(finding, chance, extra_keys)
    if kind == "theory":
        return _theory_sentence(finding)
    if kind == "disagreement":
        return _disagreement_sentence(finding, extra_keys)
    if kind == "problem":
        return _problem_sentence(finding, extra_keys)
    if kind == "more":
        return f"{finding.count} more flagged pairs are in the table."
    if kind == "fix":
        return _fix_sentence(finding)
    return _depth_sentence(finding)


def written(pairs: pd.DataFrame, sweep: pd.DataFrame, fixes: pd.DataFrame, chance: float, inputs=()) -> list[dict]:
    """The findings as the summary lists them: `Finding.to_dict` with each one's sentence.

    Args:
        pairs, sweep, fixes: the tables of `find`.
        chance: the accuracy of guessing.
        inputs: how the predictions' input second moments were obtained.
    """
    extra = varying_keys(pairs)
    return [f.to_dict(render(f, chance, extra)) for f in find(pairs, sweep, fixes, inputs)]


def _firstfinite(*xs):
    return next((x for x in xs if finite(x)), np.nan)


def _factor(x) -> str:
    """'×0.24 per layer'; two significant digits below 0.1, so that a small factor never reads ×0.00."""
    return f"×{x:.2f} per layer" if abs(x) >= 0.095 else f"×{x:.2g} per layer"


def _with_theory(measured, predicted) -> str:
    text = _factor(measured)
    return text + (f" (theory {_factor(predicted).removesuffix(' per layer')})" if finite(predicted) else "")


def _pair_sentence(finding: Finding, chance: float, extra_keys) -> str:
    """'gelu + glorot_uniform, depth 20: forward signal collapses ×0.51 per layer (...); at initialization ...'."""
    v = finding.values
    parts = [w for w in finding.words if not w.startswith(("diverged", "failed"))]
    b0, fw0 = v.get("backward_factor_init"), v.get("forward_factor_init")
    f0, r0, f1 = v.get("grad_factor_init"), v.get("grad_ratio_init"), v.get("grad_factor_final")
    signals = []
    if finite(b0):
        signals.append(f"backward signal {_with_theory(b0, v.get('predicted_backward_factor'))}")
    if finite(fw0):
        signals.append(f"forward signal {_with_theory(fw0, v.get('predicted_forward_factor'))}")
    if finite(f0):
        signals.append(f"kernel gradient {_factor(f0)}")
    if signals:
        parts.append("at initialization: " + ", ".join(signals))
    n, deepest = v.get("underflow_layers_init"), v.get("deepest_underflow_layer_init")
    if finite(n) and n > 0 and not any(w.startswith("underflow") for w in parts):
        where = f" below layer {int(deepest) + 1}" if finite(deepest) else ""
        parts.append(f"underflow{where}, factors fitted over the measured layers")
    if finite(r0):
        share = f"{power_of_ten(r0)} of" if r0 < 1 else f"{power_of_ten(r0)}×"
        parts.append(f"the first hidden layer receives {share} the last hidden layer's gradient")
    if finite(f1):
        parts.append(f"after training the kernel gradient {_factor(f1)}")
    dead = _firstfinite(v.get("dead_fraction_final"), v.get("dead_fraction_init"))
    if finite(dead) and dead >= MENTION_FRACTION and not any(w.startswith("dead units") for w in parts):
        parts.append(f"{pct(dead)} of units dead")
    sat = _firstfinite(v.get("saturated_fraction_final"), v.get("saturated_fraction_init"))
    if finite(sat) and sat >= MENTION_FRACTION:
        parts.append(f"{pct(sat)} of units saturated")
    acc = v.get("test_accuracy")
    if finite(acc):
        note = " (chance)" if acc < CHANCE_MARGIN * chance else ""
        parts.append(f"test accuracy {pct(acc)}{note}")
    body = "; ".join(parts) if parts else "nothing was measured"
    return f"{pair_label(finding.pair, extra_keys)}: {body}."


def _theory_sentence(finding: Finding) -> str:
    """'Mean-field theory: 10 of 12 pairs within ×1.1 of the predicted factors at step 0; ...'."""
    v = finding.values
    agree = v["compared"] - v["disagree"]
    text = (
        f"Mean-field theory: {agree} of {v['compared']} pairs have backward and forward factors at step 0 within "
        f"×{v['tolerance']:g} of the prediction (|log10(measured/predicted)| ≤ log10({v['tolerance']:g}))"
    )
    if finding.notes:
        text += "; theory inputs: " + "; ".join(finding.notes)
    return text + "."


def _disagreement_sentence(finding: Finding, extra_keys) -> str:
    """'relu + he_normal, depth 20 departs from the theory: backward signal ×0.90 per layer, theory ×1.00; ...'."""
    v = finding.values
    parts = []
    for signal in ("backward", "forward"):
        m, p = v.get(f"{signal}_factor_init"), v.get(f"predicted_{signal}_factor")
        d = predictions.deviation(m, p)
        if finite(d):
            mark = "" if d <= math.log10(predictions.TOLERANCE) else f" (off by ×{10 ** d:.2f})"
            parts.append(f"{signal} signal {_factor(m)}, theory {_factor(p).removesuffix(' per layer')}{mark}")
    text = f"{pair_label(finding.pair, extra_keys)} departs from the theory at step 0: " + "; ".join(parts)
    if finding.reasons:
        text += ". Possible reasons: " + "; ".join(finding.reasons)
    return text + "."


def _problem_sentence(finding: Finding, extra_keys) -> str:
    """'relu + he_normal, depth 20: diverged in 1 of 2 seed(s), first at step 3.'"""
    counts, n = finding.statuses, sum(finding.statuses.values())
    parts = []
    if counts.get("diverged"):
        at = f", first at step {finding.diverged_step}" if finding.diverged_step is not None else ""
        parts.append(f"diverged in {counts['diverged']} of {n} seed(s){at}")
    if counts.get("failed"):
        error = f" ({finding.error})" if finding.error else ""
        parts.append(f"failed in {counts['failed']} of {n} seed(s){error}")
    return f"{pair_label(finding.pair, extra_keys)}: {'; '.join(parts)}."


def _fix_sentence(finding: Finding) -> str:
    """'batchnorm on sigmoid + glorot_uniform, depth 20: test accuracy 11% → 90% (+79 points); ...'."""
    v = finding.values
    parts = []
    a0, a1 = v["baseline_test_accuracy"], v["test_accuracy"]
    if finite(a0) and finite(a1):
        parts.append(f"test accuracy {pct(a0)} → {pct(a1)} ({100 * (a1 - a0):+.0f} points)")
    r0, r1 = v["baseline_grad_ratio_init"], v["grad_ratio_init"]
    if finite(r0) and finite(r1):
        parts.append(f"first/last gradient ratio at step 0 {power_of_ten(r0)} → {power_of_ten(r1)}")
    return f"{finding.fix} on {finding.case}: " + "; ".join(parts) + "."


def _depth_sentence(finding: Finding) -> str:
    """'sigmoid + glorot_uniform: the first/last gradient ratio at step 0 falls from 10⁻³ at depth 2 to ...'."""
    (r0, r1), (a0, a1) = finding.values["grad_ratio_init"], finding.values["test_accuracy"]
    d0, d1 = finding.depths
    verb = "falls" if r1 < r0 else "rises"
    text = (
        f"{finding.activation} + {finding.initializer}: the first/last gradient ratio at step 0 {verb} "
        f"from {power_of_ten(r0)} at depth {d0} to {power_of_ten(r1)} at depth {d1}"
    )
    if finite(a0) and finite(a1):
        text += f"; test accuracy {pct(a0)} → {pct(a1)}"
    return text + "."
