"""The written report: one summary dict, rendered as JSON, Markdown and HTML.

`summary_dict` gathers the numbers of `bench.report.stats` into plain
JSON-ready values; the three renderers only format that dict, so
``summary.json``, ``summary.md`` and ``index.html`` always agree.
"""

from __future__ import annotations

import base64
import html
import math

import numpy as np
import pandas as pd

from bench.report import stats
from bench.results import write_json_atomic

REPORT_VERSION = 1

# The per-pair quantities written to the summary, in table order.
PAIR_FIELDS = list(stats.PAIR_QUANTITIES)

# What the gradient columns of the ranked table mean (Markdown and HTML).
TABLE_NOTE = (
    "Means over seeds (± half of the 95% interval); gradient factors and ratios are geometric means. "
    "grad factor: by how much the gradient is multiplied per hidden layer on its way to the input; "
    "first/last: first hidden layer's RMS kernel gradient per weight (‖∂L/∂W‖/√|W|) over the last one's."
)


def _jsonable(v):
    """Plain JSON value: NaN/inf become None, numpy scalars Python scalars."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is pd.NA or v is pd.NaT:
        return None
    return v


def summary_dict(results, tables, drawn: list[dict], skipped: list[dict]) -> dict:
    """Everything the written report says, as one JSON-ready dict.

    Keys: ``report_version, results_dir, provenance, budget, main_slice,
    chance_accuracy, pairs`` (ranked list of dicts), ``pair_keys,
    findings, figures, skipped_figures``.
    """
    pairs = tables.pairs
    keys = stats.pair_keys(pairs)
    rows = []
    for r in pairs.to_dict("records"):
        row = {"rank": r["rank"], **{k: r[k] for k in keys}}
        row |= {"n_seeds": r["n_seeds"], "seeds": r["seeds"], "status": r["status"], "flags": r["flags"]}
        row |= {"diverged_step": r["diverged_step"], "error": r["error"]}
        for q in PAIR_FIELDS:
            row[q] = r[q]
            row[f"{q}_lo"] = r[f"{q}_lo"]
            row[f"{q}_hi"] = r[f"{q}_hi"]
        row["run_ids"] = r["run_ids"]
        rows.append(row)
    summary = {
        "report_version": REPORT_VERSION,
        "results_dir": str(results.path),
        "provenance": stats.provenance(results.manifest),
        "budget": stats.budget(results.runs, results.manifest),
        "main_slice": {**tables.main, "text": tables.main_text},
        "chance_accuracy": tables.chance,
        "pair_keys": keys,
        "shown_keys": [*stats.CORE_KEYS, *stats.varying_keys(pairs)],
        "pairs": rows,
        "findings": stats.findings(pairs, tables.sweep, tables.fixes, tables.chance),
        "figures": drawn,
        "skipped_figures": skipped,
    }
    return _jsonable(summary)


def write_json(path, summary: dict) -> None:
    """Writes the summary atomically (no half-written file on interruption).

    Keys keep the summary's order; NaN is refused because `summary_dict`
    already turned missing values into null.
    """
    write_json_atomic(path, summary, sort_keys=False, ensure_ascii=False, allow_nan=False)


# --------------------------------------------------------------------------- #
# Formatting of table cells (shared by Markdown and HTML)
# --------------------------------------------------------------------------- #


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def fmt_accuracy(v, lo=None, hi=None) -> str:
    """'91.2%', or '91.2% ± 1.3' when the interval has width."""
    if _missing(v):
        return "–"
    text = f"{100 * v:.1f}%"
    if not _missing(lo) and not _missing(hi) and hi > lo:
        text += f" ± {100 * (hi - lo) / 2:.1f}"
    return text


def fmt_factor(v) -> str:
    return "–" if _missing(v) else f"{v:.3g}"


def fmt_ratio(v) -> str:
    return "–" if _missing(v) else f"{v:.2e}"


def fmt_fraction(v) -> str:
    return "–" if _missing(v) else f"{v:.2f}"


def fmt_seconds(v) -> str:
    return "–" if _missing(v) else f"{v:.1f}"


def _fraction_column(pairs: list[dict], name: str) -> str:
    """The end-of-training column when any pair has it, else the step-0 one."""
    final = f"{name}_final"
    return final if any(not _missing(p.get(final)) for p in pairs) else f"{name}_init"


def pair_columns(summary: dict) -> list[tuple[str, callable]]:
    """(header, row → cell text) of the ranked table."""
    pairs = summary["pairs"]
    dead = _fraction_column(pairs, "dead_fraction")
    sat = _fraction_column(pairs, "saturated_fraction")
    when = {"final": "end", "init": "step 0"}
    cols = [("rank", lambda p: str(p["rank"]))]
    cols += [(k, (lambda k: lambda p: "–" if p[k] is None else str(p[k]))(k)) for k in summary["shown_keys"]]
    cols += [
        ("seeds", lambda p: str(p["n_seeds"])),
        ("test accuracy", lambda p: fmt_accuracy(p["test_accuracy"], p["test_accuracy_lo"], p["test_accuracy_hi"])),
        ("grad factor (step 0)", lambda p: fmt_factor(p["grad_factor_init"])),
        ("grad factor (end)", lambda p: fmt_factor(p["grad_factor_final"])),
        ("first/last (step 0)", lambda p: fmt_ratio(p["grad_ratio_init"])),
        ("first/last (end)", lambda p: fmt_ratio(p["grad_ratio_final"])),
        (f"dead ({when[dead.rsplit('_', 1)[1]]})", lambda p: fmt_fraction(p[dead])),
        (f"saturated ({when[sat.rsplit('_', 1)[1]]})", lambda p: fmt_fraction(p[sat])),
        ("status", lambda p: p["status"]),
        ("wall time (s)", lambda p: fmt_seconds(p["wall_time_s"])),
        ("flags", lambda p: p["flags"] or ""),
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

_NUMERIC_HEADERS = ("rank", "seeds", "test accuracy", "grad factor", "first/last", "dead", "saturated", "wall time")


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
