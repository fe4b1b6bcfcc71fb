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

from bench.report.tables import PAIR_QUANTITIES, pair_keys, varying_keys
from bench.report.text import pair_label, pct, power_of_ten
from bench.utils import plain

# Accuracy below this multiple of chance is reported as "chance".
CHANCE_MARGIN = 1.5

# Dead or saturated fractions below this are not worth a word in a finding.
MENTION_FRACTION = 0.01

# Findings about single pairs beyond this many are left to the table.
MAX_PAIR_FINDINGS = 12

# What a finding is about: the best and worst pair that finished ok, a pair
# with diverged or failed runs, a pair flagged for its gradients or units,
# the count of flagged pairs left to the table, a fix against its baseline,
# a depth trend.
KINDS = ("best", "worst", "problem", "flagged", "more", "fix", "depth")

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
        count: "more" findings: how many flagged pairs the list leaves out.
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


def _finite(x) -> bool:
    try:
        return x is not None and bool(np.isfinite(x))
    except TypeError:
        return False


def _all_ok(row) -> bool:
    return set(row["statuses"]) == {"ok"}


# --------------------------------------------------------------------------- #
# Finding
# --------------------------------------------------------------------------- #


def find(pairs: pd.DataFrame, sweep: pd.DataFrame, fixes: pd.DataFrame) -> list[Finding]:
    """The findings of a report, in the order the summary lists them.

    Args:
        pairs: the ranked table of `tables.pair_table`.
        sweep: the table of `tables.depth_sweep`.
        fixes: the table of `tables.fix_effects`.

    Returns:
        The best and the worst pair among those whose runs all finished ok
        (diverged and failed pairs have their own finding), every flagged
        pair (up to MAX_PAIR_FINDINGS, most severe first, and a "more"
        finding for the rest), each fix against its baseline, and each
        depth trend.
    """
    if pairs.empty:
        return []
    keys = pair_keys(pairs)
    rows = pairs.to_dict("records")

    def pair_finding(kind, row, **more):
        return Finding(
            kind,
            pair={k: plain(row[k]) for k in keys},
            rank=int(row["rank"]),
            flags=tuple(row["flags"]),
            values={q: plain(row[q]) for q in PAIR_QUANTITIES},
            **more,
        )

    out = []
    measured = [r for r in rows if _all_ok(r) and _finite(r["test_accuracy"])]
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
                    diverged_step=int(step) if _finite(step) else None,
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
    out += fix_findings(fixes)
    out += depth_findings(sweep)
    return out


def _severity(row) -> tuple:
    """Sort key of a flagged pair: diverged or failed runs first, then the
    per-layer gradient factor farthest from 1 (0, an underflow, is farthest)."""
    logs = []
    for q in ("grad_factor_init", "grad_factor_final"):
        f = row.get(q)
        if _finite(f):
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
        if not (_finite(a0) and _finite(a1) or _finite(r0) and _finite(r1)):
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
        if not (_finite(r0) and _finite(r1)):
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
        return f"Flagged {', '.join(finding.gradient_flags)}: " + _pair_sentence(finding, chance, extra_keys)
    if kind == "problem":
        return _problem_sentence(finding, extra_keys)
    if kind == "more":
        return f"{finding.count} more flagged pairs are in the table."
    if kind == "fix":
        return _fix_sentence(finding)
    return _depth_sentence(finding)


def written(pairs: pd.DataFrame, sweep: pd.DataFrame, fixes: pd.DataFrame, chance: float) -> list[dict]:
    """The findings as the summary lists them: `Finding.to_dict` with each one's sentence.

    Args:
        pairs, sweep, fixes: the tables of `find`.
        chance: the accuracy of guessing.
    """
    extra = varying_keys(pairs)
    return [f.to_dict(render(f, chance, extra)) for f in find(pairs, sweep, fixes)]


def _first_finite(*xs):
    return next((x for x in xs if _finite(x)), np.nan)


def _pair_sentence(finding: Finding, chance: float, extra_keys) -> str:
    """'sigmoid + glorot_uniform, depth 20: at initialization the gradient shrinks ×0.24 per layer; ...'."""
    v = finding.values
    parts = []
    f0, r0, f1 = v.get("grad_factor_init"), v.get("grad_ratio_init"), v.get("grad_factor_final")
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
    dead = _first_finite(v.get("dead_fraction_final"), v.get("dead_fraction_init"))
    if _finite(dead) and dead >= MENTION_FRACTION:
        parts.append(f"{pct(dead)} of units dead")
    sat = _first_finite(v.get("saturated_fraction_final"), v.get("saturated_fraction_init"))
    if _finite(sat) and sat >= MENTION_FRACTION:
        parts.append(f"{pct(sat)} of units saturated")
    acc = v.get("test_accuracy")
    if _finite(acc):
        note = " (chance)" if acc < CHANCE_MARGIN * chance else ""
        parts.append(f"test accuracy {pct(acc)}{note}")
    body = "; ".join(parts) if parts else "nothing was measured"
    return f"{pair_label(finding.pair, extra_keys)}: {body}."


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
    if _finite(a0) and _finite(a1):
        parts.append(f"test accuracy {pct(a0)} → {pct(a1)} ({100 * (a1 - a0):+.0f} points)")
    r0, r1 = v["baseline_grad_ratio_init"], v["grad_ratio_init"]
    if _finite(r0) and _finite(r1):
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
    if _finite(a0) and _finite(a1):
        text += f"; test accuracy {pct(a0)} → {pct(a1)}"
    return text + "."
