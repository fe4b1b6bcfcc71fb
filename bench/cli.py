"""The `vgbench` command line: run, list, report, compare.

Bad input is one line on stderr and exit status 2, never a traceback; what
was already computed stays on disk.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import sys
import warnings

from bench.errors import DiskFull, SuiteInterrupted, Terminated, UsageError


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line and exit status 2."""

    def error(self, message):
        raise UsageError(message)


def _split(text: str) -> list[str]:
    """'a,b(c=1, d=2),e' → ['a', 'b(c=1, d=2)', 'e'] (commas inside parentheses kept)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    out.append(cur.strip())
    return [x for x in out if x]


def _numbers(name, kind=int, none_ok=False):
    """Parser of a comma list of numbers for option ``--name``.

    Integers also take ranges (``0-2`` → 0, 1, 2); with ``none_ok``, ``none``
    or ``all`` stands for "no limit".
    """
    what = "integers" if kind is int else "numbers"

    def parse(text):
        vals = []
        for tok in _split(text):
            if none_ok and tok.lower() in ("none", "all"):
                vals.append(None)
            elif kind is int and re.fullmatch(r"\d+-\d+", tok):
                lo, hi = map(int, tok.split("-"))
                vals.extend(range(lo, hi + 1))
            else:
                try:
                    vals.append(kind(tok))
                except ValueError:
                    raise UsageError(f"Argument `--{name}` takes {what} (comma list). Received: {tok!r}") from None
        return vals

    return parse


# field → (option, parser)
_GRID_OPTIONS = {
    "arch": ("--arch", _split),
    "activation": ("--activation", _split),
    "initializer": ("--initializer", _split),
    "depth": ("--depth", _numbers("depth")),
    "width": ("--width", _numbers("width")),
    "fix": ("--fix", _split),
    "optimizer": ("--optimizer", _split),
    "learning_rate": ("--learning-rate", _numbers("learning-rate", float)),
    "batch_size": ("--batch-size", _numbers("batch-size")),
    "epochs": ("--epochs", _numbers("epochs")),
    "max_steps": ("--max-steps", _numbers("max-steps", none_ok=True)),
    "dataset": ("--dataset", _split),
    "preprocessing": ("--preprocessing", _split),
    "train_samples": ("--train-samples", _numbers("train-samples", none_ok=True)),
    "test_samples": ("--test-samples", _numbers("test-samples", none_ok=True)),
    "seed": ("--seed", _numbers("seed")),
    "log_every": ("--log-every", _numbers("log-every")),
    "act_every": ("--act-every", _numbers("act-every")),
}


def _add_run(sub):
    p = sub.add_parser("run", help="run a suite or a grid of runs into a results directory")
    p.add_argument("--suite", help="a shipped suite name or a YAML file; options below override its values")
    for field, (flag, _) in _GRID_OPTIONS.items():
        p.add_argument(flag, dest=field, metavar="LIST", help=f"comma list of {field} values")
    p.add_argument("--seeds", dest="seeds", metavar="LIST", help="comma list or range of seeds, e.g. 0-2 (same as --seed)")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE", help="keep only runs whose field equals one of the values (repeatable; VALUE may be a comma list)")
    p.add_argument("--data", metavar="PATH", help="dataset file (MNIST .npz or IDX directory); default: $VGBENCH_MNIST, the Keras cache, then download")
    p.add_argument("--out", metavar="DIR", default="reports/latest", help="results directory (resumed when it exists; default reports/latest)")
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="parallel runs (default: number of cores; with --executor ray: the cluster's CPUs)")
    p.add_argument("--executor", default="local", help="local (default) or ray")
    p.add_argument("--address", default=None, help="Ray cluster address (auto, ray://HOST:PORT); with --executor ray")
    p.add_argument(
        "--ray-cpus-per-task", type=float, default=1, metavar="N",
        help="CPUs (and TensorFlow threads) of each Ray task (default 1)",
    )
    p.add_argument(
        "--ray-share-data", action=argparse.BooleanOptionalAction, default=True,
        help="ship the driver's dataset to Ray workers through the object store (default), "
        "or let each worker load its own copy",
    )
    p.add_argument(
        "--ray-max-retries", type=int, default=None, metavar="N",
        help="retries of a Ray task whose worker died (default 3)",
    )
    p.add_argument(
        "--wait", action="store_true", help="when another vgbench run writes --out, wait for it instead of failing"
    )
    p.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from bench import suites
    from bench.runner import run_suite

    suite = suites.load_suite(args.suite) if args.suite else suites.Suite(name="custom")
    overrides = {}
    for field, (_, parse) in _GRID_OPTIONS.items():
        value = getattr(args, field)
        if value is not None:
            overrides[field] = parse(value)
    if args.seeds is not None:
        overrides["seed"] = _numbers("seeds")(args.seeds)
    only = {}
    for item in args.only:
        if "=" not in item:
            raise UsageError(f"Argument `--only` takes KEY=VALUE. Received: {item!r}")
        key, value = item.split("=", 1)
        only.setdefault(key.strip().replace("-", "_"), []).extend(_split(value))
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"Argument `--jobs` must be a positive integer. Received: jobs={args.jobs}")
    configs = suites.expand(suite, overrides, only)
    if not configs:
        raise UsageError("No runs selected (check --only and the suite).")
    if args.dry_run:
        for c in configs:
            print(c.run_id)
        print(f"{len(configs)} runs", file=sys.stderr)
        return 0
    ray_options = dict(ray_cpus_per_task=args.ray_cpus_per_task, ray_share_data=args.ray_share_data)
    if args.ray_max_retries is not None:
        ray_options["ray_max_retries"] = args.ray_max_retries
    # SIGTERM (a scheduler's stop, `kill`) ends the run like Ctrl-C: runs in
    # flight are cancelled, finished ones kept, the tables rebuilt.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        summary = run_suite(
            configs,
            args.out,
            jobs=args.jobs,
            data_path=args.data,
            suite=suite.name,
            executor=args.executor,
            address=args.address,
            retry_failed=args.retry_failed,
            progress=not args.no_progress and sys.stderr.isatty(),
            wait=args.wait,
            **ray_options,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    counts = {}
    for s in summary.statuses.values():
        counts[s] = counts.get(s, 0) + 1
    detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing to do"
    print(
        f"{summary.total} runs in {summary.out}: {summary.skipped} already done, {summary.done} ran ({detail}); "
        f"{summary.wall_time_s:.1f}s"
    )
    return 0


def _terminate(signum, frame):
    raise Terminated()


def _add_list(sub):
    p = sub.add_parser("list", help="list activations, initializers, fixes and suites")
    p.add_argument("what", nargs="?", default="all", choices=["all", "activations", "initializers", "fixes", "suites"])
    p.set_defaults(func=cmd_list)


def cmd_list(args) -> int:
    import models
    from bench import suites
    from bench.config import FIXES

    sections = []
    if args.what in ("all", "activations"):
        acts = [models.activations.get(n) for n in models.activations.names()]
        sections.append(("activations", [f"{a.name:<14} {a.family}" for a in acts]))
        aliases = getattr(models.activations, "ALIASES", {})
        if aliases:
            sections[-1][1].append("aliases: " + ", ".join(f"{k}→{v}" for k, v in sorted(aliases.items())))
    if args.what in ("all", "initializers"):
        sections.append(("initializers", list(models.initializers.names())))
        aliases = getattr(models.initializers, "ALIASES", {})
        if aliases:
            sections[-1][1].append("aliases: " + ", ".join(f"{k}→{v}" for k, v in sorted(aliases.items())))
    if args.what in ("all", "fixes"):
        lines = ["none           the baseline"]
        for name, param in FIXES.items():
            lines.append(f"{name:<14} " + (f"{param[0]}={param[1]!r}" if param else ""))
        lines.append("combine with '+', e.g. batchnorm+residual(every=2)")
        sections.append(("fixes", lines))
    if args.what in ("all", "suites"):
        lines = []
        for n in suites.names():
            s = suites.load_suite(n)
            lines.append(f"{n:<10} {len(suites.expand(s)):>4} runs  {s.description}")
        sections.append(("suites", lines))
    for title, lines in sections:
        print(f"{title}:")
        for line in lines:
            print(f"  {line}")
    return 0


def _add_report(sub):
    from bench import report

    p = sub.add_parser("report", help="build the report (figures + summaries) of a results directory")
    report.add_arguments(p)
    p.set_defaults(func=report.run)


def _add_compare(sub):
    from bench import compare

    p = sub.add_parser("compare", help="compare results against a baseline (exit 1 on regressions)")
    compare.add_arguments(p)
    p.set_defaults(func=compare.run)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vgbench", description="Measure the vanishing gradient problem on real data.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _add_run(sub)
    _add_list(sub)
    for add in (_add_report, _add_compare):
        try:
            add(sub)
        except ImportError:  # optional subcommand missing from a partial install
            pass
    return parser


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"vgbench: warning: {str(message).splitlines()[0] if str(message) else category.__name__}\n"


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.formatwarning = _one_line_warning
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"vgbench: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    except SuiteInterrupted as e:
        print(f"vgbench: {e}", file=sys.stderr)
        return 1
    except Terminated:
        print("vgbench: terminated; finished runs are saved, rerun the same command to resume", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("vgbench: interrupted; finished runs are saved, rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as e:
        # A path the user gave that cannot be read or written; a full device
        # is not bad input (exit 1).
        where = e.filename if e.filename is not None else "results"
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"vgbench: {DiskFull(where)}", file=sys.stderr)
            return 1
        print(f"vgbench: error: cannot access {str(where)!r}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
