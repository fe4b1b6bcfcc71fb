"""Findings of a report: the conclusions its tables support, as data, written as sentences last.

`find` reads the ranked pair table, the depth sweep and the fix effects of
`bench.report.tables` and returns `Finding` objects: what kind of finding
it is, which pair, fix case or activation it is about, and its numbers.
`render` is the one place where a finding becomes a sentence. `group`
gathers them into at most `MAX_BULLETS` bullets a reader can take in at a
glance (the claims first, the best and the worst pair of one setting, one
bullet per failure mode listing the pairs it covers, then the problems,
the theory, the fixes and the depth trends), and `written` does all of it
for the summary: each bullet keeps its findings, with their numbers, as
``items``. Nothing reads a sentence back: a finding about a diverged pair
carries the pair's status counts, not its status text.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from vgbench.bench.report import predictions
from vgbench.bench.report.tables import PAIR_QUANTITIES, THEORY_COLUMNS, pair_keys, varying_keys
from vgbench.bench.report.text import factor_text, pair_label, pct, power_of_ten
from vgbench.bench.utils import finite, plain

# Accuracy below this multiple of chance is reported as "chance".
CHANCE_MARGIN = 1.5

# Dead or saturated fractions below this are not worth a word in a finding.
MENTION_FRACTION = 0.01

# Findings about single pairs beyond this many are left to the table.
MAX_PAIR_FINDINGS = 12

# The default of arguments that read a module constant when called (tests may change it).
_DEFAULT = object()

# The written summary's bullets, at most.
MAX_BULLETS = 12

# Pairs named in one bullet beyond this many are counted, not listed.
MAX_LISTED = 5

# The bullets of the written summary, in order (see `group`).
GROUP_KINDS = ("claims", "best", "worst", "mode", "problems", "theory", "fixes", "depths")

# Failure modes, most severe first: one bullet each.
MODES = ("vanishing", "collapse", "exploding", "forward collapse", "underflow", "dead units")

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
        setting: best and worst findings: why the worst pair is not from
            the best pair's setting, when it is not ("" when it is).
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
    setting: str = ""

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


def find(
    pairs: pd.DataFrame,
    sweep: pd.DataFrame,
    fixes: pd.DataFrame,
    inputs=(),
    main: dict | None = None,
    max_pairs=_DEFAULT,
) -> list[Finding]:
    """The findings of a report, in the order the summary lists them.

    Args:
        pairs: the ranked table of `tables.pair_table`.
        sweep: the table of `tables.depth_sweep`.
        fixes: the table of `tables.fix_effects`.
        inputs: how the predictions' input second moments were obtained
            (`bench.report.predictions.Predictions.inputs`).
        main: the fixed keys of the report's slice (`tables.main_slice`);
            the best and the worst pair are compared within it.
        max_pairs: flagged pairs listed at most (default
            MAX_PAIR_FINDINGS; None lists them all).

    Returns:
        The best and the worst pair among those whose runs all finished ok
        (diverged and failed pairs have their own finding), both of one
        setting where it has two such pairs, else of one depth, every flagged
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
    measured, setting = _like_with_like(measured, main)
    ends = [("best", measured[0])] if measured else []
    if len(measured) > 1:
        ends.append(("worst", measured[-1]))
    out += [pair_finding(kind, r, setting=setting) for kind, r in ends]
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
    cap = MAX_PAIR_FINDINGS if max_pairs is _DEFAULT else len(flagged) if max_pairs is None else max_pairs
    out += [pair_finding("flagged", r) for r in flagged[:cap]]
    if len(flagged) > cap:
        out.append(Finding("more", count=len(flagged) - cap))
    out += theory_findings(rows, pair_finding, inputs)
    out += fix_findings(fixes)
    out += depth_findings(sweep)
    return out


_WHENS = ("init", "final")


def _like_with_like(measured: list[dict], main: dict | None) -> tuple[list[dict], str]:
    """The ranked pairs the best and the worst are chosen from, and why they differ in more than the pair.

    Within the slice when it holds two measured pairs; else at the depth of
    the best pair when another pair was run there; else all of them, saying so.
    """
    if not measured:
        return measured, ""
    if main:
        keys = {k: v for k, v in main.items() if k in measured[0]}
        in_slice = [r for r in measured if all(_same(r[k], v) for k, v in keys.items())]
        if len(in_slice) >= 2:
            return in_slice, ""
    depth = measured[0].get("depth")
    same = [r for r in measured if r.get("depth") == depth]
    if len(same) >= 2:
        return same, "" if not main else "compared at the best pair's depth, in any setting"
    return measured, f"no other pair finished at depth {depth}: the worst is from another depth"


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _same(a, b) -> bool:
    """Equal settings; a missing value (None or NaN, as tables hold it) equals a missing one."""
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    return a == b


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
    reasons.append(
        f"finite width: {r.get('width', 'this')} units per layer and one batch, against the theory's infinite width"
    )
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
    if kind == "best":
        return "Best: " + _pair_sentence(finding, chance, extra_keys)
    if kind == "worst":
        where = f"Worst ({finding.setting})" if finding.setting else "Worst in the same setting"
        return f"{where}: " + _pair_sentence(finding, chance, extra_keys)
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


def written(
    pairs: pd.DataFrame,
    sweep: pd.DataFrame,
    fixes: pd.DataFrame,
    chance: float,
    inputs=(),
    main: dict | None = None,
    claim_results=(),
) -> list[dict]:
    """The findings as the summary lists them: at most `MAX_BULLETS` bullets, each with its findings.

    Each bullet is ``{"kind", "text", ...}``: a best or worst pair is
    `Finding.to_dict` of its finding; the other bullets carry their
    findings' dicts (each with its own sentence) as ``items``, a mode bullet
    its flag kind as ``mode`` and the claims bullet its verdict counts.

    Args:
        pairs, sweep, fixes, inputs, main: as for `find`.
        chance: the accuracy of guessing.
        claim_results: the `bench.claims.ClaimResult`s of the directory
            (or their dicts); claims whose runs are all absent are left out.
    """
    extra = varying_keys(pairs) if not pairs.empty else []
    found = find(pairs, sweep, fixes, inputs, main, max_pairs=None)
    return group(found, chance, extra, claim_results, main)


def flatten(bullets: list[dict]) -> list[dict]:
    """Every finding of the written bullets, a bullet's items in place of the bullet (best and worst stay)."""
    out = []
    for b in bullets:
        out += b["items"] if "items" in b else [b]
    return out


class _Keys(tuple):
    """The extra keys of a pair's label: only those in which the pair differs from the report's slice."""

    main: dict = {}

    def of(self, pair: dict | None) -> list[str]:
        return [k for k in self if not self.main or k not in self.main or not _same((pair or {}).get(k), self.main[k])]


def _label(pair: dict, extra_keys) -> str:
    keys = extra_keys.of(pair) if isinstance(extra_keys, _Keys) else extra_keys
    return pair_label(pair, keys)


def group(found: list[Finding], chance: float, extra_keys=(), claim_results=(), main: dict | None = None) -> list[dict]:
    """The findings gathered into the summary's bullets (see `written`), in GROUP_KINDS order.

    Pairs are named by their activation, initializer, depth and fix, plus
    the other keys in which they differ from ``main`` (the report's slice).
    """
    extra_keys = _Keys(extra_keys)
    extra_keys.main = dict(main or {})
    bullets = []
    claims_bullet = _claims_bullet(claim_results)
    if claims_bullet:
        bullets.append(claims_bullet)
    for kind in ("best", "worst"):
        bullets += [f.to_dict(render(f, chance, extra_keys)) for f in found if f.kind == kind]
    flagged = [f for f in found if f.kind == "flagged"]
    # Every flagged pair, also those beyond MAX_PAIR_FINDINGS, belongs in its modes' bullets.
    for mode in MODES:
        members = [f for f in flagged if any(_flag_kind(x) == mode for x in f.gradient_flags)]
        members += [
            f for f in found if f.kind in ("best", "worst") and any(_flag_kind(x) == mode for x in f.gradient_flags)
        ]
        if members:
            bullets.append(_mode_bullet(mode, members, chance, extra_keys))
    problems = [f for f in found if f.kind == "problem"]
    if problems:
        bullets.append(_list_bullet("problems", "Diverged or failed", problems, chance, extra_keys))
    theory = [f for f in found if f.kind in ("theory", "disagreement")]
    if theory:
        bullets.append(_theory_bullet(theory, chance, extra_keys))
    fixes = [f for f in found if f.kind == "fix"]
    if fixes:
        bullets.append(_list_bullet("fixes", "Fixes", fixes, chance, extra_keys))
    depths = [f for f in found if f.kind == "depth"]
    if depths:
        bullets.append(_list_bullet("depths", "With depth", depths, chance, extra_keys))
    return bullets[:MAX_BULLETS]


def _flag_kind(flag) -> str:
    return getattr(flag, "kind", None) or str(flag).split("@", 1)[0]


_MODE_TITLES = {
    "vanishing": "Vanishing gradient",
    "collapse": "Gradient collapsed to exactly 0 in training (not vanishing at step 0)",
    "exploding": "Exploding gradient",
    "forward collapse": "Forward signal collapses",
    "underflow": "Underflow (some layers get exactly 0 gradient)",
    "dead units": "Dead units",
}


def _mode_value(mode: str, f: Finding) -> tuple[float, str]:
    """(how far from healthy, the number that shows it) of a pair in a mode's bullet, at the moment of its flag.

    Vanishing shows the smaller of the backward and kernel-gradient factors
    (or the first/last ratio when neither is under 1), exploding the
    larger: the number that raised the flag.
    """
    v = f.values
    moments = [str(x).split("@", 1)[1] for x in f.flags if _flag_kind(x) == mode and "@" in str(x)]
    when = "init" if "init" in moments or not moments else "final"
    at = "" if when == "init" else " at the end"
    factors = [x for x in (v.get(f"backward_factor_{when}"), v.get(f"grad_factor_{when}")) if finite(x) and x >= 0]
    if mode == "vanishing":
        n, depth = v.get(f"underflow_layers_{when}"), (f.pair or {}).get("depth")
        if finite(n) and finite(depth) and n >= depth:
            return math.inf, "all 0" + at
        ratio = v.get(f"grad_ratio_{when}")
        if factors and min(factors) == 0:
            return math.inf, "×0, underflow" + at
        if factors and min(factors) < 1:
            x = min(factors)
            return -math.log10(x), _factor(x).removesuffix(" per layer") + at
        if finite(ratio) and ratio < 1:
            return -math.log10(ratio) / max(
                (f.pair or {}).get("depth") or 1, 1
            ), f"first/last {power_of_ten(ratio)}{at}"
        return 0.0, ""
    if mode == "collapse":
        return 0.0, "all 0 at the end"
    if mode == "exploding":
        if not factors or max(factors) <= 0:
            return 0.0, ""
        x = max(factors)
        return math.log10(x), _factor(x).removesuffix(" per layer") + at
    if mode == "forward collapse":
        x = v.get(f"forward_factor_{when}")
        return (
            (-math.log10(x), f"forward {_factor(x).removesuffix(' per layer')}{at}")
            if finite(x) and x > 0
            else (0.0, "")
        )
    if mode == "underflow":
        deepest = _firstfinite(v.get("deepest_underflow_layer_init"), v.get("deepest_underflow_layer_final"))
        return (float(deepest), f"below layer {int(deepest) + 1}") if finite(deepest) else (0.0, "")
    dead = _firstfinite(v.get("dead_fraction_final"), v.get("dead_fraction_init"))
    return (float(dead), f"{pct(dead)} dead") if finite(dead) else (0.0, "")


def _mode_number(mode: str, f: Finding) -> str:
    """The one number of a pair that shows its mode, at the moment its flag was raised, for a list in a bullet."""
    return _mode_value(mode, f)[1]


def _listed(parts: list[str]) -> str:
    shown = parts[:MAX_LISTED]
    text = "; ".join(shown)
    if len(parts) > MAX_LISTED:
        text += f"; and {len(parts) - MAX_LISTED} more (see the table)"
    return text


def _mode_bullet(mode: str, members: list[Finding], chance: float, extra_keys) -> dict:
    """One bullet per failure mode: how many pairs, each with its number and accuracy."""
    # Most severe first: the number that shows the mode farthest from healthy.
    members = sorted(members, key=lambda f: _mode_value(mode, f)[0], reverse=True)
    parts = []
    for f in members:
        numbers = [x for x in (_mode_number(mode, f), _accuracy_word(f.values.get("test_accuracy"), chance)) if x]
        parts.append(_label(f.pair, extra_keys) + (f" ({', '.join(numbers)})" if numbers else ""))
    n = len(members)
    text = f"{_MODE_TITLES[mode]} in {n} pair{'s' * (n != 1)}: {_listed(parts)}."
    items = [f.to_dict(render(f, chance, extra_keys)) for f in members]
    return {"kind": "mode", "mode": mode, "text": text, "count": n, "items": items}


def _accuracy_word(acc, chance) -> str:
    if not finite(acc):
        return ""
    return f"accuracy {pct(acc)}" + (" = chance" if acc < CHANCE_MARGIN * chance else "")


def _list_bullet(kind: str, title: str, members: list[Finding], chance: float, extra_keys) -> dict:
    """A bullet made of its findings' sentences, the first MAX_LISTED of them."""
    sentences = [render(f, chance, extra_keys).rstrip(".") for f in members]
    text = f"{title}: {_listed(sentences)}."
    items = [f.to_dict(render(f, chance, extra_keys)) for f in members]
    return {"kind": kind, "text": text, "count": len(members), "items": items}


def _theory_bullet(members: list[Finding], chance: float, extra_keys) -> dict:
    """The comparison with the theory and the pairs that depart from it, in one bullet."""
    summary = next((f for f in members if f.kind == "theory"), None)
    off = [f for f in members if f.kind == "disagreement"]
    text = _theory_sentence(summary).rstrip(".") if summary is not None else "Mean-field theory"
    if off:
        parts = []
        for f in off:
            devs = [
                (s, predictions.deviation(f.values.get(f"{s}_factor_init"), f.values.get(f"predicted_{s}_factor")))
                for s in ("backward", "forward")
            ]
            s, d = max(((s, d) for s, d in devs if finite(d)), key=lambda x: x[1], default=(None, math.nan))
            parts.append(_label(f.pair, extra_keys) + (f" ({s} off by ×{10**d:.2f})" if s else ""))
        reasons = []
        for f in off:
            for r in f.reasons:
                head = r.split(":", 1)[0]
                if head not in reasons:
                    reasons.append(head)
        text += f". Outside the tolerance: {_listed(parts)}"
        if reasons:
            text += f"; possible reasons: {', '.join(reasons)}"
    items = [f.to_dict(render(f, chance, extra_keys)) for f in members]
    return {"kind": "theory", "text": text + ".", "count": len(off), "items": items}


def _claims_bullet(claim_results) -> dict | None:
    """The claims' verdicts in one bullet (None when no claim has its runs here)."""
    results = [r if isinstance(r, dict) else dataclasses.asdict(r) for r in claim_results]
    decided = [r for r in results if "missing_runs" not in (r.get("evidence") or {})]
    if not decided:
        return None
    counts = {v: [r["id"] for r in results if r["verdict"] == v] for v in ("pass", "fail", "inconclusive")}
    parts = [f"{len(counts['pass'])} of {len(results)} pass"]
    for v in ("fail", "inconclusive"):
        if counts[v]:
            parts.append(f"{len(counts[v])} {v} ({', '.join(counts[v])})")
    text = "Claims: " + "; ".join(parts) + " (see the Claims section)."
    return {"kind": "claims", "text": text, "counts": {v: len(ids) for v, ids in counts.items()}, "ids": counts}


def _firstfinite(*xs):
    return next((x for x in xs if finite(x)), np.nan)


def _factor(x) -> str:
    """'×0.24 per layer', '×0.004 per layer', '×0 per layer'."""
    return f"×{factor_text(x, zero='0')} per layer"


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
    return f"{_label(finding.pair, extra_keys)}: {body}."


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
            mark = "" if d <= math.log10(predictions.TOLERANCE) else f" (off by ×{10**d:.2f})"
            parts.append(f"{signal} signal {_factor(m)}, theory {_factor(p).removesuffix(' per layer')}{mark}")
    text = f"{_label(finding.pair, extra_keys)} departs from the theory at step 0: " + "; ".join(parts)
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
    return f"{_label(finding.pair, extra_keys)}: {'; '.join(parts)}."


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
