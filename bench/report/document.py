"""The written report: one summary dict, rendered as JSON, Markdown and HTML.

`summary_dict` gathers the tables of `bench.report.tables` and the findings
of `bench.report.findings` into plain JSON-ready values; the three renderers
only format that dict, so ``summary.json``, ``summary.md`` and
``index.html`` always agree.
"""

from __future__ import annotations

import base64
import html

from bench.report import findings, predictions, tables, text
from bench.results import write_json_atomic
from bench.utils import json_safe

REPORT_VERSION = 2

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

    Keys: ``report_version, results_dir, provenance, budget, main_slice,
    chance_accuracy, pairs`` (ranked list of dicts), ``pair_keys,
    findings, figures, skipped_figures``. Flags stay lists.

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
    summary = {
        "report_version": REPORT_VERSION,
        "results_dir": str(results.path),
        "provenance": provenance(results.manifest),
        "budget": {**budget, "text": text.budget_text(budget)},
        "main_slice": {**t.main, "text": t.main_text},
        "chance_accuracy": t.chance,
        "pair_keys": keys,
        "shown_keys": [*text.CORE_KEYS, *tables.varying_keys(pairs)],
        "pairs": rows,
        "theory": theory_section(t),
        "findings": findings.written(pairs, t.sweep, t.fixes, t.chance, inputs),
        "figures": drawn,
        "skipped_figures": skipped,
    }
    return json_safe(summary)


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
        _fraction_column(pairs, "dead_fraction"),
        _fraction_column(pairs, "saturated_fraction"),
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


def _provenance_rows(summary: dict) -> list[tuple[str, str]]:
    p = summary["provenance"]
    data = p.get("data") or {}
    rows = [
        ("suite", p.get("suite")),
        ("command", p.get("command")),
        ("created", p.get("created")),
        ("vgbench", p.get("vgbench_version")),
        ("git sha", p.get("git_sha")),
        (
            "data",
            ", ".join(
                f"{k} {data[k]}" for k in ("name", "source", "n_train", "n_test", "standard") if data.get(k) is not None
            ),
        ),
        ("data checksum", data.get("checksum")),
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
    """summary.md: provenance, budget, findings, the ranked table, figures."""
    lines = ["# vgbench report", ""]
    lines += ["## Provenance", ""]
    lines += [f"- **{k}**: {_md_cell(v)}" for k, v in _provenance_rows(summary)]
    lines += ["", "## Budget", "", summary["budget"]["text"], ""]
    lines += ["## Findings", ""]
    lines += [f"- {f['text']}" for f in summary["findings"]] or ["- No runs."]
    lines += ["", "## Pairs, best first", ""]
    cols = pair_columns(summary)
    lines.append("| " + " | ".join(h for h, _ in cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for p in summary["pairs"]:
        lines.append("| " + " | ".join(_md_cell(f(p)) for _, f in cols) + " |")
    lines += [
        "",
        TABLE_NOTE,
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
"""

_NUMERIC_HEADERS = (
    "rank", "seeds", "test accuracy", "backward", "forward", "grad factor", "first/last", "dead", "saturated",
    "wall time",
)


def render_html(summary: dict, images: dict) -> str:
    """index.html: the summary with every figure embedded as base64 PNG.

    Args:
        summary: the dict of `summary_dict`.
        images: {figure name: PNG bytes}.
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
        f"<p class=\"muted\">Suite <b>{e(str(prov.get('suite')))}</b>, results in <code>{e(summary['results_dir'])}</code>; "
        f"git {e(str(prov.get('git_sha') or 'unknown'))}, data {e(str((prov.get('data') or {}).get('name') or 'unknown'))} "
        f"(checksum {e(str((prov.get('data') or {}).get('checksum') or 'unknown')[:12])}…); "
        "<a href=\"#provenance\">full provenance</a></p>",
        "<h2>Budget</h2>",
        f"<p>{e(summary['budget']['text'])}</p>",
        "<h2>Findings</h2>",
        "<ul>",
        *[f"<li>{e(f['text'])}</li>" for f in summary["findings"]],
        "</ul>",
        "<h2>Pairs, best first</h2>",
        '<div class="scroll"><table><thead><tr>',
    ]
    cols = pair_columns(summary)
    parts += [f"<th>{e(h)}</th>" for h, _ in cols]
    parts.append("</tr></thead><tbody>")
    for p in summary["pairs"]:
        cells = []
        for h, f in cols:
            cls = ' class="num"' if h.startswith(_NUMERIC_HEADERS) else (' class="flag"' if h == "flags" else "")
            cells.append(f"<td{cls}>{e(f(p))}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts += [
        "</tbody></table></div>",
        f"<p class=\"muted\">{e(TABLE_NOTE)}</p>",
        "<h2>Figures</h2>",
    ]
    for fig in summary["figures"]:
        png = images.get(fig["name"])
        parts.append(f"<figure id=\"{e(fig['name'])}\"><h3>{e(fig['title'])}</h3>")
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
