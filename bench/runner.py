"""Runs a list of RunConfigs into a results directory: parallel, resumable, one writer at a time.

`run_suite` is the one entry point; executors (`bench.executors`) decide
where runs execute:

- ``"local"`` (default): worker processes on this machine (``jobs``; each
  with ``cores // jobs`` TensorFlow threads so workers don't oversubscribe),
  or this process when there is one job or one run.
- ``"ray"``: Ray tasks on a cluster (`bench.executors.ray`).

Every run's results are written atomically as soon as it finishes, so an
interrupted suite (Ctrl-C, SIGTERM, kill, crash, full disk) resumes where it
stopped: runs whose folders validate are never redone, damaged ones are
moved aside and redone. The directory is locked for the whole invocation
(`bench.lock`), and a resume on other data than the runs already there is
refused. Usage::

    from vgbench.bench.runner import run_suite
    from vgbench.bench.config import RunConfig, stable_identity
    summary = run_suite([RunConfig(depth=4, max_steps=10)], "results/", data_path="mnist.npz")
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sys
import time
from pathlib import Path

from vgbench.bench import backend as backend_mod
from vgbench.bench import executors, sizing
from vgbench.bench import population as population_mod
from vgbench.bench import results as results_mod
from vgbench.bench.config import RunConfig, stable_identity
from vgbench.bench.errors import UsageError
from vgbench.bench.executors import ray as ray_executor
from vgbench.bench.executors.base import SuiteSummary, drive
from vgbench.bench.executors.local import InlineExecutor, PoolExecutor
from vgbench.bench.lock import LOCK_NAME, DirectoryLock
from vgbench.bench.provenance import backend_versions, git_sha, package_versions, platform_info
from vgbench.bench.train import TENSORBOARD_ENV

__all__ = ["SuiteSummary", "check_tensorboard_dir", "open_results", "prepare_out", "run_suite", "write_manifest"]

# The longest file name most file systems accept, in bytes.
_NAME_MAX = 255


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


def check_out(out) -> Path:
    """Checks, without writing anything, that OUT can hold vgbench results.

    OUT must be new, empty, or a results directory of this schema (a
    manifest.json); its path must be creatable.

    Raises:
        UsageError: OUT is a file, a dangling link, under a file, a name too
            long, on a read-only file system, or a directory that holds
            something else.
    """
    out = Path(out)
    where = f"--out {str(out)!r}"
    try:
        if any(len(os.fsencode(part)) > _NAME_MAX for part in out.parts):
            raise UsageError(f"{where}: a path component is longer than {_NAME_MAX} bytes.")
        if out.is_symlink() and not out.exists():
            raise UsageError(f"{where} is a symbolic link to {os.readlink(out)!r}, which does not exist.")
        if out.exists() and not out.is_dir():
            raise UsageError(f"{where} is a file, not a directory.")
        if not out.exists():
            parent = out.absolute().parent
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
            if not parent.is_dir():
                raise UsageError(f"{where} cannot be created: {str(parent)!r} is a file, not a directory.")
            if not os.access(parent, os.W_OK):
                raise UsageError(f"{where} cannot be created: {str(parent)!r} is not writable.")
            return out
        manifest = results_mod.read_manifest(out)
        if manifest is not None:
            results_mod.check_schema(manifest, where)
        elif any(p.name != LOCK_NAME for p in out.iterdir()):
            raise UsageError(
                f"{where} is not empty and holds no vgbench results (no manifest.json); choose another directory."
            )
    except OSError as e:
        raise UsageError(f"{where} cannot be used: {e.strerror or e}") from None
    return out


def prepare_out(out) -> Path:
    """Checks OUT (`check_out`) and creates it; the caller then locks it."""
    out = check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {str(out)!r} cannot be created: {e.strerror or e}") from None
    return out


def _lock(out: Path, wait: bool) -> DirectoryLock:
    def on_wait(holder):
        print(f"vgbench: waiting for the other vgbench run on {str(out)!r} ({holder})", file=sys.stderr)

    try:
        return DirectoryLock(out).acquire(wait=wait, on_wait=on_wait)
    except OSError as e:
        raise UsageError(f"--out {str(out)!r} cannot be written: {e.strerror or e}") from None


# --------------------------------------------------------------------------- #
# Resuming
# --------------------------------------------------------------------------- #


def _refuse_other_data(out: Path, manifest, finished, datasets) -> None:
    """Refuses a resume whose data differs from what the directory's runs were trained on.

    The checksums come from the manifest and from every finished run (each
    run records the checksum of the data it was trained on).
    """
    recorded = {
        name: {d.get("checksum")} for name, d in results_mod.manifest_datasets(manifest).items() if d.get("checksum")
    }
    for _, config, result in finished.values():
        checksum = result.get("data_checksum")
        if checksum:
            recorded.setdefault(config.get("dataset"), set()).add(checksum)
    for name, ds in datasets.items():
        old = recorded.get(name, {ds.checksum})
        if old != {ds.checksum}:
            shown = ", ".join(sorted(c[:16] for c in old))
            raise UsageError(
                f"--out {str(out)!r} holds {name} runs trained on data with checksum {shown}, "
                f"but this data has checksum {ds.checksum[:16]} ({ds.source}); use another --out or the same data."
            )


def _scan(out: Path) -> dict:
    """Folder name → (run_id, config, result) of the finished runs; damaged folders are moved aside."""
    finished = {}
    for d in results_mod.run_folders(out):
        try:
            run_id, config, result, _, _ = results_mod.check_run(d)
        except results_mod.DamagedRun as e:
            results_mod.move_aside(out, d, e)
            continue
        finished[d.name] = (run_id, config, result)
    return finished


def _select(out: Path, configs, finished, retry_failed):
    """(todo, skipped): the configs to run, and how many are already done."""
    todo, skipped = [], 0
    for c in configs:
        name = results_mod.run_dir_name(c.run_id)
        entry = finished.get(name)
        # A late field missing from an older config.json means its default (same run_id).
        same = entry is not None and results_mod._normalized(stable_identity(entry[1])) == results_mod._normalized(
            stable_identity(c.to_dict())
        )
        if entry is not None and (entry[0] != c.run_id or not same):
            results_mod.move_aside(out, out / "runs" / name, "its files hold another config")
            entry = None
        if entry is not None and not (retry_failed and entry[2].get("status") == "failed"):
            skipped += 1
        else:
            todo.append(c)
    return todo, skipped


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
    wait: bool = False,
    ray_cpus_per_task: float = 1,
    ray_share_data: bool = True,
    ray_max_retries: int = ray_executor.MAX_RETRIES,
    tensorboard_dir=None,
    population: bool | None = None,
    tables: bool = True,
) -> SuiteSummary:
    """Runs every config not yet complete in ``out``; returns a summary.

    Args:
        configs: the runs.
        out: the results directory (created; resumed when it exists).
        jobs: parallel runs (default: the number of cores; on Ray, the
            cluster's CPUs).
        data_path: explicit dataset file (else the usual sources; see
            `bench.data.load_dataset`).
        suite: the suite's name, for the manifest.
        executor: ``"local"`` or ``"ray"``.
        address: the Ray cluster address (``executor="ray"``).
        retry_failed: also rerun runs recorded as failed.
        progress: show a progress bar on stderr.
        wait: when another process writes ``out``, wait for it instead of
            failing.
        ray_cpus_per_task: CPUs (and TensorFlow threads) of each Ray task.
        ray_share_data: ship the driver's arrays to Ray workers through the
            object store (True), or let each worker load its own copy.
        ray_max_retries: retries of a Ray task whose worker died.
        tensorboard_dir: also write each run's per-layer quantities and
            gradient histograms as TensorBoard events into
            ``tensorboard_dir/RUN_ID`` (see `bench.train.train_run`; Ray
            workers on other machines write on their own disks).
        population: train the runs that differ only in seed, learning
            rate and initializers as one population each (`bench.population`);
            None: on the JAX backend. TensorFlow trains one run at a time.
        tables: rebuild OUT's top-level tables at the end (`rebuild_tables`);
            False leaves it to a later call (a protocol's rounds rebuild
            once, after the last; readers rebuild stale tables anyway).

    Raises:
        UsageError: bad ``out``, ``out`` locked by another process (unless
            ``wait``), data other than that of the runs in ``out``, unknown
            executor or option, unreadable dataset.
        bench.errors.DiskFull: the device filled up; finished runs are kept.
        KeyboardInterrupt: Ctrl-C or SIGTERM; finished runs are kept and the
            tables rebuilt.
    """
    from vgbench.bench.data import load_dataset

    executors.check_name(executor)
    backend = _one_backend(configs)
    population = _check_population(population, backend)
    if executor == "ray":
        ray_executor.check_options(ray_cpus_per_task, 0, jobs or None, ray_max_retries)
    t0 = time.perf_counter()
    tensorboard_dir = check_tensorboard_dir(tensorboard_dir)
    out = check_out(out)
    existed = out.is_dir()
    fresh = not existed or not any(p.name != LOCK_NAME for p in out.iterdir())
    # A directory that exists is locked before the data is loaded, so that
    # a second writer hears at once.
    lock = _lock(out, wait) if existed else None
    try:
        # Loaded before anything is created: bad data leaves no directory.
        datasets = {name: load_dataset(name, data_path) for name in sorted({c.dataset for c in configs})}
        if lock is None:
            prepare_out(out)
            lock = _lock(out, wait)
        out, finished = _start_writing(out, datasets, suite, {"backend": backend, **_backend_versions(backend)})
    except BaseException:
        if lock is not None:
            lock.release()
            if fresh:
                _remove_empty(out, existed)
        raise

    try:
        todo, skipped = _select(out, configs, finished, retry_failed)
        summary = SuiteSummary(out=out, total=len(configs), skipped=skipped)
        if todo:
            # Populations of the runs still to do: a resumed population trains only the rest.
            slots = max(1, int(jobs or os.cpu_count() or 1)) if executor != "ray" else 1
            memory = sizing.machine_memory() // slots
            tasks = population_mod.group(todo, enabled=population, memory=memory, min_tasks=slots)
            if slots > 1:
                # Longest first, so that the workers end together.
                tasks.sort(key=population_mod.estimated_cost, reverse=True)
            if executor == "ray":
                chosen = ray_executor.RayExecutor(
                    todo,
                    data_path=data_path,
                    datasets=datasets,
                    address=address,
                    jobs=jobs,
                    cpus_per_task=ray_cpus_per_task,
                    share_data=ray_share_data,
                    max_retries=ray_max_retries,
                )
            else:
                n = max(1, int(jobs or os.cpu_count() or 1))
                # This process trains inline only on its own backend: Keras, once imported, keeps it.
                here = backend_mod.loaded()
                if (n == 1 or len(tasks) == 1) and here in (None, backend):
                    backend_mod.select(backend)
                    chosen = InlineExecutor(datasets)
                else:
                    checksums = {name: ds.checksum for name, ds in datasets.items()}
                    chosen = _pool(n, data_path, checksums, (backend, tensorboard_dir, population))
            # Through the environment, so that every executor's runs see it (worker processes
            # inherit it when they start, and read the backend before they import Keras).
            with (
                _environment(TENSORBOARD_ENV, tensorboard_dir),
                _environment(backend_mod.ENV, backend),
                _environment(population_mod.POPULATION_ENV, "1" if population else None),
            ):
                drive(chosen, tasks, out, summary, progress)
    except BaseException:
        _rebuild_tables(out, quiet=True)
        lock.release()
        raise
    if tables:
        _rebuild_tables(out, quiet=False)
    lock.release()
    summary.wall_time_s = time.perf_counter() - t0
    return summary


# While `kept_workers` is active: the worker pools of its suites, by what their workers were started with.
_KEPT: dict | None = None


@contextlib.contextmanager
def kept_workers():
    """Within it, the `run_suite` calls that train in worker processes share them, ended at its end.

    A protocol's rounds (`bench.protocol.run_extensions`) are suites run one
    after the other: their workers start once (~5 s of imports each) and keep
    what they hold per process (compiled functions, batch orders). A pool
    whose suite was stopped or lost a worker is not reused.
    """
    global _KEPT
    outer, _KEPT = _KEPT, {}
    try:
        yield
    finally:
        kept, _KEPT = _KEPT, outer
        for pool in kept.values():
            pool.shutdown()


def _pool(n, data_path, checksums, environment) -> PoolExecutor:
    """A `PoolExecutor` of ``n`` workers: a kept one started with the same data and environment, else a new one."""
    if _KEPT is None:
        return PoolExecutor(n, data_path, checksums)
    key = (n, str(data_path) if data_path else None, tuple(sorted(checksums.items())), environment)
    pool = _KEPT.get(key)
    if pool is None or not pool.keep:
        if pool is not None:
            pool.shutdown()
        pool = _KEPT[key] = PoolExecutor(n, data_path, checksums, keep=True)
    return pool


def rebuild_tables(out, *, wait: bool = False) -> None:
    """Rebuilds OUT's top-level tables from its run folders, holding OUT's lock (damaged folders are moved aside)."""
    out = check_out(out)
    lock = _lock(out, wait)
    try:
        _rebuild_tables(out, quiet=False)
    finally:
        lock.release()


@contextlib.contextmanager
def open_results(out, datasets: dict, *, suite: str, wait: bool = False, manifest_extra: dict | None = None):
    """Holds a results directory as its one writer, with the guarantees of `run_suite`, for other commands.

    Checks and locks ``out`` (created when new), cleans what an interrupted
    writer left, moves damaged run folders aside, refuses data other than
    that of the runs already there, and writes the manifest; the block then
    writes its runs (`bench.results.write_run`). On leaving, the top-level
    tables are rebuilt and the lock released; a failure before the
    manifest leaves no new directory behind. Used by `vgbench diagnose`.

    Args:
        out: the results directory.
        datasets: dataset name → `bench.data.Dataset` of the runs to be written.
        suite: the name the manifest records.
        wait: when another process writes ``out``, wait for it instead of failing.
        manifest_extra: more keys of manifest.json.

    Yields:
        ``out`` as a `Path`.

    Raises:
        UsageError: see `run_suite`.
    """
    out = check_out(out)
    existed = out.is_dir()
    fresh = not existed or not any(p.name != LOCK_NAME for p in out.iterdir())
    lock = None
    backend = backend_mod.loaded() or backend_mod.default_backend()
    manifest_extra = {"backend": backend, **_backend_versions(backend), **(manifest_extra or {})}
    try:
        if not existed:
            prepare_out(out)
        lock = _lock(out, wait)
        out, _ = _start_writing(out, datasets, suite, manifest_extra)
    except BaseException:
        if lock is not None:
            lock.release()
        if fresh:
            _remove_empty(out, existed)
        raise
    try:
        yield out
    except BaseException:
        _rebuild_tables(out, quiet=True)
        lock.release()
        raise
    _rebuild_tables(out, quiet=False)
    lock.release()


def _start_writing(out, datasets: dict, suite: str, manifest_extra: dict | None = None):
    """What the lock holder does first: checks, cleaning, the data check and the manifest; (out, finished runs)."""
    from vgbench.bench.data import describe

    # Read again under the lock: another writer may have been first.
    out = check_out(out)
    manifest = results_mod.read_manifest(out)
    results_mod.clean_partial(out)
    finished = _scan(out)
    _refuse_other_data(out, manifest, finished, datasets)
    data_info = {**results_mod.manifest_datasets(manifest), **{name: describe(ds) for name, ds in datasets.items()}}
    write_manifest(out, suite, data_info if len(data_info) != 1 else next(iter(data_info.values())), manifest_extra)
    return out, finished


def _one_backend(configs) -> str:
    """The backend all ``configs`` train on.

    Raises:
        UsageError: they name more than one; a process, and so a suite's
            executor, runs Keras on one backend.
    """
    backends = sorted({c.backend for c in configs}) or [backend_mod.DEFAULT_BACKEND]
    if len(backends) > 1:
        raise UsageError(
            f"A suite runs on one backend; these runs name {', '.join(backends)}. Run once per backend "
            "(`vgbench run --backend NAME`, or one `run_suite` call each) into the same --out."
        )
    return backends[0]


def _check_population(population, backend: str) -> bool:
    """Whether to train populations: the default is on for JAX; TensorFlow trains one run at a time.

    Raises:
        UsageError: populations asked for on TensorFlow.
    """
    if population is None:
        return backend == "jax"
    if population and backend != "jax":
        raise UsageError(
            f"Argument `--population` must be off on the {backend} backend (populations train on jax). "
            "Received: population=on"
        )
    return bool(population)


def _backend_versions(backend: str) -> dict:
    """The manifest's record of the backend's packages: {"backend_versions": {package: version}}."""
    return {"backend_versions": backend_versions(backend)}


def check_tensorboard_dir(path):
    """The TensorBoard directory as an absolute path (created), or None."""
    if path is None:
        return None
    path = Path(path).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(
            f"Argument `--tensorboard` must be a directory that can be created. Received: {path} ({e.strerror})"
        ) from None
    return str(path)


@contextlib.contextmanager
def _environment(name, value):
    """Sets (or, for None, unsets) an environment variable for the block."""
    saved = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _rebuild_tables(out: Path, quiet: bool) -> None:
    """Rebuilds the top-level tables; ``quiet``: while another error is on its way (readers rebuild anyway)."""
    try:
        results_mod.consolidate(out, on_damaged=lambda d, reason: results_mod.move_aside(out, d, reason))
    except Exception:
        if not quiet:
            raise


def _remove_empty(out: Path, existed: bool) -> None:
    """Removes what a failed start left in a directory that was empty or new."""
    try:
        (out / LOCK_NAME).unlink(missing_ok=True)
        if not existed:
            out.rmdir()
    except OSError:
        pass
