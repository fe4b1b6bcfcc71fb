"""Runs a list of RunConfigs into a results directory: parallel and resumable.

`run_suite` is the one entry point; executors decide where runs execute:

- ``"local"`` (default): worker processes on this machine (``jobs``; each
  with ``cores // jobs`` TensorFlow threads so workers don't oversubscribe).
- ``"ray"``: Ray tasks on a cluster (`bench.ray_executor`).

Every run's results are written atomically as soon as it finishes, so an
interrupted suite (Ctrl-C, kill, crash) resumes where it stopped: runs whose
directories exist are never redone. Usage::

    from bench.runner import run_suite
    from bench.config import RunConfig
    summary = run_suite([RunConfig(depth=4, max_steps=10)], "results/", data_path="mnist.npz")
"""

from __future__ import annotations

import datetime as _dt
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from bench import results as results_mod
from bench.provenance import git_sha, package_versions, platform_info
from bench.config import RunConfig
from bench.errors import SuiteInterrupted, UsageError



@dataclass
class SuiteSummary:
    """What `run_suite` did."""

    out: Path
    total: int
    skipped: int  # already complete before this invocation
    done: int = 0
    statuses: dict = field(default_factory=dict)  # run_id → status
    wall_time_s: float = 0.0
    run_time_s: float = 0.0  # sum of the runs' own wall times


# --------------------------------------------------------------------------- #
# Provenance
# --------------------------------------------------------------------------- #


def write_manifest(out: Path, suite: str, data_info: dict, extra: dict | None = None) -> dict:
    """Creates or updates OUT/manifest.json (created time kept on resume)."""
    old = results_mod.read_manifest(out) or {}
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest = {
        "schema_version": results_mod.SCHEMA_VERSION,
        "suite": suite,
        "command": " ".join(sys.argv) if sys.argv and sys.argv[0] else "",
        "created": old.get("created", now),
        "updated": now,
        "vgbench_version": package_versions().get("vgbench", "unknown"),
        "git_sha": git_sha(),
        "packages": package_versions(),
        "platform": platform_info(),
        "data": data_info,
        **(extra or {}),
    }
    results_mod.write_json_atomic(out / "manifest.json", manifest)
    return manifest


def prepare_out(out) -> Path:
    """Checks that OUT is new or holds vgbench results of this schema."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file, not a directory.")
    manifest = results_mod.read_manifest(out) if out.is_dir() else None
    if manifest is not None:
        results_mod.check_schema(manifest, f"--out {str(out)!r}")
    elif out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        if not (out / "runs").is_dir():
            raise UsageError(f"--out {str(out)!r} is not empty and holds no vgbench results; choose another directory.")
    out.mkdir(parents=True, exist_ok=True)
    results_mod.clean_partial(out)
    return out


# --------------------------------------------------------------------------- #
# Workers
# --------------------------------------------------------------------------- #

_DATA_CACHE: dict = {}


def _load_data_cached(dataset: str, data_path):
    from bench.data import load_dataset

    key = (dataset, str(data_path) if data_path else None)
    if key not in _DATA_CACHE:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the driver already warned once
            _DATA_CACHE[key] = load_dataset(dataset, data_path)
    return _DATA_CACHE[key]


def _worker_init(threads: int):
    from bench.train import configure_tensorflow

    configure_tensorflow(threads)


def _live_step_callback(sink, run_id):
    """A Keras callback that reports the run's step to ``sink[run_id]`` each epoch."""
    import keras

    class LiveStep(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            try:
                sink[run_id] = int(self.model.optimizer.iterations.numpy())
            except Exception:  # progress display must never break a run
                pass

    return LiveStep()


def execute_run(config_dict: dict, out: str, data_path, data=None, live=None) -> dict:
    """Trains one run and writes its directory; returns its result row.

    Runs in a worker process (local executor) or a Ray task. ``live`` is an
    optional mapping (e.g. a multiprocessing manager's dict) that receives
    ``run_id → step`` at each epoch end, for the progress bar.
    """
    from bench.train import train_run

    config = RunConfig.from_dict(config_dict)
    if data is None:
        data = _load_data_cached(config.dataset, data_path)
    callbacks = [_live_step_callback(live, config.run_id)] if live is not None else []
    record = train_run(config, data=data, callbacks=callbacks)
    results_mod.write_run(out, record)
    return {"run_id": config.run_id, **record.result}


# --------------------------------------------------------------------------- #
# The suite
# --------------------------------------------------------------------------- #


def run_suite(
    configs: list[RunConfig],
    out,
    *,
    jobs: int | None = None,
    data_path=None,
    suite: str = "custom",
    executor: str = "local",
    address: str | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> SuiteSummary:
    """Runs every config not yet complete in ``out``; returns a summary.

    Args:
        configs: the runs.
        out: the results directory (created; resumed when it exists).
        jobs: parallel runs (default: the number of cores).
        data_path: explicit dataset file (else the usual sources; see
            `bench.data.load_dataset`).
        suite: the suite's name, for the manifest.
        executor: ``"local"`` or ``"ray"``.
        address: the Ray cluster address (``executor="ray"``).
        retry_failed: also rerun runs recorded as failed.
        progress: show a progress bar on stderr.

    Raises:
        UsageError: bad ``out``, unknown executor, unreadable dataset.
    """
    from bench.data import describe, load_dataset

    if executor not in ("local", "ray"):
        raise UsageError(f"Unknown executor {executor!r}. Valid executors: local, ray")
    t0 = time.perf_counter()
    out = prepare_out(out)
    # Load each dataset once here: bad data fails before any work, and the
    # manifest records where the data came from and its checksum.
    datasets = {}
    for name in sorted({c.dataset for c in configs}):
        datasets[name] = load_dataset(name, data_path)
    data_info = {name: describe(ds) for name, ds in datasets.items()}
    write_manifest(out, suite, data_info if len(data_info) != 1 else next(iter(data_info.values())))

    todo, skipped = [], 0
    for c in configs:
        if results_mod.is_complete(out, c.run_id) and not (retry_failed and _status(out, c.run_id) == "failed"):
            skipped += 1
        else:
            todo.append(c)
    summary = SuiteSummary(out=out, total=len(configs), skipped=skipped)
    requested_jobs = jobs  # unset: Ray sizes it from the cluster, not from this machine
    jobs = max(1, int(jobs or os.cpu_count() or 1))
    try:
        if todo:
            if executor == "ray":
                from bench.ray_executor import run_on_ray

                run_on_ray(todo, out, data_path=data_path, datasets=datasets, address=address, jobs=requested_jobs, summary=summary, progress=progress)
            elif jobs == 1 or len(todo) == 1:
                _run_inline(todo, out, datasets, summary, progress)
            else:
                _run_pool(todo, out, data_path, jobs, summary, progress)
    finally:
        results_mod.consolidate(out)
        summary.wall_time_s = time.perf_counter() - t0
    return summary


def _status(out, run_id) -> str:
    try:
        with open(results_mod.run_dir(out, run_id) / "result.json") as f:
            return json.load(f).get("status", "")
    except (OSError, ValueError):
        return ""


def _progress_bar(total, initial, enabled):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="run", disable=not enabled, dynamic_ncols=True, file=sys.stderr)


def _record(summary, row, bar):
    summary.done += 1
    summary.statuses[row["run_id"]] = row["status"]
    summary.run_time_s += float(row.get("wall_time_s") or 0.0)
    bar.update(1)
    bar.set_postfix_str(f"{row['run_id'][:48]} {row['status']} steps={row.get('steps', 0)}")


def _run_inline(todo, out, datasets, summary, progress):
    from bench.train import configure_tensorflow

    configure_tensorflow()
    with _progress_bar(summary.total, summary.skipped, progress) as bar:
        live = _BarSink(bar) if progress else None
        for c in todo:
            bar.set_postfix_str(f"{c.run_id[:48]} step 0")
            row = execute_run(c.to_dict(), str(out), None, data=datasets[c.dataset], live=live)
            _record(summary, row, bar)


class _BarSink:
    """``sink[run_id] = step`` shows the running run's step on the bar."""

    def __init__(self, bar):
        self.bar = bar

    def __setitem__(self, run_id, step):
        self.bar.set_postfix_str(f"{run_id[:48]} step {step}")


def _run_pool(todo, out, data_path, jobs, summary, progress):
    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = mp.get_context("spawn")  # TensorFlow does not survive fork
    manager = ctx.Manager() if progress else None
    live = manager.dict() if manager is not None else None
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as pool:
            with _progress_bar(summary.total, summary.skipped, progress) as bar:
                pending = {pool.submit(execute_run, c.to_dict(), str(out), data_path, None, live): c for c in todo}
                try:
                    while pending:
                        finished, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            c = pending.pop(fut)
                            try:
                                row = fut.result()
                            except BrokenProcessPool:
                                # A killed worker takes the pool down: nothing of the
                                # unfinished runs was written, so a rerun resumes.
                                raise SuiteInterrupted(
                                    "a worker process died (killed or out of memory); finished runs are saved, "
                                    "rerun the same command to resume"
                                ) from None
                            except Exception as e:
                                row = _record_crash(out, c, e)
                            if live is not None:
                                live.pop(c.run_id, None)
                            _record(summary, row, bar)
                        if live is not None and not finished:
                            running = ", ".join(f"{rid[:40]} step {step}" for rid, step in sorted(live.items()))
                            if running:
                                bar.set_postfix_str(running)
                except BaseException:
                    for fut in pending:
                        fut.cancel()
                    raise
    finally:
        if manager is not None:
            manager.shutdown()


def _record_crash(out, config: RunConfig, exc) -> dict:
    """Records a run whose task raised outside `train_run` as failed; the suite goes on."""
    import pandas as pd

    result = results_mod.empty_result(
        status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
    )
    record = results_mod.RunRecord(config.run_id, config.to_dict(), result, pd.DataFrame(), pd.DataFrame())
    results_mod.write_run(out, record)
    return {"run_id": config.run_id, **result}
