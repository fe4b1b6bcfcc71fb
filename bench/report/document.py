"""The written report: one summary dict, rendered as JSON, Markdown and HTML.

`summary_dict` gathers the tables of `bench.report.tables` and the findings
of `bench.report.findings` into plain JSON-ready values; the three renderers
only format that dict, so ``summary.json``, ``summary.md`` and
``index.html`` always agree.
"""

from __future__ import annotations

import base64
import html

from vgbench.bench import backend as backend_mod
from vgbench.bench import quantities as Q
from vgbench.bench.report import findings, predictions, tables, text, verdicts
from vgbench.bench.results import manifest_datasets, write_json_atomic
from vgbench.bench.utils import json_safe

REPORT_VERSION = 3

# Per claim in summary.json, after the fields of `bench.claims.ClaimResult`.
CLAIM_EXTRA_FIELDS = ("missing", "key_numbers", "budget_text", "related_figures", "figure")

# The per-pair quantities written to the summary, in table order.
PAIR_FIELDS = list(tables.PAIR_QUANTITIES)

# What the gradient columns of the ranked table mean (Markdown and HTML).
TABLE_NOTE = (
    "Means over seeds (± half of the 95% interval); gradient factors and ratios are geometric means. "
    "backward factor: by how much the back-propagated signal B·∂L/∂z is multiplied per hidden layer on its way "
    "to the input; forward factor: by how much the pre-activations' RMS is multiplied per layer on the way to the "
    "output; theory: the mean-field prediction of each; "
    "grad factor: the same for the RMS kernel gradient per weight, which multiplies the two signals; "
    "first/last: first hidden layer's RMS kernel gradient per weight (‖∂L/∂W‖/√|W|) over the last one's."
)

# Per run in summary.json's "theory" section: (key, column of the run table).
PREDICTED_FIELDS = {
    "backward_factor": "predicted_backward_factor",
    "forward_factor": "predicted_forward_factor",
    "chi1": "predicted_chi1",
    "depth_scale": "predicted_depth_scale",
    "phase": "predicted_phase",
    "q_star": "predicted_q_star",
    "input_second_moment": "input_second_moment",
}
MEASURED_FIELDS = [
    "backward_factor_init",
    "forward_factor_init",
    "grad_factor_init",
    "underflow_layers_init",
    "deepest_underflow_layer_init",
    "backward_factor_final",
    "forward_factor_final",
    "grad_factor_final",
    "underflow_layers_final",
    "deepest_underflow_layer_final",
]


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


def summary_dict(results, report_tables, drawn: list[dict], skipped: list[dict]) -> dict:
    """Everything the written report says, as one JSON-ready dict.

    Keys: ``report_version, claims`` (one dict per claim: the fields of
    `bench.claims.ClaimResult` and CLAIM_EXTRA_FIELDS, with its
    ``configurations``: the rows of its figure), ``claims_note`` (one line
    when no claim has its runs here), ``best_learning_rates`` (per
    configuration, where a suite declared the ``best_lr`` protocol),
    ``results_dir, provenance, budget, main_slice, chance_accuracy, pairs``
    (ranked list of dicts), ``pair_keys, findings`` (at most
    `findings.MAX_BULLETS` bullets), ``figures, skipped_figures``. Flags
    stay lists.

    Args:
        results: the loaded `bench.results.Results`.
        report_tables: the `bench.report.build.Tables` of the report.
        drawn: ``{name, title, caption, files}`` of each drawn figure.
        skipped: ``{name, title, reason}`` of each skipped figure.
    """
    pairs = report_tables.pairs
    keys = tables.pair_keys(pairs)
    rows = []
    for r in pairs.to_dict("records"):
        row = {"rank": r["rank"], **{k: r[k] for k in keys}}
        row |= {"n_seeds": r["n_seeds"], "seeds": r["seeds"], "status": r["status"], "flags": r["flags"]}
        row |= {"diverged_step": r["diverged_step"], "error": r["error"]}
        for q in PAIR_FIELDS:
            row[q] = r[q]
            row[f"{q}_lo"] = r[f"{q}_lo"]
            row[f"{q}_hi"] = r[f"{q}_hi"]
        for c in tables.THEORY_COLUMNS:
            row[c] = r.get(c)
        row["flag_words"] = r.get("flag_words", [])
        row["run_ids"] = r["run_ids"]
        rows.append(row)
    budget = tables.budget(results.runs, results.manifest)
    t = report_tables
    inputs = t.predictions.inputs if t.predictions is not None else []
    section = t.claims or {"claims": [], "present": False, "note": ""}
    summary = {
        "report_version": REPORT_VERSION,
        "claims": [claim_dict(c) for c in section["claims"]],
        "claims_note": section["note"],
        "best_learning_rates": protocol_rows(t.protocol),
        "results_dir": str(results.path),
        "provenance": {**provenance(results.manifest), "backends": backend_mod.describe_runs(results.runs)},
        "budget": {**budget, "text": text.budget_text(budget)},
        "main_slice": {**t.main, "text": t.main_text},
        "chance_accuracy": t.chance,
        "pair_keys": keys,
        "shown_keys": [*text.CORE_KEYS, *tables.varying_keys(pairs)],
        "pairs": rows,
        "theory": theory_section(t),
        "findings": findings.written(pairs, t.sweep, t.fixes, t.chance, inputs, t.main, section["claims"]),
        "figures": drawn,
        "skipped_figures": skipped,
    }
    return json_safe(summary)


def claim_dict(c: dict) -> dict:
    """A claim's entry of summary.json: its result's fields, what the page shows beside it, its figure's rows."""
    fields = ("id", "statement", "source", "verdict", "evidence", "run_ids", "budget", "rule", "summary")
    out = {k: c[k] for k in fields}
    out |= {k: c.get(k) for k in CLAIM_EXTRA_FIELDS}
    table = c.get("evidence_table")
    out["configurations"] = [] if table is None or table.empty else table.to_dict("records")
    return out


def protocol_rows(table) -> list[dict]:
    """The winning learning rate per configuration (`verdicts.protocol_table`) as plain rows."""
    if table is None or table.empty:
        return []
    rows = []
    for r in table.to_dict("records"):
        rows.append(
            {
                "configuration": r["label"],
                "best_learning_rate": r["best_learning_rate"],
                "median_accuracy": r["median_accuracy"],
                "min_accuracy": r["min_accuracy"],
                "max_accuracy": r["max_accuracy"],
                "n_seeds": r["n_seeds"],
                "median_by_lr": {f"{float(k):g}": v for k, v in (r["median_by_lr"] or {}).items()},
                "diverged_by_lr": {f"{float(k):g}": v for k, v in (r["diverged_by_lr"] or {}).items()},
                "text": verdicts.lr_medians_text(r),
            }
        )
    return rows


def theory_section(t) -> dict:
    """summary.json's "theory": the tolerance, how E[x²] was obtained, and per run its predictions and measurements.

    Args:
        t: the `bench.report.build.Tables` of the report.
    """
    keys = tables.pair_keys(t.runs)
    runs = []
    for r in t.runs.to_dict("records"):
        runs.append(
            {
                "run_id": r["run_id"],
                **{k: r[k] for k in keys},
                "seed": r["seed"],
                "status": r["status"],
                "applicable": bool(r["theory_applicable"]),
                "reason": r.get("theory_reason") or "",
                "input_exact": bool(r.get("input_exact")) if r.get("input_exact") is not None else False,
                "predicted": {k: r.get(c) for k, c in PREDICTED_FIELDS.items()},
                "measured": {k: r.get(k) for k in MEASURED_FIELDS},
                "flags": [str(f) for f in r["flags"]],
                "flag_words": [f.describe() if hasattr(f, "describe") else str(f) for f in r["flags"]],
            }
        )
    return {
        "tolerance": t.theory.attrs.get("tolerance", predictions.TOLERANCE) if t.theory is not None else None,
        "inputs": t.predictions.inputs if t.predictions is not None else [],
        "excluded": list(t.theory.attrs.get("excluded", [])) if t.theory is not None else [],
        "runs": runs,
    }


def write_json(path, summary: dict) -> None:
    """Writes the summary atomically (no half-written file on interruption).

    Keys keep the summary's order; NaN is refused because `summary_dict`
    already turned missing values into null.
    """
    write_json_atomic(path, summary, sort_keys=False, ensure_ascii=False, allow_nan=False)


# --------------------------------------------------------------------------- #
# Formatting of table cells (shared by Markdown and HTML)
# --------------------------------------------------------------------------- #


def _fraction_column(pairs: list[dict], name: str) -> str:
    """The end-of-training column when any pair has it, else the step-0 one."""
    final = f"{name}_final"
    return final if any(p.get(final) is not None for p in pairs) else f"{name}_init"


_PREDICTED_HEADERS = {
    "predicted_backward_factor": "backward theory",
    "predicted_forward_factor": "forward theory",
}


def _quantity_column(name: str):
    """(header, row → cell text) of a per-pair quantity, as its registry entry writes it."""
    if name in _PREDICTED_HEADERS:
        return _PREDICTED_HEADERS[name], lambda p: text.MISSING if p.get(name) is None else f"{p[name]:.3g}"
    q = tables.PAIR_QUANTITIES[name]
    return text.header(q), lambda p: text.cell(q, p[name], p[f"{name}_lo"], p[f"{name}_hi"])


def _key_column(key: str):
    return key, lambda p: text.MISSING if p[key] is None else str(p[key])


def pair_columns(summary: dict) -> list[tuple[str, callable]]:
    """(header, row → cell text) of the ranked table.

    Dead and saturated fractions are shown at the end of training when any
    pair has them there, else at step 0.
    """
    pairs = summary["pairs"]
    shown = [
        "test_accuracy",
        "backward_factor_init",
        "predicted_backward_factor",
        "forward_factor_init",
        "predicted_forward_factor",
        "grad_factor_init",
        "grad_factor_final",
        "grad_ratio_init",
        "grad_ratio_final",
        _fraction_column(pairs, Q.DEAD_FRACTION),
        _fraction_column(pairs, Q.SATURATED_FRACTION),
    ]
    cols = [("rank", lambda p: str(p["rank"]))]
    cols += [_key_column(k) for k in summary["shown_keys"]]
    cols += [("seeds", lambda p: str(p["n_seeds"]))]
    cols += [_quantity_column(name) for name in shown]
    cols += [
        ("status", lambda p: p["status"]),
        _quantity_column("wall_time_s"),
        ("flags", lambda p: text.join_flags(p["flags"])),
    ]
    return cols


def table_note(summary: dict) -> str:
    """What the ranked table's numbers are; intervals are promised only where a pair has two or more seeds."""
    several = any((p.get("n_seeds") or 0) >= 2 for p in summary["pairs"])
    head = (
        "Means over seeds (± half of the 95% interval where a pair has two or more seeds)"
        if several
        else "One seed per pair: values of single runs, no intervals"
    )
    return head + TABLE_NOTE.removeprefix("Means over seeds (± half of the 95% interval)")


def _flat_key_numbers(c: dict) -> str:
    return "; ".join(f"{k}: {v}" for k, v in c.get("key_numbers") or []) or text.MISSING


def claim_counts_text(claims: list[dict]) -> str:
    """'9 pass, 2 fail, 2 inconclusive (of 13 claims)'."""
    counts = {v: sum(1 for c in claims if c["verdict"] == v) for v in ("pass", "fail", "inconclusive")}
    return ", ".join(f"{n} {v}" for v, n in counts.items() if n) + f" (of {len(claims)} claims)"


def _figure_titles(summary: dict) -> dict:
    return {f["name"]: f["title"] for f in summary["figures"]}


def backends_text(backends: dict) -> str:
    """'jax (keras 3.15.0, jax 0.10.2, jaxlib 0.10.2); tensorflow (...)': each backend the runs trained on."""
    return "; ".join(
        f"{name} ({', '.join(f'{k} {v}' for k, v in packages.items())})" if packages else name
        for name, packages in sorted(backends.items())
    )


def _datasets(summary: dict) -> dict[str, dict]:
    """Dataset name → its description, from the provenance (one dataset or several)."""
    return manifest_datasets(summary["provenance"])


def data_text(summary: dict) -> str:
    """'mnist (checksum 8f81c22911c9…)', one entry per dataset the runs trained on."""
    datasets = _datasets(summary)
    return ", ".join(f"{name} (checksum {str(d.get('checksum') or 'unknown')[:12]}…)" for name, d in datasets.items())


def _provenance_rows(summary: dict) -> list[tuple[str, str]]:
    p = summary["provenance"]
    datasets = _datasets(summary)
    several = len(datasets) > 1
    rows = [
        ("suite", p.get("suite")),
        ("command", p.get("command")),
        ("created", p.get("created")),
        ("vgbench", p.get("vgbench_version")),
        ("git sha", p.get("git_sha")),
    ]
    for name, data in datasets.items() or [("", {})]:
        rows += [
            (
                f"data ({name})" if several else "data",
                ", ".join(
                    f"{k} {data[k]}"
                    for k in ("name", "source", "n_train", "n_test", "standard")
                    if data.get(k) is not None
                ),
            ),
            (f"data checksum ({name})" if several else "data checksum", data.get("checksum")),
        ]
    rows += [
        ("backend", backends_text(p.get("backends") or {})),
        ("packages", ", ".join(f"{k} {v}" for k, v in sorted((p.get("packages") or {}).items()))),
        ("platform", ", ".join(f"{k} {v}" for k, v in sorted((p.get("platform") or {}).items()))),
    ]
    return [(k, "unknown" if v in (None, "") else str(v)) for k, v in rows]


# --------------------------------------------------------------------------- #
# Markdown
# --------------------------------------------------------------------------- #


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(summary: dict) -> str:
    """summary.md: claims, provenance, budget, findings, the ranked table, figures."""
    lines = ["# vgbench report", ""]
    lines += _markdown_claims(summary)
    lines += ["## Provenance", ""]
    lines += [f"- **{k}**: {_md_cell(v)}" for k, v in _provenance_rows(summary)]
    lines += ["", "## Budget", "", summary["budget"]["text"], ""]
    lines += ["## Findings", ""]
    lines += [f"{i}. {f['text']}" for i, f in enumerate(summary["findings"], 1)] or ["- No runs."]
    lines += ["", "## Pairs, best first", ""]
    cols = pair_columns(summary)
    lines.append("| " + " | ".join(h for h, _ in cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for p in summary["pairs"]:
        lines.append("| " + " | ".join(_md_cell(f(p)) for _, f in cols) + " |")
    lines += [
        "",
        table_note(summary),
        "",
        "## Figures",
        "",
    ]
    for fig in summary["figures"]:
        first = next((f for f in fig["files"] if f.endswith(".png")), fig["files"][0] if fig["files"] else "")
        lines += [f"### {fig['title']}", ""]
        if first.endswith(".png"):
            lines += [f"![{fig['title']}]({first})", ""]
        lines += [fig["caption"], "", "Files: " + ", ".join(fig["files"]), ""]
    if summary["skipped_figures"]:
        lines += ["## Skipped figures", ""]
        lines += [f"- {s['title']} (`{s['name']}`): {s['reason']}" for s in summary["skipped_figures"]]
        lines.append("")
    return "\n".join(lines)


def _markdown_claims(summary: dict) -> list[str]:
    """The Claims section of summary.md: a table, then each claim's statement, rule, result and figure."""
    claims = summary["claims"]
    lines = ["## Claims", ""]
    if summary.get("claims_note"):
        return lines + [summary["claims_note"], ""]
    lines += [claim_counts_text(claims) + ".", ""]
    lines += ["| claim | source | verdict | key numbers | budget |", "|---|---|---|---|---|"]
    for c in claims:
        numbers = _flat_key_numbers(c) if not c.get("missing") else c["summary"]
        cells = [c["id"], c["source"], f"**{c['verdict']}**", numbers, c.get("budget_text") or ""]
        lines.append("| " + " | ".join(_md_cell(x) for x in cells) + " |")
    lines.append("")
    titles = _figure_titles(summary)
    for c in claims:
        lines += [f"### {c['id']}: {c['verdict']}", "", f"{c['statement']} *({c['source']})*", ""]
        lines += [f"- **Rule:** {c['rule']}", f"- **Result:** {c['summary']}"]
        fig = c.get("figure")
        if fig and fig.get("files"):
            png = next((f for f in fig["files"] if f.endswith(".png")), fig["files"][0])
            lines.append(f"- **Figure:** [{png}]({png})")
        related = [f"{titles[n]} ({n}.png)" for n in c.get("related_figures") or [] if n in titles]
        if related:
            lines.append("- **See also:** " + ", ".join(related))
        lines.append("")
    rows = summary.get("best_learning_rates") or []
    if rows:
        lines += ["### Best learning rate per configuration", ""]
        lines += ["| configuration | best lr | median accuracy (seeds' min–max) | seeds | median by learning rate |"]
        lines += ["|---|---|---|---|---|"]
        for r in rows:
            acc = _acc_range(r)
            best = text.MISSING if r["best_learning_rate"] is None else f"{r['best_learning_rate']:g}"
            cells = [r["configuration"], best, acc, str(r["n_seeds"]), r["text"]]
            lines.append("| " + " | ".join(_md_cell(x) for x in cells) + " |")
        lines.append("")
    return lines


def _acc_range(r: dict) -> str:
    m, lo, hi = r.get("median_accuracy"), r.get("min_accuracy"), r.get("max_accuracy")
    if m is None:
        return text.MISSING
    spread = f" ({lo:.3f}–{hi:.3f})" if lo is not None and hi is not None and (r.get("n_seeds") or 0) >= 2 else ""
    return f"{m:.3f}{spread}"


# --------------------------------------------------------------------------- #
# HTML
# --------------------------------------------------------------------------- #

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; max-height: 32em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.92em; color: #444; max-width: 60em; }
.flag { color: #a40000; } .muted { color: #666; } code { font-size: 0.9em; }
.badge { display: inline-block; padding: 0.05em 0.55em; border-radius: 0.8em; font-size: 0.85em; font-weight: 600;
         color: #fff; white-space: nowrap; }
.badge.pass { background: #1a7f37; } .badge.fail { background: #b00000; } .badge.inconclusive { background: #8a6d00; }
table.claims td { max-width: 26em; } table.claims td.numbers { font-size: 0.92em; overflow-wrap: anywhere; }
.claim { display: flex; flex-wrap: wrap; gap: 0.4em 1.4em; border-top: 1px solid #eee; padding-top: 0.6em;
         margin-top: 0.8em; }
.claim .text { flex: 1 1 20em; min-width: 18em; } .claim figure { flex: 0 1 auto; margin: 0; max-width: 820px; }
.claim h3 { margin: 0.2em 0 0.3em; font-size: 1.05em; } .claim p { margin: 0.3em 0; font-size: 0.93em; }
table.pairs { font-size: 0.8em; } table.pairs td.pair { max-width: 17em; overflow-wrap: anywhere; }
table.pairs td.flags { max-width: 13em; } table.pairs details summary { cursor: pointer; }
ol.findings li { margin: 0.35em 0; }
"""


def html_pair_columns(summary: dict) -> list[tuple[str, str, callable]]:
    """(header, cell class, row → HTML) of the page's ranked table: few columns, so status and flags show at 1,400 px.

    The pair is one cell; each signal's factor sits with its prediction, and
    each gradient column with its value at step 0 and at the end; the flags
    are short, with their words behind a click.
    """
    e = html.escape
    extra = [k for k in summary["shown_keys"] if k not in text.CORE_KEYS]
    # Keys the pair shares with the report's slice go without saying (the slice is named above the table).
    main = {k: v for k, v in (summary.get("main_slice") or {}).items() if k != "text"}
    pairs = summary["pairs"]
    dead, sat = _fraction_column(pairs, Q.DEAD_FRACTION), _fraction_column(pairs, Q.SATURATED_FRACTION)

    def q(p, name):
        return text.cell(tables.PAIR_QUANTITIES[name], p[name], p.get(f"{name}_lo"), p.get(f"{name}_hi"))

    def with_theory(p, signal):
        m, t = q(p, f"{signal}_factor_init"), p.get(f"predicted_{signal}_factor")
        return e(m) + ("" if t is None else f' <span class="muted">({t:.3g})</span>')

    def flags(p):
        short = e(text.join_flags(p["flags"])) or ""
        words = p.get("flag_words") or []
        if not words:
            return short
        return f"<details><summary>{short}</summary>{e('; '.join(words))}</details>"

    return [
        ("#", "num", lambda p: str(p["rank"])),
        ("pair", "pair", lambda p: e(text.pair_label(p, [k for k in extra if k not in main or p.get(k) != main[k]]))),
        ("seeds", "num", lambda p: str(p["n_seeds"])),
        ("test accuracy", "num", lambda p: e(q(p, "test_accuracy"))),
        ("backward ×/layer (theory)", "num", lambda p: with_theory(p, "backward")),
        ("forward ×/layer (theory)", "num", lambda p: with_theory(p, "forward")),
        ("grad ×/layer step 0 → end", "num", lambda p: e(f"{q(p, 'grad_factor_init')} → {q(p, 'grad_factor_final')}")),
        ("first/last step 0 → end", "num", lambda p: e(f"{q(p, 'grad_ratio_init')} → {q(p, 'grad_ratio_final')}")),
        ("dead / saturated", "num", lambda p: e(f"{q(p, dead)} / {q(p, sat)}")),
        ("status", "", lambda p: e(p["status"])),
        ("flags", "flags flag", flags),
    ]


def _html_claims(summary: dict, images: dict) -> list[str]:
    """The Claims section of index.html: a table of verdicts, then each claim with its figure."""
    e = html.escape
    claims = summary["claims"]
    parts = ['<h2 id="claims">Claims</h2>']
    if summary.get("claims_note"):
        return parts + [f"<p>{e(summary['claims_note'])}</p>"]
    parts.append(
        f"<p>{e(claim_counts_text(claims))}. Each claim is decided by its stated rule on this directory's "
        "runs; details and figures below the table.</p>"
    )
    parts.append(
        '<table class="claims"><thead><tr><th>claim</th><th>source</th><th>verdict</th>'
        "<th>key numbers</th><th>budget</th></tr></thead><tbody>"
    )
    for c in claims:
        if c.get("missing"):
            numbers = e(c["summary"])
        else:
            numbers = "<br>".join(f"{e(k)}: <b>{e(v)}</b>" for k, v in c.get("key_numbers") or []) or text.MISSING
        parts.append(
            f'<tr><td><a href="#claim-{e(c["id"])}">{e(c["id"])}</a></td><td>{e(c["source"])}</td>'
            f'<td><span class="badge {e(c["verdict"])}">{e(c["verdict"])}</span></td>'
            f'<td class="numbers">{numbers}</td><td>{e(c.get("budget_text") or "")}</td></tr>'
        )
    parts.append("</tbody></table>")
    titles = _figure_titles(summary)
    for c in claims:
        parts.append(f'<div class="claim" id="claim-{e(c["id"])}"><div class="text">')
        parts.append(f'<h3>{e(c["id"])} <span class="badge {e(c["verdict"])}">{e(c["verdict"])}</span></h3>')
        parts.append(f'<p>{e(c["statement"])} <span class="muted">({e(c["source"])})</span></p>')
        parts.append(f"<p><b>Rule:</b> {e(c['rule'])}</p>")
        parts.append(f"<p><b>Result:</b> {e(c['summary'])}</p>")
        related = [f'<a href="#{e(n)}">{e(titles[n])}</a>' for n in c.get("related_figures") or [] if n in titles]
        if related:
            parts.append("<p><b>See also:</b> " + ", ".join(related) + "</p>")
        if c.get("evidence") and not c.get("missing"):
            rows = "".join(
                f"<tr><th>{e(k)}</th><td>{e(verdicts.value_text(k, v))}</td></tr>" for k, v in c["evidence"].items()
            )
            parts.append(f"<details><summary>All {len(c['evidence'])} numbers</summary><table>{rows}</table></details>")
        parts.append("</div>")
        fig = c.get("figure")
        png = images.get(fig["name"]) if fig else None
        if png:
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img alt="{e(c["id"])}" src="data:image/png;base64,{b64}"></figure>')
        parts.append("</div>")
    rows = summary.get("best_learning_rates") or []
    if rows:
        parts.append(
            f"<details><summary>Best learning rate per configuration ({len(rows)} configurations, "
            "protocol best_lr)</summary>"
        )
        parts.append(
            '<div class="scroll"><table><thead><tr><th>configuration</th><th>best lr</th>'
            "<th>median accuracy (seeds' min–max)</th><th>seeds</th><th>median by learning rate</th>"
            "</tr></thead><tbody>"
        )
        for r in rows:
            best = text.MISSING if r["best_learning_rate"] is None else f"{r['best_learning_rate']:g}"
            parts.append(
                f'<tr><td>{e(r["configuration"])}</td><td class="num">{e(best)}</td>'
                f'<td class="num">{e(_acc_range(r))}</td><td class="num">{r["n_seeds"]}</td>'
                f"<td>{e(r['text'])}</td></tr>"
            )
        parts.append("</tbody></table></div></details>")
    return parts


def render_html(summary: dict, images: dict) -> str:
    """index.html: the claims first, then the summary, with every figure embedded as base64 PNG.

    Args:
        summary: the dict of `summary_dict`.
        images: {figure name: PNG bytes}, the claims' figures included.
    """
    e = html.escape
    prov = summary["provenance"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>vgbench report: {e(str(prov.get('suite') or ''))}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>vgbench report</h1>",
        f'<p class="muted">Suite <b>{e(str(prov.get("suite")))}</b>, '
        f"results in <code>{e(summary['results_dir'])}</code>; "
        f"git {e(str(prov.get('git_sha') or 'unknown'))}, "
        f"backend {e(' + '.join(sorted(prov.get('backends') or {})) or 'unknown')}, "
        f"data {e(data_text(summary) or 'unknown')}; "
        '<a href="#provenance">full provenance</a></p>',
        *_html_claims(summary, images),
        "<h2>Findings</h2>",
        '<ol class="findings">',
        *[f"<li>{e(f['text'])}</li>" for f in summary["findings"]],
        "</ol>",
        "<h2>Budget</h2>",
        f"<p>{e(summary['budget']['text'])}</p>",
        "<h2>Pairs, best first</h2>",
        f'<p class="muted">Other settings as in the report\'s slice ({e(summary["main_slice"].get("text", ""))}) '
        "unless the pair names them. Click a pair's flags for their words.</p>",
        '<div class="scroll"><table class="pairs"><thead><tr>',
    ]
    cols = html_pair_columns(summary)
    parts += [f"<th>{e(h)}</th>" for h, _, _ in cols]
    parts.append("</tr></thead><tbody>")
    for p in summary["pairs"]:
        cells = [f'<td class="{c}">{f(p)}</td>' if c else f"<td>{f(p)}</td>" for _, c, f in cols]
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts += [
        "</tbody></table></div>",
        f'<p class="muted">{e(table_note(summary))}</p>',
        "<h2>Figures</h2>",
    ]
    for fig in summary["figures"]:
        png = images.get(fig["name"])
        parts.append(f'<figure id="{e(fig["name"])}"><h3>{e(fig["title"])}</h3>')
        if png:
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(f'<img alt="{e(fig["title"])}" src="data:image/png;base64,{b64}">')
        parts.append(f"<figcaption>{e(fig['caption'])}</figcaption></figure>")
    if summary["skipped_figures"]:
        parts += ["<h2>Skipped figures</h2>", "<ul>"]
        parts += [
            f"<li>{e(s['title'])} (<code>{e(s['name'])}</code>): {e(s['reason'])}</li>"
            for s in summary["skipped_figures"]
        ]
        parts.append("</ul>")
    parts += ['<h2 id="provenance">Provenance</h2>', "<table>"]
    parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _provenance_rows(summary)]
    parts += ["</table>", "</body></html>", ""]
    return "\n".join(parts)
