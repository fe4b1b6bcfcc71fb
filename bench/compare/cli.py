"""The `vgbench compare` command: its arguments, and running it into Markdown, JSON and JUnit files."""

from __future__ import annotations

import os
from pathlib import Path

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

    A report path that cannot be written (a folder, under a file, in a
    read-only folder) is refused before anything is compared, printed or
    written. Past that check every requested report is attempted, so a file
    that still cannot be written does not cost the others.

    Raises:
        UsageError: bad directories or options, or a report that could not
            be written (the CLI exits with 2).
    """
    tolerances = parse_tolerances(args.tolerance, args.tolerances)
    # A report that cannot be written is bad input: refused before the comparison is printed.
    for path in (args.json, args.junit, args.markdown):
        if path:
            check_writable(path)
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


def check_writable(path) -> None:
    """Refuses a report path that cannot be written: a folder, or under a file or a read-only folder.

    Raises:
        UsageError: naming the path and what is in its way.
    """
    path = Path(path)
    shown = repr(str(path))
    if path.is_dir():
        raise UsageError(f"Cannot write {shown}: it is a folder; give a file name.")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"Cannot write {shown}: {str(parent)!r} is a file, not a folder.")
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"Cannot write {shown}: the folder {str(parent)!r} is not writable.")


def write_report(path, text: str) -> None:
    """Writes a report file atomically (`results.write_text_atomic`).

    Raises:
        UsageError: the file or its directory cannot be written.
    """
    try:
        write_text_atomic(path, text)
    except OSError as e:
        raise UsageError(f"Cannot write {str(path)!r}: {e.strerror or e}") from None
