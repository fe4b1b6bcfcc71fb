"""Writes the small results directories the fast tests read instead of training their own.

Each set is trained by the real runner (`bench.runner.run_suite`) on a tiny
synthetic dataset, so its tables are exactly what ``vgbench run`` writes; only
the tables and the manifest (with its provenance: git sha, packages, command,
data checksum) are kept, not the per-run folders. Run it from the repository
root after a change to what a run records, and commit the result::

    .venv/bin/python tests/data/make_results.py            # rewrite tests/data/results/
    .venv/bin/python tests/data/make_results.py --out DIR  # write elsewhere (the slow tier does)

The slow tier regenerates the sets and checks that the committed ones still
hold the same numbers (tests/test_committed_results.py).

Sets (``SETS``):
    report: 9 runs for tests/bench/test_report.py: relu and sigmoid at depth 6
        (seeds 0 and 1) and depth 3, relu with He, sigmoid with batchnorm, and
        one run whose large weights and learning rate make it diverge.
    compare/baseline, compare/rerun, compare/degraded: for
        tests/bench/test_compare.py: a tiny MLP trained twice, and once with a
        far too small initialization.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
# The depth of the report set's main runs.
MAIN_DEPTH = 6
# What a results directory keeps here: the manifest and the three top-level tables.
KEPT = ("manifest.json", "runs.parquet", "layers.parquet", "history.parquet")


def report_npz(path: Path) -> Path:
    """A learnable 8×8 'MNIST' of 160 + 40 images: each class lights up its own row of pixels."""
    rng = np.random.default_rng(0)

    def split(n):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = rng.integers(0, 40, size=(n, 8, 8)).astype(np.uint8)
        for i, label in enumerate(y):
            x[i, label % 8, :] += 150
            if label >= 8:  # classes 8 and 9 share rows with 0 and 1: mark a column too
                x[i, :, label % 8] += 60
        return x, y

    x_train, y_train = split(160)
    x_test, y_test = split(40)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def report_configs():
    """The report set: 2 seeds, 2 depths, 1 fix, 1 diverged run."""
    from vgbench.bench.config import RunConfig

    common = dict(width=8, max_steps=12, epochs=2, batch_size=32, act_every=4, learning_rate=0.1)
    configs = [
        RunConfig(depth=MAIN_DEPTH, activation=a, initializer="glorot_uniform", seed=s, **common)
        for a in ("relu", "sigmoid")
        for s in (0, 1)
    ]
    configs += [RunConfig(depth=3, activation=a, initializer="glorot_uniform", **common) for a in ("relu", "sigmoid")]
    configs += [
        RunConfig(depth=MAIN_DEPTH, activation="relu", initializer="he_normal", **common),
        RunConfig(depth=MAIN_DEPTH, activation="sigmoid", initializer="glorot_uniform", fix="batchnorm", **common),
        # Large weights and the largest learning rate allowed overflow within a few steps: a diverged run.
        RunConfig(
            depth=MAIN_DEPTH,
            activation="relu",
            initializer="random_normal(stddev=3.0)",
            **{**common, "learning_rate": 10.0},
        ),
    ]
    return configs


def compare_npz(path: Path, n_train: int = 512, n_test: int = 128) -> Path:
    """A learnable 8x8 dataset: each class lights its own 2x2 patch over noise."""
    rng = np.random.default_rng(0)

    def split(n):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = rng.integers(0, 64, size=(n, 8, 8)).astype(np.uint8)
        for i, label in enumerate(y):
            r, c = divmod(int(label), 4)
            x[i, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = 255
        return x, y

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def compare_configs():
    """The compare sets: {name: [config]}; the degraded run differs only by its initialization."""
    from vgbench.bench.config import RunConfig

    config = RunConfig(
        depth=5, width=32, max_steps=40, batch_size=32, epochs=2, act_every=5, optimizer="momentum", learning_rate=0.05
    )
    return {
        "baseline": [config],
        "rerun": [config],
        "degraded": [config.replace(initializer="random_normal(stddev=0.01)")],
    }


def _keep_tables(out: Path) -> None:
    for entry in list(out.iterdir()):
        if entry.name not in KEPT:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _run(configs, out: Path, data: Path, suite: str) -> None:
    from vgbench.bench.runner import run_suite

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny files are not the published MNIST, by design
        run_suite(configs, out, jobs=1, data_path=data, suite=suite, progress=False)
    _keep_tables(out)


def generate(out: Path) -> Path:
    """Trains every set into ``out`` (which must not exist); returns ``out``."""
    out = Path(out)
    work = Path(tempfile.mkdtemp(prefix="vgbench-test-data-"))
    try:
        _run(report_configs(), out / "report", report_npz(work / "report.npz"), "report-test")
        data = compare_npz(work / "compare.npz")
        for name, configs in compare_configs().items():
            _run(configs, out / "compare" / name, data, "compare-test")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    # Written beside the destination, then swapped in: a failed run leaves the old sets whole.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        generate(tmp / "new")
        if out.exists():
            out.rename(tmp / "old")
        (tmp / "new").rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {os.path.relpath(out)}")
    return 0


if __name__ == "__main__":
    # Before Keras loads: the environment `vgbench run` starts with.
    import vgbench  # noqa: F401

    sys.exit(main())
