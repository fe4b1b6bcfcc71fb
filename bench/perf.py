"""`make perf`: what the instrumentation costs next to plain `model.fit`.

Trains the same 20-layer, 256-wide MLP on MNIST three ways, alternated in
one process over several repeats so that machine noise hits all of them
alike:

- ``plain``: `model.fit` with no callback;
- ``grad``: with `GradientNormLogger` recording gradient norms every step
  (activation statistics effectively off);
- ``grad+act``: gradient norms every step plus activation statistics,
  kernel norms and update ratios every 10 steps (the default).

Each fit runs one warm-up epoch (tracing, caches) and then timed epochs; the
result is the median over repeats of each variant's time per step divided by
``plain``'s in the same repeat. It also runs a small suite with the local
executor and reports its parallel efficiency: the sum of the runs' own wall
times divided by (jobs × the suite's wall time).

Writes ``OUT/perf.md`` and ``OUT/perf.json`` (default OUT: reports/).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


class _EpochTimer:
    """Wall time of each epoch (a Keras callback; placed last in the list)."""

    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.times = []

            def on_epoch_begin(self, epoch, logs=None):
                self._t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.times.append(time.perf_counter() - self._t)

        return Timer()


def measure_overhead(data_path=None, *, depth=20, width=256, batch_size=128, steps=100, timed_epochs=2, repeats=5):
    """Median time-per-step ratios of the instrumented variants against plain fit."""
    from bench.train import configure_tensorflow

    configure_tensorflow()
    import keras

    from bench import data as data_mod
    from bench.config import RunConfig
    from bench.instrumentation import GradientNormLogger
    from bench.train import build

    ds = data_mod.load_dataset("mnist", data_path)
    arrays = data_mod.prepare(ds, flatten=True)
    config = RunConfig(depth=depth, width=width, activation="relu", initializer="he_normal", batch_size=batch_size)
    train = data_mod.make_tf_dataset(arrays.x_train, arrays.y_train, batch_size=batch_size, seed=0).repeat()
    probe = (arrays.x_train[:batch_size], arrays.y_train[:batch_size])
    variants = {
        "plain": lambda: [],
        "grad": lambda: [GradientNormLogger(probe_data=probe, log_every=1, act_every=10**9)],
        "grad+act": lambda: [GradientNormLogger(probe_data=probe, log_every=1, act_every=10)],
    }
    per_step = {name: [] for name in variants}
    for r in range(repeats):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))  # A/B/C then C/B/A
        for name in order:
            keras.utils.set_random_seed(0)
            model = build(config, arrays.x_train.shape[1:])
            timer = _EpochTimer()
            model.fit(
                train,
                epochs=1 + timed_epochs,
                steps_per_epoch=steps,
                callbacks=[*variants[name](), timer],
                shuffle=False,
                verbose=0,
            )
            per_step[name].append(sum(timer.times[1:]) / (timed_epochs * steps))
            keras.backend.clear_session()
    ratios = {
        name: statistics.median(per_step[name][i] / per_step["plain"][i] for i in range(repeats))
        for name in variants
        if name != "plain"
    }
    return {
        "model": f"mlp depth={depth} width={width} relu/he_normal, batch {batch_size}, SGD",
        "steps_per_fit": steps * timed_epochs,
        "repeats": repeats,
        "seconds_per_step_median": {k: statistics.median(v) for k, v in per_step.items()},
        "ratio_median": ratios,
        "ratio_all": {
            name: [per_step[name][i] / per_step["plain"][i] for i in range(repeats)] for name in variants if name != "plain"
        },
    }


def measure_parallel(data_path=None, jobs=2):
    """Parallel efficiency of the local executor on a small suite."""
    from bench.config import RunConfig
    from bench.runner import run_suite

    configs = [
        RunConfig(
            depth=20, width=128, activation=a, initializer=i, max_steps=300, epochs=2, train_samples=9600, test_samples=1000, batch_size=64
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


def _markdown(result) -> str:
    o = result["overhead"]
    p = result["parallel"]
    lines = [
        "# vgbench instrumentation cost",
        "",
        f"Measured {result['date']} on {result['machine']}.",
        f"Model: {o['model']}; {o['steps_per_fit']} timed steps per fit, {o['repeats']} repeats, variants alternated.",
        "",
        "| variant | time per step vs plain `fit` (median) | per-repeat range | target |",
        "|---|---|---|---|",
        f"| gradient norms every step | {o['ratio_median']['grad']:.3f}× | {_range(o['ratio_all']['grad'])} | ≤ 1.03× |",
        f"| + activation statistics every 10 steps | {o['ratio_median']['grad+act']:.3f}× "
        f"| {_range(o['ratio_all']['grad+act'])} | ≤ 1.10× |",
        "",
        "Timings on a shared 2-core machine are noisy: single repeats scatter by ±10% or more,",
        "which is why the variants alternate within one process and the median ratio is reported.",
        "",
        f"Plain `fit`: {1000 * o['seconds_per_step_median']['plain']:.1f} ms per step (median).",
        "",
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
    parser = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports", help="directory for perf.md and perf.json")
    parser.add_argument("--data", default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    from bench.results import write_json_atomic
    from bench.provenance import cpu_name, platform_info

    import datetime as dt
    import os

    result = {
        "date": dt.date.today().isoformat(),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "platform": platform_info(),
        "overhead": measure_overhead(args.data, steps=args.steps, repeats=args.repeats),
        "parallel": measure_parallel(args.data, jobs=args.jobs),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "perf.json", result)
    (out / "perf.md").write_text(_markdown(result))
    print((out / "perf.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
