"""The report of a results directory: figures, summary.md, summary.json, index.html.

Usage::

    from vgbench.bench.report import build_report
    index = build_report("results/", formats=("png", "svg"))

or ``vgbench report results/ [--out-dir DIR] [--format png,svg,pdf]``.

Modules: `tables` (long-form statistics), `findings` (the conclusions, as
data), `text` (how numbers and pairs are written), `figures` (drawing),
`document` (the written summaries), `build` (putting them together). Importing this
package stays cheap (no matplotlib, pandas or TensorFlow) because the
command line imports it to list its options.
"""

from __future__ import annotations

__all__ = ["add_arguments", "build_report", "run"]


def __getattr__(name):
    # Loaded on first use: plotting libraries are slow to import.
    if name == "build_report":
        from vgbench.bench.report.build import build_report

        return build_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_arguments(parser) -> None:
    """Adds the options of `vgbench report` to an argparse parser."""
    parser.add_argument("results_dir", metavar="OUT", help="results directory written by `vgbench run --out OUT`")
    parser.add_argument(
        "--out-dir", metavar="DIR", default=None, help="where to write the report (default: OUT/report)"
    )
    parser.add_argument(
        "--format",
        dest="formats",
        metavar="LIST",
        default="png",
        help="comma list of figure formats among png, svg, pdf (default: png; index.html always embeds PNG)",
    )


def run(args) -> int:
    """`vgbench report`: builds the report and prints where it is."""
    import json

    from vgbench.bench.report.build import build_report

    index = build_report(args.results_dir, out_dir=args.out_dir, formats=args.formats)
    with open(index.parent / "summary.json", encoding="utf-8") as f:
        summary = json.load(f)
    drawn, skipped = len(summary["figures"]), len(summary["skipped_figures"])
    print(f"Report: {index} ({drawn} figures, {skipped} skipped; summary in {index.parent / 'summary.md'})")
    return 0
