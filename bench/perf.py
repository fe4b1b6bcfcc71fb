"""`make perf`: what the instrumentation costs next to plain `model.fit`.

Two models: the 20-layer, 256-wide MLP of `models/` and a small CNN built
with plain Keras (``Conv2D(16, 3, relu) → Conv2D(32, 3, relu) →
GlobalAveragePooling2D → Dense(10)`` on 28×28×1), each on MNIST, batch 128,
SGD. Each is trained three ways:

- ``plain``: `model.fit` with no callback;
- ``grad``: with `GradientNormLogger` recording the gradient cadence every
  step (kernel/bias gradient norms, backward signal; activation statistics
  effectively off);
- ``grad+act``: the same plus activation statistics, pre-activation RMS,
  dead/inactive fractions, kernel norms and update ratios every 10 steps
  (the default).

How the ratio is made robust on a noisy, shared machine:

- side by side: the three variants are built in one process and trained
  in turns, one epoch of each per round, in orders that cycle through all
  permutations; each epoch runs the way `fit` runs it (the compiled step,
  the logs turned into Python numbers, the logger's per-step check and
  per-epoch flush), so a burst of foreign load hits neighbouring epochs of
  all variants alike, seconds apart rather than minutes;
- per round, each variant's epoch time is divided by ``plain``'s; the
  estimate is the median over rounds, with a percentile bootstrap 95%
  interval (rounds resampled with replacement);
- the process's CPU time is measured beside the wall time and its ratio
  reported too: other processes' load does not enter it, so a wall ratio
  far from the CPU ratio says the machine was busy.

It also runs a small suite with the local executor and reports its parallel
efficiency: the sum of the runs' own wall times divided by (jobs × the
suite's wall time).

Each setting is measured in a process of its own, back to back: TensorFlow
(oneDNN off, vgbench's default), JAX, then TensorFlow with oneDNN on (Keras
takes its backend, and TensorFlow its ``TF_ENABLE_ONEDNN_OPTS``, once per
process). On JAX the epoch runs as Keras' JAX `fit` runs it: the training
state passes through the jitted steps and is written back at the epoch end.
An instrumented variant a backend cannot run is reported as not measured,
with its error. ``--quick`` is a short check that everything runs.

Writes ``OUT/perf.md`` and ``OUT/perf.json`` (default OUT: reports/).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = ("plain", "grad", "grad+act")
TARGETS = {"grad": 1.03, "grad+act": 1.10}
# The plain-Keras CNN, with the logger's defaults (every step and every 10 steps).
CONV_TARGETS = {"grad": 1.05, "grad+act": 1.05}


def build_conv(input_shape=(28, 28, 1), learning_rate=0.01):
    """The plain-Keras CNN of `make perf`, compiled as vgbench compiles its models (not built by `models/`)."""
    import keras

    inp = keras.Input(input_shape)
    h = keras.layers.Conv2D(16, 3, activation="relu")(inp)
    h = keras.layers.Conv2D(32, 3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(10)(h), name="perf_cnn")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def bootstrap_interval(values, statistic=statistics.median, n=4000, level=0.95, seed=0) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic of independent values."""
    values = np.asarray(values, dtype="float64")
    rng = np.random.default_rng(seed)
    samples = rng.choice(values, size=(n, len(values)), replace=True)
    stats = np.array([statistic(s) for s in samples])
    tail = (1 - level) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


class _Session:
    """One variant, ready to train: a compiled model, its logger (or none) and its data iterator."""

    def __init__(self, name, build, batch_size, arrays, probe, steps):
        import keras

        from vgbench.bench import data as data_mod
        from vgbench.bench.instrumentation import GradientNormLogger

        keras.utils.set_random_seed(0)
        train = data_mod.make_tf_dataset(arrays.x_train, arrays.y_train, batch_size=batch_size, seed=0)
        self.model = build()
        # A short plain fit builds the optimizer and metrics and compiles Keras' own step.
        self.model.fit(train.repeat(), epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
        self.logger = None
        if name != "plain":
            act_every = 10 if name == "grad+act" else 10**9
            self.logger = GradientNormLogger(probe_data=probe, log_every=1, act_every=act_every)
            self.logger.set_model(self.model)
            self.logger.set_params({"epochs": 1, "steps": steps, "verbose": 0})
            self.logger.on_train_begin()  # installs the instrumented step, as `fit` would
        self.jax = keras.backend.backend() == "jax"
        # JAX's `fit` feeds numpy batches (Keras' JAX data adapter does the same with a tf.data input).
        self.iterator = iter(train.repeat().as_numpy_iterator()) if self.jax else iter(train.repeat())
        self.steps = steps
        self.epoch = 0

    def block(self) -> tuple[float, float]:
        """Trains one epoch of ``steps`` steps the way `fit` does; returns its (wall, process CPU) seconds."""
        model, logger = self.model, self.logger
        t, c = time.perf_counter(), time.process_time()
        if self.jax:
            # Keras' JAX `fit`: the training state travels through the jitted steps as arrays and is
            # written back into the model's variables at the end of the epoch, before the callbacks' epoch end.
            state = model._get_jax_state(
                trainable_variables=True,
                non_trainable_variables=True,
                optimizer_variables=True,
                metrics_variables=True,
                purge_model_variables=True,
            )
            model._jax_state_synced = False
        for step in range(self.steps):
            if self.jax:
                logs, state = model.train_function(state, self.iterator)
                model._jax_state = dict(
                    zip(("trainable_variables", "non_trainable_variables", "optimizer_variables", "metrics_variables"),
                        state, strict=True)
                )  # fmt: skip
            else:
                logs = model.train_function(self.iterator)
            loss = float(logs["loss"])  # `fit` turns the logs into Python numbers for the callbacks
            if logger is not None:
                logger.on_train_batch_end(step, {"loss": loss})
        if self.jax:
            model.jax_state_sync()
        if logger is not None:
            logger.on_epoch_end(self.epoch, {"loss": loss})  # the per-epoch flush is part of the cost
        self.epoch += 1
        return time.perf_counter() - t, time.process_time() - c

    def close(self):
        if self.logger is not None:
            self.logger.on_train_end()


def measure_overhead(data_path=None, *, model="mlp", depth=20, width=256, batch_size=128, steps=50, repeats=30):
    """Time-per-step ratios of the instrumented variants against plain training: medians over rounds, 95% intervals.

    Args:
        data_path: MNIST file (see `bench.data.load_dataset`).
        model: ``"mlp"`` (`models.build_model`, ``depth`` × ``width``) or
            ``"conv"`` (`build_conv`, plain Keras).
        depth, width, batch_size: the MLP and the batch.
        steps: steps per timed block, one epoch (a multiple of 10, the activation cadence).
        repeats: rounds; each trains one block of every variant.
    """
    from vgbench.bench.train import configure_tensorflow

    configure_tensorflow()
    import keras

    from vgbench.bench import data as data_mod
    from vgbench.bench.config import RunConfig
    from vgbench.bench.train import build

    ds = data_mod.load_dataset("mnist", data_path)
    arrays = data_mod.prepare(ds, flatten=model == "mlp")
    if model == "mlp":
        config = RunConfig(depth=depth, width=width, activation="relu", initializer="he_normal", batch_size=batch_size)
        description = f"mlp depth={depth} width={width} relu/he_normal, batch {batch_size}, SGD"
        targets = TARGETS

        def make():
            return build(config, arrays.x_train.shape[1:])

    else:
        description = (
            f"plain-Keras CNN Conv2D(16,3,relu)→Conv2D(32,3,relu)→GlobalAveragePooling2D→Dense(10), "
            f"28×28×1, batch {batch_size}, SGD"
        )
        targets = CONV_TARGETS

        def make():
            return build_conv(arrays.x_train.shape[1:])

    probe = (arrays.x_train[:batch_size], arrays.y_train[:batch_size])
    sessions, unavailable = {}, {}
    for name in VARIANTS:
        try:
            sessions[name] = _Session(name, make, batch_size, arrays, probe, steps)
            sessions[name].block()  # warm-up: tracing, caches
        except Exception as e:
            if name == "plain":
                raise
            # An instrumented variant this backend cannot run yet: the others are still measured.
            sessions.pop(name, None)
            unavailable[name] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    variants = [name for name in VARIANTS if name in sessions]
    load_before = os.getloadavg()[0]
    orders = list(itertools.permutations(variants))
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for r in range(repeats):
        for name in orders[r % len(orders)]:
            w, c = sessions[name].block()
            wall[name].append(w / steps)
            cpu[name].append(c / steps)
    load_after = os.getloadavg()[0]
    for session in sessions.values():
        session.close()
    keras.backend.clear_session()
    instrumented = [name for name in variants if name != "plain"]
    ratios = {name: [wall[name][i] / wall["plain"][i] for i in range(repeats)] for name in instrumented}
    cpu_ratios = {name: [cpu[name][i] / cpu["plain"][i] for i in range(repeats)] for name in instrumented}
    return {
        "model": description,
        "backend": keras.backend.backend(),
        "steps_per_block": steps,
        "repeats": repeats,
        "estimator": "median over rounds of the per-round ratio of block times; "
        "percentile bootstrap 95% interval over rounds",
        "seconds_per_step_median": {k: statistics.median(v) for k, v in wall.items()},
        "seconds_per_step_ci95": {k: list(bootstrap_interval(v)) for k, v in wall.items()},
        "cpu_seconds_per_step_median": {k: statistics.median(v) for k, v in cpu.items()},
        "ratio_median": {name: statistics.median(v) for name, v in ratios.items()},
        "ratio_ci95": {name: list(bootstrap_interval(v)) for name, v in ratios.items()},
        "ratio_all": ratios,
        "cpu_ratio_median": {name: statistics.median(v) for name, v in cpu_ratios.items()},
        "cpu_ratio_ci95": {name: list(bootstrap_interval(v)) for name, v in cpu_ratios.items()},
        "targets": targets,
        "unavailable": unavailable,
        "load_average": [load_before, load_after],
    }


def measure_parallel(data_path=None, jobs=2):
    """Parallel efficiency of the local executor on a small suite."""
    from vgbench.bench.config import RunConfig
    from vgbench.bench.runner import run_suite

    configs = [
        RunConfig(
            depth=20,
            width=128,
            activation=a,
            initializer=i,
            max_steps=300,
            epochs=2,
            train_samples=9600,
            test_samples=1000,
            batch_size=64,
        )
        for a in ("sigmoid", "tanh", "relu")
        for i in ("glorot_uniform", "he_normal")
    ]
    with tempfile.TemporaryDirectory() as tmp:
        s = run_suite(configs, tmp, jobs=jobs, data_path=data_path, suite="perf", progress=False)
    return {
        "runs": len(configs),
        "jobs": jobs,
        "suite_wall_time_s": s.wall_time_s,
        "sum_of_run_times_s": s.run_time_s,
        "efficiency": s.run_time_s / (jobs * s.wall_time_s),
    }


def throughput_configs(configurations=None, max_steps=None):
    """The runs of the suite-throughput section: the claims suite on JAX, or a sample of it.

    Args:
        configurations: keep the first this many configurations (populations
            of `bench.population.group`, in suite order), each with all its
            runs; None: all.
        max_steps: cap each run's steps (a reduced budget); None: the suite's.
    """
    from vgbench.bench import population, suites

    configs = suites.expand(suites.load_suite("claims"), {"backend": ["jax"]})
    if max_steps is not None:
        configs = [
            c.replace(max_steps=min(c.max_steps, max_steps), epochs=min(c.epochs, max_steps)) if c.max_steps else c
            for c in configs
        ]
    tasks = population.group(configs)
    if configurations is not None:
        tasks = tasks[:configurations]
    return [c for t in tasks for c in t], len(tasks)


def _throughput_phase(args) -> dict:
    """One side of the suite throughput, in this process (a worker of `measure_throughput`)."""
    import resource

    from vgbench.bench.runner import run_suite

    configs, _ = throughput_configs(args.throughput_configs, args.throughput_steps)
    with tempfile.TemporaryDirectory() as tmp:
        s = run_suite(
            configs,
            tmp,
            jobs=args.jobs,
            data_path=args.data,
            suite="claims",
            progress=False,
            population=args.throughput_phase == "population",
        )
        from vgbench.bench.results import load_results

        runs = load_results(tmp).runs
        verdict_inputs = [
            {"run_id": str(r.run_id), "status": str(r.status), "test_accuracy": float(r.test_accuracy)}
            for r in runs.itertuples()
        ]
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    own, children = me.ru_maxrss, kids.ru_maxrss
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return {
        "cpu_time_s": cpu,
        "runs_per_cpu_minute": 60.0 * len(configs) / cpu,
        "runs": len(configs),
        "wall_time_s": s.wall_time_s,
        "runs_per_minute": 60.0 * len(configs) / s.wall_time_s,
        "statuses": {k: list(s.statuses.values()).count(k) for k in set(s.statuses.values())},
        "peak_rss_bytes": 1024 * max(own, children),
        "runs_table": verdict_inputs,
    }


def measure_throughput(args) -> dict:
    """Suite throughput on JAX: the same runs as populations and one by one, back to back, each in its own process."""
    import datetime as dt
    import json
    import subprocess

    configs, n_tasks = throughput_configs(args.throughput_configs, args.throughput_steps)
    out = {
        "runs": len(configs),
        "configurations": n_tasks,
        "max_steps": args.throughput_steps,
        "jobs": args.jobs,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"),
        "load_before": _load_average(),
    }
    for phase in ("population", "one-by-one"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "phase.json"
            command = [sys.executable, "-m", "vgbench.bench.perf", "--worker", str(path), "--throughput-phase", phase]
            command += _forwarded(args)
            print(f"perf: suite throughput, {phase} ...", file=sys.stderr, flush=True)
            subprocess.run(command, env={**os.environ, "KERAS_BACKEND": "jax"}, check=True)
            out[phase] = json.loads(path.read_text())
    out["load_after"] = _load_average()
    out["ratio"] = out["population"]["runs_per_minute"] / out["one-by-one"]["runs_per_minute"]
    if "cpu_time_s" in out["population"]:
        out["cpu_ratio"] = out["one-by-one"]["cpu_time_s"] / out["population"]["cpu_time_s"]
    # The same runs both ways: what the claims read from them should agree.
    a = {r["run_id"]: r for r in out["population"].pop("runs_table")}
    b = {r["run_id"]: r for r in out["one-by-one"].pop("runs_table")}
    common = sorted(set(a) & set(b))
    deltas = [
        abs(a[k]["test_accuracy"] - b[k]["test_accuracy"])
        for k in common
        if np.isfinite(a[k]["test_accuracy"]) and np.isfinite(b[k]["test_accuracy"])
    ]
    out["agreement"] = {
        "runs": len(common),
        "same_status": sum(a[k]["status"] == b[k]["status"] for k in common),
        "max_abs_test_accuracy_difference": max(deltas, default=float("nan")),
    }
    return out


def _load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` shows them."""
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def _throughput_markdown(t) -> list[str]:
    budget = "the suite's budget" if t["max_steps"] is None else f"steps capped at {t['max_steps']}"
    lines = [
        "## Suite throughput: populations against one run at a time (JAX)",
        "",
        f"Measured {t['date']} on {t.get('machine', 'this machine')}: "
        f"{t['runs']} runs of the `claims` suite ({t['configurations']} populations; {budget}), --jobs {t['jobs']}, "
        "trained twice back to back, each in a process of its own: as populations (`--population on`), then one "
        f"run at a time (`--population off`). Load average before: {t['load_before']}, after: {t['load_after']}.",
        "",
        "| | runs/minute | wall time | CPU time (all processes) | peak memory (one process) | statuses |",
        "|---|---|---|---|---|---|",
    ]
    for phase in ("population", "one-by-one"):
        p = t[phase]
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(p["statuses"].items()))
        cpu = f"{p['cpu_time_s']:.0f} s" if "cpu_time_s" in p else "not measured"
        lines.append(
            f"| {phase} | {p['runs_per_minute']:.1f} | {p['wall_time_s']:.0f} s | {cpu} | "
            f"{p['peak_rss_bytes'] / 2**30:.2f} GiB | {statuses} |"
        )
    lines += ["", f"Ratio: **{t['ratio']:.2f}×** runs per minute (target ≥ 4× on 2 cores)."]
    if "cpu_ratio" in t:
        lines.append(
            f"CPU time one by one / as populations: {t['cpu_ratio']:.2f}× (other processes' load does not enter it)."
        )
    lines.append("")
    g = t.get("agreement")
    if g:
        lines += [
            f"The same {g['runs']} runs both ways: {g['same_status']} with the same status; largest difference in "
            f"final test accuracy {g['max_abs_test_accuracy_difference']:.2g}.",
            "",
        ]
    return lines


def _table(o) -> list[str]:
    names = {"grad": "gradient cadence every step", "grad+act": "+ activation statistics every 10 steps"}
    rows = []
    for name, label in names.items():
        if name not in o["ratio_median"]:
            reason = (o.get("unavailable") or {}).get(name, "not measured")
            rows.append(f"| {label} | not measured ({reason}) | | | | ≤ {o['targets'][name]:.2f}× |")
            continue
        lo, hi = o["ratio_ci95"][name]
        clo, chi = o["cpu_ratio_ci95"][name]
        rows.append(
            f"| {label} | {o['ratio_median'][name]:.3f}× | {lo:.3f}–{hi:.3f}× | {_range(o['ratio_all'][name])} "
            f"| {o['cpu_ratio_median'][name]:.3f}× ({clo:.3f}–{chi:.3f}×) | ≤ {o['targets'][name]:.2f}× |"
        )
    load = o.get("load_average")
    return [
        f"Model: {o['model']}. {o['repeats']} rounds of {o['steps_per_block']} steps per variant.",
        "",
        "| variant | time per step vs plain `fit` (median over rounds) | bootstrap 95% interval "
        "| per-round range | process CPU time ratio (95% interval) | target |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Plain `fit`: {1000 * o['seconds_per_step_median']['plain']:.1f} ms per step (median)."
        + (f" Load average (1 min) before and after: {load[0]:.1f}, {load[1]:.1f}." if load else ""),
        "",
    ]


# The processes of `make perf`, run back to back in this order: name → (environment, title).
# A process runs Keras on one backend, and TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, at start-up.
SETTINGS = {
    "tensorflow": ({"KERAS_BACKEND": "tensorflow", "TF_ENABLE_ONEDNN_OPTS": "0"}, "TensorFlow, oneDNN off (default)"),
    "jax": ({"KERAS_BACKEND": "jax", "TF_ENABLE_ONEDNN_OPTS": "0"}, "JAX"),
    "tensorflow-onednn": ({"KERAS_BACKEND": "tensorflow", "TF_ENABLE_ONEDNN_OPTS": "1"}, "TensorFlow, oneDNN on"),
}


def _step_cell(o) -> str:
    if o is None:
        return "–"
    lo, hi = o["seconds_per_step_ci95"]["plain"]
    return f"{1000 * o['seconds_per_step_median']['plain']:.1f} ms ({1000 * lo:.1f}–{1000 * hi:.1f})"


def _ratio_cell(o, name) -> str:
    if o is None or name not in o["ratio_median"]:
        return "not measured"
    lo, hi = o["ratio_ci95"][name]
    return f"{o['ratio_median'][name]:.3f}× ({lo:.3f}–{hi:.3f}×)"


def _side_by_side(result) -> list[str]:
    lines = [
        "| setting | MLP plain `fit` per step | MLP grad | MLP grad+act | CNN plain `fit` per step | CNN grad "
        "| CNN grad+act |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["settings"].items():
        mlp, conv = r["overhead"], r.get("overhead_conv")
        lines.append(
            f"| {SETTINGS[name][1]} | {_step_cell(mlp)} | {_ratio_cell(mlp, 'grad')} | {_ratio_cell(mlp, 'grad+act')} "
            f"| {_step_cell(conv)} | {_ratio_cell(conv, 'grad')} | {_ratio_cell(conv, 'grad+act')} |"
        )
    return lines


def _markdown(result) -> str:
    p = result["parallel"]
    order = ", then ".join(SETTINGS[name][1] for name in result["settings"])
    lines = [
        "# vgbench instrumentation cost",
        "",
        f"Measured {result['date']} on {result['machine']}.",
        "For each model the three variants train side by side in one process: in each round, one epoch of",
        "every variant (orders cycling through all permutations, after a warm-up epoch each), the way `fit`",
        "runs them (the logger's per-step and per-epoch work included). Per round, each variant's time is",
        "divided by plain training's of the same round. The gradient cadence records kernel and bias gradient",
        "norms, every variable's gradient norm and the backward signal (`backward_rms`); the activation cadence",
        "adds the activation statistics and the pre-activation RMS (`preact_rms`).",
        "",
        "## Per backend, side by side",
        "",
        f"One process per setting (Keras takes its backend, TensorFlow its oneDNN switch, once per process), run "
        f"back to back: {order}. Plain `fit`: median time per step with its bootstrap 95% interval over rounds; "
        "grad and grad+act: time per step against plain `fit` in the same process (median ratio, 95% interval). "
        "Step times of different settings were measured minutes apart, so machine load can move them; the "
        "ratios are measured within one process.",
        "",
        *_side_by_side(result),
        "",
    ]
    for name, r in result["settings"].items():
        lines += [f"## {SETTINGS[name][1]}", "", "### MLP from `models/`", "", *_table(r["overhead"])]
        if r.get("overhead_conv") is not None:
            lines += ["### A plain-Keras CNN (not built by `models/`)", "", *_table(r["overhead_conv"])]
    lines += [
        "The wall-time ratio is the measurement against the target; the CPU-time ratio counts this",
        "process's own work only, so where the two differ a lot other load on the machine moved the wall",
        "times. The per-round range shows the noise of a single round.",
        "",
    ]
    if result.get("throughput") is not None:
        lines += _throughput_markdown(result["throughput"])
    if p is not None:
        lines += [
            "## Parallel efficiency of the local executor",
            "",
            f"{p['runs']} runs with --jobs {p['jobs']} (TensorFlow): suite wall time {p['suite_wall_time_s']:.1f} s, "
            f"sum of the runs' own times {p['sum_of_run_times_s']:.1f} s, efficiency {p['efficiency']:.2f} "
            "(1.0 = perfect; each worker's start-up, importing TensorFlow, is the main loss).",
            "",
        ]
    return "\n".join(lines)


def _measure_setting(args) -> dict:
    """The overheads in this process, on its backend (a worker of `main`)."""
    return {
        "backend": os.environ.get("KERAS_BACKEND"),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "overhead": measure_overhead(args.data, steps=args.steps, repeats=args.repeats),
        "overhead_conv": None
        if args.no_conv
        else measure_overhead(args.data, model="conv", steps=args.conv_steps, repeats=args.conv_repeats),
    }


def _run_setting(name, args) -> dict:
    """Runs one setting's measurement in a new process with its environment; returns what it measured."""
    import subprocess

    env, _ = SETTINGS[name]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "setting.json"
        command = [sys.executable, "-m", "vgbench.bench.perf", "--worker", str(path), *_forwarded(args)]
        print(f"perf: {SETTINGS[name][1]} ...", file=sys.stderr, flush=True)
        subprocess.run(command, env={**os.environ, **env}, check=True)
        import json

        return json.loads(path.read_text())


def _forwarded(args) -> list[str]:
    out = ["--repeats", str(args.repeats), "--steps", str(args.steps), "--jobs", str(args.jobs)]
    if args.throughput_configs is not None:
        out += ["--throughput-configs", str(args.throughput_configs)]
    if args.throughput_steps is not None:
        out += ["--throughput-steps", str(args.throughput_steps)]
    out += ["--conv-repeats", str(args.conv_repeats), "--conv-steps", str(args.conv_steps)]
    if args.data:
        out += ["--data", str(args.data)]
    if args.no_conv:
        out.append("--no-conv")
    return out


def _range(values) -> str:
    return f"{min(values):.2f}–{max(values):.2f}×"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgbench.bench.perf", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports", help="directory for perf.md and perf.json")
    parser.add_argument("--data", default=None)
    parser.add_argument("--repeats", type=int, default=30, help="rounds, each training one epoch of every variant")
    parser.add_argument("--steps", type=int, default=50, help="steps per epoch (a multiple of 10)")
    parser.add_argument("--conv-repeats", type=int, default=20, help="rounds for the CNN")
    parser.add_argument("--conv-steps", type=int, default=20, help="steps per epoch for the CNN (a multiple of 10)")
    parser.add_argument("--no-conv", action="store_true", help="skip the CNN")
    parser.add_argument("--no-parallel", action="store_true", help="skip the parallel-efficiency suite")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--backends",
        default="tensorflow,jax",
        help="comma list of the backends to measure, each in its own process (default: tensorflow,jax)",
    )
    parser.add_argument(
        "--no-onednn", action="store_true", help="skip TensorFlow with oneDNN on (measured by default, after the rest)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few short rounds and no parallel suite: a check that it runs"
    )
    parser.add_argument("--no-throughput", action="store_true", help="skip the suite-throughput section")
    parser.add_argument(
        "--only-throughput", action="store_true", help="measure the suite throughput only (other sections not run)"
    )
    parser.add_argument(
        "--throughput-configs",
        type=int,
        default=None,
        metavar="N",
        help="suite throughput on the first N configurations of the claims suite, with all their runs (default: all)",
    )
    parser.add_argument(
        "--throughput-steps", type=int, default=None, metavar="S", help="cap the throughput runs' steps (default: none)"
    )
    parser.add_argument("--throughput-phase", choices=("population", "one-by-one"), help=argparse.SUPPRESS)
    parser.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.conv_repeats, args.conv_steps = 3, 10, 2, 10
        args.no_parallel = True
    from vgbench.bench import backend
    from vgbench.bench.errors import UsageError
    from vgbench.bench.results import write_json_atomic

    if args.worker:
        write_json_atomic(args.worker, _throughput_phase(args) if args.throughput_phase else _measure_setting(args))
        return 0
    try:
        names = [backend.check(b, "--backends") for b in args.backends.split(",") if b.strip()]
    except UsageError as e:
        print(f"python -m vgbench.bench.perf: error: {e}", file=sys.stderr)
        return 2
    if not args.no_onednn and "tensorflow" in names:
        names.append("tensorflow-onednn")
    import datetime as dt

    from vgbench.bench.provenance import cpu_name, platform_info

    out = Path(args.out)
    if args.only_throughput:
        # The other sections stay as last measured.
        import json

        previous = json.loads((out / "perf.json").read_text()) if (out / "perf.json").is_file() else {}
        result = {"settings": {}, "parallel": None, **previous}
        # perf.json keeps its keys sorted: the settings back in the order they were measured in.
        settings = result["settings"]
        result["settings"] = {k: settings[k] for k in sorted(settings, key=lambda k: list(SETTINGS).index(k))}
        result["throughput"] = {**measure_throughput(args), "machine": f"{cpu_name()}, {os.cpu_count()} cores"}
        return _write(out, result)
    result = {
        "date": dt.date.today().isoformat(),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "platform": platform_info(),
        "order": "one process per setting, back to back in the order of `settings`",
        "settings": {name: _run_setting(name, args) for name in names},
        "parallel": None if args.no_parallel else measure_parallel(args.data, jobs=args.jobs),
        "throughput": None if args.no_throughput or args.quick else measure_throughput(args),
    }
    if result["throughput"] is not None:
        result["throughput"]["machine"] = result["machine"]
    return _write(Path(args.out), result)


def _write(out: Path, result: dict) -> int:
    from vgbench.bench.results import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    text = _markdown(result)
    write_json_atomic(out / "perf.json", result)
    tmp = out / ".perf.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "perf.md")
    print((out / "perf.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
