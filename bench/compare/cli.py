"""The `vgbench compare` command: its arguments, and running it into Markdown, JSON and JUnit files."""

from __future__ import annotations

from vgbench.bench.compare.comparison import compare
from vgbench.bench.compare.render import to_json, to_junit, to_markdown
from vgbench.bench.compare.statistics import DEFAULT_ALPHA
from vgbench.bench.compare.tolerances import DEFAULT_TOLERANCES, parse_tolerances
from vgbench.bench.errors import UsageError
from vgbench.bench.results import write_text_atomic


def add_arguments(parser) -> None:
    """Adds the arguments of `vgbench compare` to an argparse parser."""
    parser.add_argument("baseline", help="results directory of the baseline")
    parser.add_argument("current", help="results directory to check against the baseline")
    parser.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="override one tolerance (repeatable); defaults: "
        + ", ".join(f"{k}={v:g}" for k, v in DEFAULT_TOLERANCES.items()),
    )
    parser.add_argument("--tolerances", metavar="FILE", help="YAML or JSON file of metric: tolerance")
    parser.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help="significance level with >= 3 seeds per side (default 0.05)"
    )
    parser.add_argument("--fail-on-time", action="store_true", help="let a slower wall time fail the comparison")
    parser.add_argument("--markdown", metavar="FILE", help="write the Markdown report here instead of stdout")
    parser.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    parser.add_argument("--junit", metavar="FILE", help="also write the comparison as JUnit XML")


def run(args) -> int:
    """Runs `vgbench compare`; returns the exit status (1 on a regression).

    Every requested report is attempted, so a file that cannot be written
    does not cost the others.

    Raises:
        UsageError: bad directories or options, or a report that could not
            be written (the CLI exits with 2).
    """
    tolerances = parse_tolerances(args.tolerance, args.tolerances)
    comparison = compare(args.baseline, args.current, tolerances, args.alpha, fail_on_time=args.fail_on_time)
    errors = []
    for path, text in ((args.json, to_json), (args.junit, to_junit), (args.markdown, to_markdown)):
        if path:
            try:
                write_report(path, text(comparison))
            except UsageError as e:
                errors.append(e)
    if not args.markdown:
        print(to_markdown(comparison), end="")
    if errors:
        raise errors[0]
    return comparison.exit_code


def write_report(path, text: str) -> None:
    """Writes a report file atomically (`results.write_text_atomic`).

    Raises:
        UsageError: the file or its directory cannot be written.
    """
    try:
        write_text_atomic(path, text)
    except OSError as e:
        raise UsageError(f"Cannot write {str(path)!r}: {e.strerror or e}") from None
