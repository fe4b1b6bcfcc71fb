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
        self.model.fit(train.repeat(), epochs=1, steps_per_epoch=2, verbose=0)
        self.logger = None
        if name != "plain":
            act_every = 10 if name == "grad+act" else 10**9
            self.logger = GradientNormLogger(probe_data=probe, log_every=1, act_every=act_every)
            self.logger.set_model(self.model)
            self.logger.set_params({"epochs": 1, "steps": steps, "verbose": 0})
            self.logger.on_train_begin()  # installs the instrumented step, as `fit` would
        self.iterator = iter(train.repeat())
        self.steps = steps
        self.epoch = 0

    def block(self) -> tuple[float, float]:
        """Trains one epoch of ``steps`` steps the way `fit` does; returns its (wall, process CPU) seconds."""
        model, logger = self.model, self.logger
        t, c = time.perf_counter(), time.process_time()
        for step in range(self.steps):
            logs = model.train_function(self.iterator)
            loss = float(logs["loss"])  # `fit` turns the logs into Python numbers for the callbacks
            if logger is not None:
                logger.on_train_batch_end(step, {"loss": loss})
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
    sessions = {name: _Session(name, make, batch_size, arrays, probe, steps) for name in VARIANTS}
    load_before = os.getloadavg()[0]
    for session in sessions.values():
        session.block()  # warm-up: tracing, caches
    orders = list(itertools.permutations(VARIANTS))
    wall = {name: [] for name in VARIANTS}
    cpu = {name: [] for name in VARIANTS}
    for r in range(repeats):
        for name in orders[r % len(orders)]:
            w, c = sessions[name].block()
            wall[name].append(w / steps)
            cpu[name].append(c / steps)
    load_after = os.getloadavg()[0]
    for session in sessions.values():
        session.close()
    keras.backend.clear_session()
    instrumented = [name for name in VARIANTS if name != "plain"]
    ratios = {name: [wall[name][i] / wall["plain"][i] for i in range(repeats)] for name in instrumented}
    cpu_ratios = {name: [cpu[name][i] / cpu["plain"][i] for i in range(repeats)] for name in instrumented}
    return {
        "model": description,
        "steps_per_block": steps,
        "repeats": repeats,
        "estimator": "median over rounds of the per-round ratio of block times; "
        "percentile bootstrap 95% interval over rounds",
        "seconds_per_step_median": {k: statistics.median(v) for k, v in wall.items()},
        "cpu_seconds_per_step_median": {k: statistics.median(v) for k, v in cpu.items()},
        "ratio_median": {name: statistics.median(v) for name, v in ratios.items()},
        "ratio_ci95": {name: list(bootstrap_interval(v)) for name, v in ratios.items()},
        "ratio_all": ratios,
        "cpu_ratio_median": {name: statistics.median(v) for name, v in cpu_ratios.items()},
        "cpu_ratio_ci95": {name: list(bootstrap_interval(v)) for name, v in cpu_ratios.items()},
        "targets": targets,
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


def _table(o) -> list[str]:
    names = {"grad": "gradient cadence every step", "grad+act": "+ activation statistics every 10 steps"}
    rows = []
    for name, label in names.items():
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


def _markdown(result) -> str:
    o = result["overhead"]
    p = result["parallel"]
    conv = result.get("overhead_conv")
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
        "## MLP from `models/`",
        "",
        *_table(o),
    ]
    if conv is not None:
        lines += ["## A plain-Keras CNN (not built by `models/`)", "", *_table(conv)]
    lines += [
        "The wall-time ratio is the measurement against the target; the CPU-time ratio counts this",
        "process's own work only, so where the two differ a lot other load on the machine moved the wall",
        "times. The per-round range shows the noise of a single round.",
        "",
    ]
    if p is not None:
        lines += [
            "## Parallel efficiency of the local executor",
            "",
            f"{p['runs']} runs with --jobs {p['jobs']}: suite wall time {p['suite_wall_time_s']:.1f} s, "
            f"sum of the runs' own times {p['sum_of_run_times_s']:.1f} s, efficiency {p['efficiency']:.2f} "
            "(1.0 = perfect; each worker's start-up, importing TensorFlow, is the main loss).",
            "",
        ]
    return "\n".join(lines)


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
    args = parser.parse_args(argv)
    import datetime as dt
    import os

    from vgbench.bench.provenance import cpu_name, platform_info
    from vgbench.bench.results import write_json_atomic

    result = {
        "date": dt.date.today().isoformat(),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "platform": platform_info(),
        "overhead": measure_overhead(args.data, steps=args.steps, repeats=args.repeats),
        "overhead_conv": None
        if args.no_conv
        else measure_overhead(args.data, model="conv", steps=args.conv_steps, repeats=args.conv_repeats),
        "parallel": None if args.no_parallel else measure_parallel(args.data, jobs=args.jobs),
    }
    out = Path(args.out)
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
