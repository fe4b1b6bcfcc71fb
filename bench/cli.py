"""The `vgbench` command line: run, list, report, compare, theory, diagnose.

Bad input is one line on stderr and exit status 2, never a traceback; what
was already computed stays on disk.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import os
import re
import signal
import sys
import time
import warnings

import numpy as np

from vgbench.bench.errors import DiskFull, SuiteInterrupted, Terminated, UsageError
from vgbench.models.registry import ECHO_LIMIT, shorten

# A comma list expands to at most this many values (a range like 0-999999999
# would otherwise fill the memory before anything is checked).
MAX_LIST_VALUES = 100_000
# Above this many runs, `vgbench run` asks before starting (or wants --yes).
CONFIRM_RUNS = 10_000
# `vgbench theory --depth` goes up to this many hidden layers (0.7 s on one core).
MAX_THEORY_DEPTH = 10_000


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line and exit status 2."""

    def error(self, message):
        # argparse echoes what it received in quotes; a 100 kB word stays short.
        long_quoted = rf"'([^'\n]{{{ECHO_LIMIT + 1},}})'"
        raise UsageError(re.sub(long_quoted, lambda m: shorten(m.group(0)), message))


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
                if lo > hi:
                    raise UsageError(
                        f"Argument `--{name}` has the empty range {shorten(repr(tok))} ({lo} > {hi}); "
                        "write LOW-HIGH with LOW <= HIGH."
                    )
                # Counted before expanding: range(0, 10**9) in a list would not fit.
                if len(vals) + hi - lo + 1 > MAX_LIST_VALUES:
                    raise UsageError(
                        f"Argument `--{name}` expands to {len(vals) + hi - lo + 1:,} values, more than "
                        f"{MAX_LIST_VALUES:,}. Received: {shorten(repr(tok))}"
                    )
                vals.extend(range(lo, hi + 1))
            else:
                try:
                    vals.append(kind(tok))
                except ValueError:
                    raise UsageError(
                        f"Argument `--{name}` takes {what} (comma list). Received: {shorten(repr(tok))}"
                    ) from None
            if len(vals) > MAX_LIST_VALUES:
                raise UsageError(f"Argument `--{name}` has more than {MAX_LIST_VALUES:,} values.")
        return vals

    return parse


# field → (option, parser)
_GRID_OPTIONS = {
    "arch": ("--arch", _split),
    "activation": ("--activation", _split),
    "initializer": ("--initializer", _split),
    "bias_initializer": ("--bias-initializer", _split),
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

# What each grid option takes, for `vgbench run --help`; every one is a comma list.
_GRID_HELP = {
    "arch": ("{mlp,cnn}", "mlp (dense layers) or cnn (a small convolutional net)"),
    "activation": (
        "LIST",
        "activation names, parameters in parentheses: relu,leaky_relu(negative_slope=0.1) (`vgbench list activations`)",
    ),
    "initializer": (
        "LIST",
        "kernel initializer names: he_normal,random_normal(stddev=0.01) (`vgbench list initializers`)",
    ),
    "bias_initializer": ("LIST", "bias initializer names, as for --initializer: zeros,random_normal(stddev=0.2236)"),
    "depth": ("LIST", "hidden layers; integers or ranges LOW-HIGH: 5,10,20 or 2-6"),
    "width": ("LIST", "units per hidden layer (filters for cnn)"),
    "fix": (
        "LIST",
        "none, batchnorm, batchnorm_after, layernorm, residual(every=2), clipnorm(norm=1.0), dropout(rate=0.1); "
        "combine with +: batchnorm+residual(every=2) (`vgbench list fixes`)",
    ),
    "optimizer": ("LIST", "sgd, momentum (SGD with momentum 0.9) or adam"),
    "learning_rate": ("LIST", "numbers in (0, 10]"),
    "batch_size": ("LIST", "examples per optimizer step"),
    "epochs": ("LIST", "evaluation periods; with --max-steps, the steps are split into this many"),
    "max_steps": (
        "LIST",
        "optimizer steps in all; 0 = measure at initialization only (no update); none = --epochs passes "
        "over the training set",
    ),
    "dataset": (
        "LIST",
        "mnist, fashion_mnist, gaussian (generated N(0, 1) inputs) or tfds:NAME (a TFDS dataset prepared locally)",
    ),
    "preprocessing": ("LIST", "scale (pixels to [0, 1]) or standardize (then mean 0, variance 1)"),
    "train_samples": ("LIST", "use the first N training examples; none = all"),
    "test_samples": ("LIST", "use the first N test examples; none = all"),
    "seed": ("LIST", "seeds, e.g. 0-2 or 0,5 (one run per seed); --seeds is the same option"),
    "log_every": ("LIST", "record gradient norms and signals every N steps"),
    "act_every": ("LIST", "record activation statistics, kernel norms and update ratios every N steps"),
}


class _AsTyped(argparse.Action):
    """Stores the value and the flag as typed (``--seeds`` or ``--seed``), so that an error names the latter."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_flag", option_string)


def _adhoc_defaults() -> dict:
    """The value of every RunConfig field in an ad-hoc `vgbench run`: the default suite's, else RunConfig's."""
    import dataclasses

    from vgbench.bench import suites
    from vgbench.bench.config import RunConfig

    values = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    try:
        values.update(suites.default_settings())
    except UsageError:  # a damaged installation; the run itself reports it
        pass
    return values


def _shown(value) -> str:
    return "none" if value is None else str(value)


def _add_run(sub):
    p = sub.add_parser(
        "run",
        help="run a suite or a grid of runs into a results directory",
        description="Run a suite or a grid of runs into a results directory. Every grid option takes a comma "
        "list, and the grid is the product of the lists. Without --suite, a value not given is that of the "
        "`default` suite (shown as default), so that an ad-hoc run compares with the shipped report; with "
        "--suite, the suite's values apply and the options override them.",
    )
    p.add_argument(
        "--suite",
        metavar="NAME|FILE",
        help="a shipped suite (smoke, ci, default, claims, fixes, full; `vgbench list suites`) or a YAML file; "
        "the options below override its values",
    )
    defaults = _adhoc_defaults()
    for field, (flag, _) in _GRID_OPTIONS.items():
        metavar, text = _GRID_HELP[field]
        flags = (flag, "--seeds") if field == "seed" else (flag,)
        p.add_argument(
            *flags, dest=field, metavar=metavar, action=_AsTyped, help=f"{text} (default: {_shown(defaults[field])})"
        )
    _add_backend_option(p)
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep only runs whose field KEY (a grid option's name: activation, depth, ...) equals one of the values "
        "(repeatable; VALUE may be a comma list; default: keep all)",
    )
    p.add_argument(
        "--data",
        metavar="PATH",
        help="dataset file: an .npz (x_train, y_train, x_test, y_test) or a directory of IDX files; for tfds:NAME "
        "the TFDS data directory (default: $VGBENCH_MNIST, the Keras cache, then the download)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="reports/latest",
        help="results directory (resumed when it exists; default: reports/latest)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="parallel runs (default: the number of cores; with --executor ray: the cluster's CPUs)",
    )
    p.add_argument(
        "--executor",
        default="local",
        metavar="{local,ray}",
        help="where runs execute: local (worker processes on this machine) or ray (Ray tasks) (default: local)",
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="ADDRESS",
        help="Ray cluster address: auto, HOST:6379 or ray://HOST:10001 (default: $RAY_ADDRESS, else a private "
        "local Ray); with --executor ray",
    )
    p.add_argument(
        "--ray-cpus-per-task",
        type=float,
        default=1,
        metavar="N",
        help="CPUs (and TensorFlow threads) of each Ray task (default 1)",
    )
    p.add_argument(
        "--ray-share-data",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ship the driver's dataset to Ray workers through the object store (default), "
        "or let each worker load its own copy",
    )
    p.add_argument(
        "--ray-max-retries",
        type=int,
        default=None,
        metavar="N",
        help="retries of a Ray task whose worker died (default 3)",
    )
    p.add_argument(
        "--population",
        default=None,
        metavar="{on,off}",
        help="on: train the runs that differ only in seed, learning rate and initializers as one vmapped JAX "
        "population each; off: one run at a time (default: on for jax, off for tensorflow)",
    )
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        default=None,
        help="also write each run's per-layer quantities and gradient histograms as TensorBoard events "
        "into DIR/RUN_ID (`tensorboard --logdir DIR`)",
    )
    p.add_argument(
        "--wait", action="store_true", help="when another vgbench run writes --out, wait for it instead of failing"
    )
    p.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--yes", action="store_true", help=f"run more than {CONFIRM_RUNS:,} runs without asking")
    p.add_argument(
        "--allow-nonstandard-data",
        action="store_true",
        help="use a data file that holds another dataset (or the standard layout with other contents); "
        "recorded in the manifest",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)


def _add_backend_option(p):
    from vgbench.bench import backend

    p.add_argument(
        "--backend",
        metavar="{" + ",".join(backend.BACKENDS) + "}",
        default=None,
        help="the Keras backend to train on, one per invocation; a TensorFlow and a JAX run of one config are "
        f"two runs (default: ${backend.ENV} when set, else {backend.DEFAULT_BACKEND}; "
        f"now: {backend.default_backend()})",
    )


def _select_backend(args) -> str:
    """Checks --backend (or $KERAS_BACKEND) and makes this process and its workers use it, before Keras loads."""
    from vgbench.bench import backend

    return backend.select(backend.resolve(args.backend))


def cmd_run(args) -> int:
    # First: a bad backend is refused before any work, and Keras reads the variable when first imported.
    backend = _select_backend(args)
    from vgbench.bench import data, sizing, suites
    from vgbench.bench.runner import kept_workers, rebuild_tables, run_suite

    suite = suites.load_suite(args.suite) if args.suite else suites.adhoc_suite()
    overrides = {}
    for field, (flag, parse) in _GRID_OPTIONS.items():
        value = getattr(args, field)
        if value is not None:
            typed = getattr(args, f"{field}_flag", None) or flag
            overrides[field] = parse(value) if typed == flag else _numbers(typed.lstrip("-"))(value)
    overrides["backend"] = [backend]
    only = {}
    for item in args.only:
        if "=" not in item:
            raise UsageError(f"Argument `--only` takes KEY=VALUE. Received: {shorten(repr(item))}")
        key, value = item.split("=", 1)
        only.setdefault(key.strip().replace("-", "_"), []).extend(_split(value))
    if args.executor not in ("local", "ray"):
        raise UsageError(f"Unknown executor {shorten(repr(args.executor))}. Valid executors: local, ray")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"Argument `--jobs` must be a positive integer. Received: jobs={args.jobs}")
    population = _population_flag(args.population, backend)
    # Without --only the grid's size is the number of runs, known before the
    # (slow, for a large grid) expansion; with it, only the expansion tells.
    ask = not (args.yes or args.dry_run)
    if ask and not only and suites.grid_size(suite, overrides) > CONFIRM_RUNS:
        _confirm(suites.grid_size(suite, overrides))
        ask = False
    configs = suites.expand(suite, overrides, only)
    if not configs:
        raise UsageError("No runs selected (check --only and the suite).")
    sizing.check_fits(configs)
    if args.dry_run:
        for c in configs:
            print(c.run_id)
        more = ""
        if suite.protocol == "best_lr":
            from vgbench.bench.protocol import MAX_EXTENSIONS

            more = (
                f" in the first round; the best_lr protocol may then add, per configuration whose best learning "
                f"rate is at an edge of its grid, its seeds one decade beyond that edge (at most {MAX_EXTENSIONS} "
                "decades)"
            )
        print(f"{len(configs)} runs{more}", file=sys.stderr)
        return 0
    if ask and len(configs) > CONFIRM_RUNS:
        _confirm(len(configs))
    # Everything about the data is checked here, in this process, before any
    # executor starts: the same refusal whatever --jobs and --executor say.
    datasets = {}
    for name in sorted({c.dataset for c in configs}):
        datasets[name] = data.load_dataset(name, args.data, allow_nonstandard=args.allow_nonstandard_data)
    for key in sorted({(c.dataset, c.train_samples, c.test_samples) for c in configs}, key=str):
        data.check_samples(datasets[key[0]], key[1], key[2])
    ray_options = dict(ray_cpus_per_task=args.ray_cpus_per_task, ray_share_data=args.ray_share_data)
    if args.ray_max_retries is not None:
        ray_options["ray_max_retries"] = args.ray_max_retries
    # Worker processes load the data themselves and inherit the environment.
    saved = os.environ.get(data.ALLOW_NONSTANDARD_ENV)
    if args.allow_nonstandard_data:
        os.environ[data.ALLOW_NONSTANDARD_ENV] = "1"
    # SIGTERM (a scheduler's stop, `kill`) ends the run like Ctrl-C: runs in
    # flight are cancelled, finished ones kept, the tables rebuilt.
    previous = signal.signal(signal.SIGTERM, _terminate)
    protocols = _previous_protocols(args.out)
    try:
        with data.reusing({(name, args.data): ds for name, ds in datasets.items()}):
            # The protocol's rounds rebuild the top-level tables once, after the last round.
            rounds = suite.protocol == "best_lr"

            def run(configs):
                return run_suite(
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
                    tensorboard_dir=args.tensorboard,
                    population=population,
                    tables=not rounds,
                    **ray_options,
                )

            # The protocol's rounds share their worker processes.
            with kept_workers() if rounds else contextlib.nullcontext():
                summary = run(configs)
                if rounds:
                    from vgbench.bench.protocol import run_extensions

                    # Grids whose best learning rate is at an edge grow by a decade that way (bench.protocol).
                    for more in run_extensions(configs, run, args.out):
                        summary = dataclasses.replace(
                            more,
                            skipped=more.total - summary.done - more.done,
                            done=summary.done + more.done,
                            statuses={**summary.statuses, **more.statuses},
                            wall_time_s=summary.wall_time_s + more.wall_time_s,
                        )
            if rounds:
                t = time.perf_counter()
                rebuild_tables(args.out, wait=args.wait)
                summary = dataclasses.replace(summary, wall_time_s=summary.wall_time_s + time.perf_counter() - t)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if saved is None:
            os.environ.pop(data.ALLOW_NONSTANDARD_ENV, None)
        else:
            os.environ[data.ALLOW_NONSTANDARD_ENV] = saved
        _record_protocols(args.out, {**protocols, **({suite.name: suite.protocol} if suite.protocol else {})})
    counts = {}
    for s in summary.statuses.values():
        counts[s] = counts.get(s, 0) + 1
    detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing to do"
    print(
        f"{summary.total} runs in {summary.out}: {summary.skipped} already done, {summary.done} ran ({detail}); "
        f"{summary.wall_time_s:.1f}s"
    )
    return 0


def _population_flag(value, backend: str):
    """--population as True/False/None (None: the backend's default); on TensorFlow only off."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text not in ("on", "off"):
        raise UsageError(f"Argument `--population` must be on or off. Received: population={shorten(repr(value))}")
    if text == "on" and backend != "jax":
        raise UsageError(
            f"Argument `--population` must be off on the {backend} backend (populations train on jax). "
            "Received: population=on"
        )
    return text == "on"


def _previous_protocols(out) -> dict:
    """{suite: protocol} recorded in OUT's manifest by earlier suites run into it ({} when none)."""
    from vgbench.bench import results

    try:
        manifest = results.read_manifest(out) if os.path.isdir(out) else None
    except UsageError:
        return {}  # the run itself reports an unreadable manifest
    protocols = (manifest or {}).get("protocols")
    return dict(protocols) if isinstance(protocols, dict) else {}


def _record_protocols(out, protocols: dict) -> None:
    """Keeps {suite: protocol} in OUT's manifest: each `vgbench run` rewrites the manifest, and several
    suites may share one results directory (`make bench` runs `default` and `claims` into one)."""
    from vgbench.bench import results

    if not protocols:
        return
    try:
        manifest = results.read_manifest(out)
    except UsageError:
        return
    if manifest is None:
        return
    results.write_json_atomic(os.path.join(out, "manifest.json"), {**manifest, "protocols": protocols})


def _confirm(n: int) -> None:
    """Asks on a terminal whether to start `n` runs; refuses elsewhere."""
    if not sys.stdin.isatty():
        raise UsageError(
            f"The selection makes {n:,} runs, more than {CONFIRM_RUNS:,}; pass --yes to run them all, "
            "or narrow it with --only or fewer values."
        )
    answer = input(f"vgbench: start {n:,} runs? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise UsageError(f"{n:,} runs not confirmed; nothing was started.")


def _terminate(signum, frame):
    raise Terminated()


def _add_list(sub):
    p = sub.add_parser("list", help="list activations, initializers, fixes and suites")
    p.add_argument("what", nargs="?", default="all", choices=["all", "activations", "initializers", "fixes", "suites"])
    p.set_defaults(func=cmd_list)


def cmd_list(args) -> int:
    from vgbench import models
    from vgbench.bench import suites
    from vgbench.bench.config import FIX_DESCRIPTIONS, FIXES

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
        lines = [f"{'none':<22} {FIX_DESCRIPTIONS['none']}"]
        for name, param in FIXES.items():
            spec = f"{name}({param[0]}={param[1]!r})" if param else name
            lines.append(f"{spec:<22} {FIX_DESCRIPTIONS[name]}")
        lines.append("combine with '+', e.g. batchnorm+residual(every=2); at most one normalization per run")
        sections.append(("fixes", lines))
    if args.what in ("all", "suites"):
        lines = []
        for n in suites.names():
            s = suites.shipped_suite(n)
            lines.append(f"{n:<10} {len(suites.expand(s)):>4} runs  {s.description}")
        sections.append(("suites", lines))
    for title, lines in sections:
        print(f"{title}:")
        for line in lines:
            print(f"  {line}")
    return 0


def _add_theory(sub):
    p = sub.add_parser(
        "theory", help="mean-field predictions for the MLP at initialization (q, chi, per-layer gradient factor)"
    )
    p.add_argument("--activation", metavar="LIST", help="comma list of activations (default: all registered)")
    p.add_argument("--initializer", metavar="LIST", help="comma list of kernel initializers (default: all registered)")
    p.add_argument(
        "--depth", type=int, default=20, metavar="D", help=f"hidden layers (default 20, at most {MAX_THEORY_DEPTH:,})"
    )
    p.add_argument("--width", type=int, default=128, metavar="W", help="units per hidden layer (default 128)")
    p.add_argument(
        "--bias-variance", type=float, default=0.0, metavar="S", help="variance of the initial biases (default 0)"
    )
    p.add_argument(
        "--input-second-moment",
        type=float,
        default=None,
        metavar="M",
        help="E[x^2] of the preprocessed inputs (default 1.0: standardized inputs, as the default suite uses)",
    )
    p.add_argument("--dataset", default=None, help="compute E[x^2] from this dataset (mnist, fashion_mnist, tfds:NAME)")
    p.add_argument("--data", default=None, metavar="PATH", help="compute E[x^2] from this dataset file")
    p.add_argument(
        "--preprocessing", default=None, help="scale or standardize, for E[x^2] from the data (default: scale)"
    )
    p.add_argument(
        "--train-samples", type=int, default=None, metavar="N", help="first N training examples, for E[x^2] from data"
    )
    p.add_argument(
        "--json", action="store_true", help='print a JSON list, one object per pair (NaN as null, infinity as "inf")'
    )
    p.set_defaults(func=cmd_theory)


def _input_second_moment(args) -> tuple[float, int, str]:
    """(E[x²], input size, where E[x²] comes from) for `vgbench theory`."""
    from vgbench.bench import theory

    from_data = {"--dataset": args.dataset, "--data": args.data, "--preprocessing": args.preprocessing}
    from_data["--train-samples"] = args.train_samples
    asked = [flag for flag, value in from_data.items() if value is not None]
    if args.input_second_moment is not None:
        if asked:
            raise UsageError(f"Argument `--input-second-moment` cannot be combined with {', '.join(asked)}.")
        return args.input_second_moment, theory.INPUT_DIM, "given"
    if not asked:
        return theory.DEFAULT_INPUT_SECOND_MOMENT, theory.INPUT_DIM, "default: standardized inputs"
    from vgbench.bench import data
    from vgbench.bench.config import PREPROCESSINGS

    preprocessing = (args.preprocessing or "scale").strip().lower()
    if preprocessing not in PREPROCESSINGS:
        raise UsageError(
            f"Argument `--preprocessing` must be one of {', '.join(PREPROCESSINGS)}. Received: {args.preprocessing!r}"
        )
    ds = data.load_dataset(args.dataset or "mnist", args.data)
    arrays = data.prepare(ds, preprocessing=preprocessing, train_samples=args.train_samples, test_samples=1)
    input_dim = int(np.prod(ds.image_shape))
    where = f"{ds.name} training images, {preprocessing}, {len(arrays.x_train)} examples"
    return theory.input_second_moment(arrays.x_train), input_dim, where


def cmd_theory(args) -> int:
    import json

    from vgbench import models
    from vgbench.bench import theory

    acts = _split(args.activation) if args.activation is not None else models.activations.names()
    inits = _split(args.initializer) if args.initializer is not None else models.initializers.names()
    if not acts or not inits:
        raise UsageError("Arguments `--activation` and `--initializer` need at least one name each.")
    for flag, value in (("--depth", args.depth), ("--width", args.width)):
        if value < 1:
            raise UsageError(f"Argument `{flag}` must be a positive integer. Received: {value}")
    if args.depth > MAX_THEORY_DEPTH:
        # The recursions keep every layer's moments: a depth of 1e6 takes a minute and 600 MB, 1e8 all memory.
        raise UsageError(
            f"Argument `--depth` must be at most {MAX_THEORY_DEPTH:,} (depth scales of interest are far below). "
            f"Received: depth={args.depth}"
        )
    for flag, value in (("--bias-variance", args.bias_variance), ("--input-second-moment", args.input_second_moment)):
        if value is not None and not 0 <= value < float("inf"):
            raise UsageError(f"Argument `{flag}` must be a non-negative finite number. Received: {value}")
    moment, input_dim, where = _input_second_moment(args)
    try:
        predictions = theory.predict_grid(
            acts,
            inits,
            depth=args.depth,
            width=args.width,
            sigma_b2=args.bias_variance,
            input_second_moment=moment,
            input_dim=input_dim,
        )
    except ValueError as e:  # unknown names (UnknownNameError) and invalid numbers
        raise UsageError(" ".join(str(e).split())) from None
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=1, allow_nan=False))
        return 0
    print(
        f"Mean-field prediction at initialization: MLP {input_dim} -> {args.depth} x {args.width} -> "
        f"{theory.NUM_CLASSES}, bias variance {args.bias_variance:g}, input second moment E[x^2] = {moment:.4g} "
        f"({where})."
    )
    print(
        "factor: per-layer factor of the gradient wrt the pre-activations over the hidden layers (below 1: it "
        "vanishes on its way to the input); fwd factor: the same for their RMS; q*, chi1, depth scale: at the "
        "fixed point of a square hidden layer (q* inf: q grows without bound; none: degenerate, chi does not "
        f"depend on q); critical: |chi1 - 1| <= {theory.CRITICAL_TOLERANCE:g}."
    )
    print()
    print(theory.format_table(predictions))
    print()
    print(theory.finite_width_note(args.width))
    return 0


def _add_diagnose(sub):
    from vgbench.bench import diagnose

    settings = diagnose.defaults()
    p = sub.add_parser(
        "diagnose",
        help="measure a saved Keras model of your own: gradient and signals by layer, at its weights and in training",
        description="Load a saved Keras model (.keras), measure per-layer gradients, backward and forward signals "
        "and dead/saturated units at its current weights (step 0), train it for --steps steps with the same "
        "recording as `vgbench run`, and write a results directory of one run and its report. The model is "
        "compiled with its own compile config (loss, metrics, a fresh copy of its optimizer) unless "
        "--loss/--optimizer/--learning-rate say otherwise; the model file is not changed.",
    )
    p.add_argument("model", metavar="MODEL.keras", help="a model saved with model.save('MODEL.keras')")
    p.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help="mnist, fashion_mnist, tfds:NAME, or npz (your own arrays: --data FILE.npz with x_train, y_train, "
        "x_test, y_test) (default: mnist)",
    )
    p.add_argument(
        "--data",
        metavar="PATH",
        default=None,
        help="the dataset's file: MNIST-like .npz or IDX directory, the TFDS data directory for tfds:NAME, or "
        "your .npz for --dataset npz (default for mnist: $VGBENCH_MNIST, the Keras cache, then the download)",
    )
    p.add_argument(
        "--preprocessing",
        default=None,
        metavar="{scale,standardize,none}",
        help="scale (x/255), standardize (then mean 0, variance 1) or none (the stored values) (default: "
        f"{settings['preprocessing']} for images as in the default suite, none for --dataset npz)",
    )
    p.add_argument(
        "--train-samples",
        default=None,
        metavar="N",
        help=f"use the first N training examples; all = every one (default: {settings.get('train_samples')}, or all)",
    )
    p.add_argument(
        "--test-samples",
        default=None,
        metavar="N",
        help=f"use the first N test examples; all = every one (default: {settings.get('test_samples')}, or all)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help=f"optimizer steps; 0 = measure at the current weights only (default: {settings['max_steps']})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help=f"examples per step and in the step-0 batch (default: {settings['batch_size']})",
    )
    p.add_argument(
        "--log-every",
        type=int,
        default=None,
        metavar="N",
        help=f"record gradient norms and signals every N steps (default: {settings['log_every']})",
    )
    p.add_argument(
        "--act-every",
        type=int,
        default=None,
        metavar="N",
        help=f"record activation statistics every N steps (default: {settings['act_every']})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help=f"seed of the data order and of dropout (default: {settings['seed']})",
    )
    p.add_argument(
        "--loss",
        default=None,
        metavar="SPEC",
        help="a Keras loss instead of the model's own, parameters in parentheses: "
        "'sparse_categorical_crossentropy(from_logits=True)' (needed when the model has no compile config)",
    )
    p.add_argument(
        "--optimizer",
        default=None,
        metavar="NAME",
        help=f"{', '.join(diagnose.OPTIMIZERS)} (momentum: SGD with momentum {diagnose.MOMENTUM:g}) instead of the "
        f"model's own (default: its own; {settings['optimizer']} when it has none)",
    )
    p.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        metavar="LR",
        help=f"a number in (0, 10] (default: the optimizer's own; {settings['learning_rate']:g} with --optimizer "
        "or when the model has none)",
    )
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        default=None,
        help="also write the per-layer quantities and gradient histograms as TensorBoard events into DIR/RUN_ID",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="reports/diagnose",
        help="results directory: new, empty or one of vgbench's (the run is added) (default: reports/diagnose)",
    )
    _add_backend_option(p)
    p.add_argument("--no-report", action="store_true", help="write the tables only, no report")
    p.add_argument("--wait", action="store_true", help="when another vgbench process writes --out, wait for it")
    p.add_argument(
        "--allow-nonstandard-data",
        action="store_true",
        help="use a data file that holds another standard dataset (as for `vgbench run`)",
    )
    p.set_defaults(func=cmd_diagnose)


def _samples(flag, text):
    """--train-samples/--test-samples: a positive integer, or all/none (None)."""
    if text is None or str(text).strip().lower() in ("all", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise UsageError(f"Argument `{flag}` must be a positive integer or all. Received: {shorten(repr(text))}")
    return value


def cmd_diagnose(args) -> int:
    _select_backend(args)
    from pathlib import Path

    from vgbench.bench import data, diagnose

    path = Path(args.model).expanduser()
    if not path.is_file():
        raise UsageError(f"Model file {shorten(repr(str(path)), 200)} does not exist.")
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise UsageError(
            f"Model file {shorten(repr(str(path)), 200)} is not a saved Keras model: expected MODEL.keras "
            "(model.save('MODEL.keras')) or a legacy .h5."
        )
    settings = diagnose.defaults()
    dataset_name = (args.dataset or "mnist").strip()
    own = dataset_name.lower() == diagnose.NPZ_DATASET
    preprocessing = (args.preprocessing or ("none" if own else settings["preprocessing"])).strip().lower()
    if preprocessing not in diagnose.PREPROCESSINGS:
        raise UsageError(
            f"Argument `--preprocessing` must be one of {', '.join(diagnose.PREPROCESSINGS)}. "
            f"Received: {shorten(repr(args.preprocessing))}"
        )
    train_samples = _samples("--train-samples", args.train_samples)
    test_samples = _samples("--test-samples", args.test_samples)
    # Everything the user named is checked before the model is loaded (slow) and before --out is touched.
    if own:
        if args.data is None:
            raise UsageError("Argument `--dataset npz` needs --data FILE.npz (with x_train, y_train, x_test, y_test).")
        ds = diagnose.read_npz(args.data)
    else:
        try:
            ds = data.load_dataset(dataset_name, args.data, allow_nonstandard=args.allow_nonstandard_data)
        except data.DataError as e:
            if args.dataset is None and args.data is not None and str(args.data).endswith(".npz"):
                raise data.DataError(f"{str(e).splitlines()[0]}; for arrays of your own, pass --dataset npz") from None
            raise
    if args.train_samples is None and ds.n_train >= (settings.get("train_samples") or 0):
        train_samples = settings.get("train_samples")
    if args.test_samples is None and ds.n_test >= (settings.get("test_samples") or 0):
        test_samples = settings.get("test_samples")
    x_train, y_train, x_test, y_test = diagnose.prepare_arrays(ds, preprocessing, train_samples, test_samples)
    model = diagnose.load_model(path)
    results = diagnose.diagnose(
        model,
        x_train,
        y_train,
        x_test,
        y_test,
        steps=args.steps,
        batch_size=args.batch_size,
        log_every=args.log_every,
        act_every=args.act_every,
        seed=args.seed,
        loss=args.loss,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        out=args.out,
        tensorboard_dir=args.tensorboard,
        report=not args.no_report,
        wait=args.wait,
        dataset=ds,
        preprocessing=preprocessing,
        model_file=path,
    )
    for line in diagnose.summary_lines(results, path):
        print(line)
    failed = diagnose.failure(results, path)
    if failed is not None:
        # A run that failed is a runtime failure, not a result: exit 1 with the error's first line.
        print(f"vgbench: error: the diagnosis failed: {failed}", file=sys.stderr)
        return 1
    return 0


def _add_report(sub):
    from vgbench.bench import report

    p = sub.add_parser("report", help="build the report (figures + summaries) of a results directory")
    report.add_arguments(p)
    p.set_defaults(func=report.run)


def _add_compare(sub):
    from vgbench.bench import compare

    p = sub.add_parser("compare", help="compare results against a baseline (exit 1 on regressions)")
    compare.add_arguments(p)
    p.set_defaults(func=compare.run)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vgbench", description="Measure the vanishing gradient problem on real data.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _add_run(sub)
    _add_list(sub)
    _add_theory(sub)
    _add_diagnose(sub)
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
