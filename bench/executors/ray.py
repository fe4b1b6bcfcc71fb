"""Runs a suite's runs as Ray tasks, on a laptop or a cluster.

`bench.runner.run_suite` uses `RayExecutor` for ``executor="ray"``. Each task
(one run, or one population of runs trained together, `bench.population`)
is one Ray task that trains its runs and *returns* their `RunRecord`s; the driver
(the process running ``vgbench run``) writes every run directory itself,
atomically, as each task finishes (`bench.executors.base.drive`). So:

- Results land in ``--out`` on the driver's machine. Worker nodes need no
  shared filesystem and never write results.
- A worker that dies mid-run (killed, out of memory, node lost) has written
  nothing; Ray retries the task (``max_retries``) and the run is written
  once, when an attempt returns. A run is never lost half-written nor
  recorded twice, and an interrupted suite resumes like the local one.

How the dataset reaches the workers:

- Default (``share_data=True``): the driver puts the arrays it loaded (and
  checksummed) into the Ray object store once; every task reads them from
  there. Workers need no dataset file.
- ``share_data=False``: each worker loads the dataset itself, from
  ``data_path`` or its own ``$VGBENCH_MNIST`` / Keras cache, and the task
  refuses data whose checksum differs from the driver's. Use it when the
  arrays are too big to ship through the object store and every node has
  them.

The workers must be able to import vgbench (install it on every node, or
submit the driver as a Ray job with ``--working-dir``); see docs/ray.md.

Ray is optional: it is imported only when a `RayExecutor` is created.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import time
import warnings
from pathlib import Path

from vgbench.bench import backend as backend_mod
from vgbench.bench.errors import UsageError
from vgbench.bench.executors.base import Executor, TaskFailed, as_tasks, drive
from vgbench.bench.population import run_group
from vgbench.bench.utils import first_line

# Ray retries a task whose worker process died this many times; an exception
# raised by the run itself is a result (status "failed") and is not retried.
MAX_RETRIES = 3

# Seconds to wait for a TCP answer from the cluster address before giving up.
CONNECT_TIMEOUT_S = 5.0

# Ray Client's default port, used when a ray:// address has none.
_RAY_CLIENT_PORT = 10001

# Fault injection for the tests: when this variable names a directory in a
# worker's environment, a task that finds ``<dir>/<run_id>.kill`` renames it
# to ``<run_id>.killed`` and kills its own worker process. The rename is
# atomic, so exactly one attempt dies and Ray's retry then runs normally.
FAULT_DIR_ENV = "VGBENCH_RAY_FAULT_DIR"

_INSTALL_HINT = "Ray is not installed: pip install 'vgbench[ray]'"


class RayExecutor(Executor):
    """Runs each run as a Ray task; the driver records what the tasks return.

    Entering it loads the datasets the runs need that ``datasets`` lacks,
    connects to the cluster at ``address`` (or starts a local Ray instance
    sized to ``jobs`` runs at a time), and puts the datasets into the
    object store (``share_data``). A Ray connection this process already
    holds (`ray.init` called before) is used as is and left open; one that
    it opened is closed on exit.

    Args:
        todo: the tasks that will be submitted (`RunConfig`s, or tuples of
            them for populations; for their datasets).
        data_path: explicit dataset file, for loading on the driver when
            ``datasets`` lacks one, and on the workers with
            ``share_data=False``.
        datasets: dataset name → `bench.data.Dataset` loaded by the driver.
        address: Ray cluster address: ``"HOST:PORT"`` (the head's GCS port,
            usually 6379), ``"ray://HOST:PORT"`` (Ray Client, usually 10001),
            ``"auto"`` (the cluster ``ray start`` began on this machine), or
            None: ``$RAY_ADDRESS`` when set, else a new local instance.
        jobs: runs in flight at once. None: as many as the cluster's CPUs
            (or GPUs, with ``gpus_per_task``) allow, or this machine's cores
            for a local instance.
        cpus_per_task: CPUs Ray reserves for each run; also its TensorFlow
            thread count.
        gpus_per_task: GPUs Ray reserves for each run (0: CPU only).
        share_data: ship the driver's arrays to the workers through the
            object store (True), or let each worker load them itself.
        max_retries: how many times Ray retries a task whose worker died.
        runtime_env: Ray runtime environment for the tasks (e.g.
            ``{"working_dir": "."}`` to ship this checkout to the workers).

    Raises:
        UsageError: Ray is not installed, the cluster cannot be reached, a
            task option is invalid, the cluster has too few CPUs or GPUs for
            one task, or the workers cannot import vgbench or read the
            dataset.
    """

    def __init__(
        self,
        todo,
        *,
        data_path=None,
        datasets=None,
        address=None,
        jobs=None,
        cpus_per_task=1,
        gpus_per_task=0,
        share_data=True,
        max_retries=MAX_RETRIES,
        runtime_env=None,
    ):
        super().__init__()
        self._ray = _import_ray()
        self.jobs = jobs or None  # 0 means "the default", as in run_suite
        check_options(cpus_per_task, gpus_per_task, self.jobs, max_retries)
        self.needed = sorted({c.dataset for task in as_tasks(todo) for c in task})
        self.datasets = dict(datasets or {})
        self.data_path = data_path
        self.address = address
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self.share_data = share_data
        self.max_retries = max_retries
        self.runtime_env = runtime_env
        self._started = False

    def __enter__(self):
        ray = self._ray
        missing = [name for name in self.needed if name not in self.datasets]
        if missing:
            from vgbench.bench.data import load_dataset

            self.datasets.update({name: load_dataset(name, self.data_path) for name in missing})
        # Only the datasets the runs use go to the object store.
        datasets = {name: self.datasets[name] for name in self.needed}
        self._started = _connect(ray, self.address, self.jobs, self.cpus_per_task, self.gpus_per_task, self.runtime_env)
        try:
            # Checked whatever `jobs` says: a task that fits on no node would
            # wait for resources forever.
            slots = _task_slots(ray.cluster_resources(), self.cpus_per_task, self.gpus_per_task)
            self.slots = self.jobs or slots
            self._task_options = dict(
                num_cpus=self.cpus_per_task,
                num_gpus=self.gpus_per_task,
                max_retries=self.max_retries,
                retry_exceptions=False,
            )
            self._tasks_by_backend = {}
            self._threads = max(1, int(self.cpus_per_task))
            if self.share_data:
                # One copy per dataset in the object store, shared by every
                # task (zero-copy reads on each node), instead of one per task.
                self._data_args = {name: ray.put(ds) for name, ds in datasets.items()}
            else:
                self._data_args = {name: None for name in datasets}
            self._checksums = {name: ds.checksum for name, ds in datasets.items()}
            # Workers run in other directories (and without the user's shell
            # expanding ~), so they get an absolute path.
            self._path_arg = os.path.abspath(os.path.expanduser(self.data_path)) if self.data_path else None
        except BaseException:
            self.close()
            raise
        return self

    def submit(self, task):
        first = task[0]
        return self._task_on(first.backend).remote(
            [c.to_dict() for c in task],
            self._data_args[first.dataset],
            self._checksums[first.dataset],
            self._path_arg,
            self._threads,
        )

    def _task_on(self, backend):
        """The task, run by workers whose Keras uses ``backend``.

        Ray keeps separate worker processes per runtime environment, so a
        worker that imported Keras on one backend never gets a run of another.
        """
        if backend not in self._tasks_by_backend:
            env = dict(self.runtime_env or {})
            env["env_vars"] = {**(env.get("env_vars") or {}), backend_mod.ENV: backend}
            task = self._ray.remote(_train_task)
            self._tasks_by_backend[backend] = task.options(**self._task_options, runtime_env=env)
        return self._tasks_by_backend[backend]

    def wait(self, handles, timeout):
        # A bounded wait keeps Ctrl-C responsive while tasks run.
        ready, _ = self._ray.wait(handles, num_returns=1, timeout=timeout)
        return ready

    def result(self, handle):
        ray = self._ray
        try:
            return ray.get(handle)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            # The same cause would fail every run: stop the suite instead of
            # recording each run as failed.
            if isinstance(cause, ImportError):
                raise UsageError(
                    f"Ray workers cannot import vgbench ({type(cause).__name__}: {first_line(cause)}); "
                    "install it on every node, or submit the driver with `ray job submit --working-dir .`"
                ) from None
            if isinstance(cause, UsageError):
                raise UsageError(first_line(cause)) from None
            raise TaskFailed(cause if cause is not None else e) from None
        except ray.exceptions.TaskCancelledError:
            raise
        except ray.exceptions.RayError as e:
            # The worker died on every attempt (e.g. out of memory): record
            # the run as failed so that the suite goes on; --retry-failed
            # reruns it.
            raise TaskFailed(e) from None

    def cancel(self, handles):
        for ref in handles:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)

    def close(self):
        if self._started:
            self._ray.shutdown()
            self._started = False


def run_on_ray(todo, out, *, summary, progress=True, **options):
    """Runs configs as Ray tasks and writes each finished run into ``out``.

    `bench.runner.run_suite` with ``executor="ray"`` is the usual way in;
    this is the same loop for a caller that has prepared ``out`` and holds
    its lock. ``options`` are those of `RayExecutor`.

    Raises:
        UsageError: see `RayExecutor`.
        KeyboardInterrupt: after cancelling the runs in flight; finished
            runs are on disk and a rerun resumes.
    """
    drive(RayExecutor(todo, **options), todo, out, summary, progress)


def _train_task(config_dicts: list, data, checksum: str, data_path, threads: int):
    """The Ray task of one run or population: trains it in the worker and returns its `RunRecord`s.

    Args:
        config_dicts: the runs' `RunConfig`s as dicts (one run, or one population).
        data: the driver's `bench.data.Dataset` (resolved from the object
            store by Ray), or None to load it in the worker.
        checksum: the driver's dataset checksum; worker-loaded data must
            match it.
        data_path: where the worker loads the dataset from when ``data`` is
            None.
        threads: TensorFlow threads (the CPUs Ray reserved for the task).
    """
    from vgbench.bench.train import configure_tensorflow

    configure_tensorflow(threads)
    for config_dict in config_dicts:
        _maybe_die(config_dict)
    return run_group(config_dicts, data=data, data_path=data_path, checksum=checksum)


def _maybe_die(config_dict) -> None:
    fault_dir = os.environ.get(FAULT_DIR_ENV)
    if not fault_dir:
        return
    from vgbench.bench.config import RunConfig

    armed = Path(fault_dir) / f"{RunConfig.from_dict(config_dict).run_id}.kill"
    try:
        os.rename(armed, armed.with_suffix(".killed"))
    except FileNotFoundError:
        return
    # A real process death, as the OOM killer or a lost node would cause.
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
    time.sleep(60)  # never reached on POSIX; the signal ends the process first


# --------------------------------------------------------------------------- #
# Connecting
# --------------------------------------------------------------------------- #


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(_INSTALL_HINT) from None
    return ray


def check_options(cpus_per_task, gpus_per_task, jobs, max_retries=MAX_RETRIES):
    """Validates the task options of `RayExecutor` (no Ray needed).

    Raises:
        UsageError: an option out of range; the message names it and its value.
    """
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise UsageError(
            f"Argument `max_retries` must be a non-negative integer. Received: max_retries={max_retries!r}"
        )
    if isinstance(cpus_per_task, bool) or not isinstance(cpus_per_task, (int, float)) or not cpus_per_task > 0:
        raise UsageError(
            f"Argument `cpus_per_task` must be a positive number. Received: cpus_per_task={cpus_per_task!r}"
        )
    if isinstance(gpus_per_task, bool) or not isinstance(gpus_per_task, (int, float)) or not gpus_per_task >= 0:
        raise UsageError(
            f"Argument `gpus_per_task` must be a non-negative number. Received: gpus_per_task={gpus_per_task!r}"
        )
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise UsageError(f"Argument `jobs` must be a positive integer. Received: jobs={jobs!r}")


# Where a Ray client finds the cluster's token.
_TOKEN_SOURCES = (
    "give the cluster's token as RAY_AUTH_TOKEN, in the file RAY_AUTH_TOKEN_PATH names or in ~/.ray/auth_token"
)


def _connect(ray, address, jobs, cpus_per_task, gpus_per_task, runtime_env) -> bool:
    """Connects to Ray; returns whether this call opened the connection."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = (address or os.environ.get("RAY_ADDRESS") or "").strip() or None
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
    if address in (None, "local"):
        slots = jobs or max(1, int((os.cpu_count() or 1) // cpus_per_task))
        num_cpus = max(1, math.ceil(slots * cpus_per_task))
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            runtime_env=runtime_env,
            **quiet,
        )
        return True
    if address != "auto":
        _probe(address)
    try:
        # Ray retries an unanswering GCS address for minutes; once the TCP
        # probe has answered, one attempt is enough to tell.
        with _env("RAY_gcs_server_port_wait_time_s", "1"), warnings.catch_warnings():
            # Ray Client warns before raising; the UsageError below says it once.
            warnings.simplefilter("ignore")
            ray.init(address=address, runtime_env=runtime_env, **quiet)
    except ray.exceptions.AuthenticationError:
        # RAY_AUTH_MODE=token, but this process has no token (Ray's message is a paragraph).
        raise UsageError(
            f"Cannot connect to the Ray cluster at {address!r}: RAY_AUTH_MODE=token is set but no token was found; "
            f"{_TOKEN_SOURCES}."
        ) from None
    except (ConnectionError, ValueError, RuntimeError, TimeoutError, ray.exceptions.RayError) as e:
        hint = ""
        if os.environ.get("RAY_AUTH_MODE", "").strip().lower() != "token":
            # A cluster with token authentication refuses a client without it, and Ray's exception
            # does not say why (only its C++ log does).
            hint = (
                "; if the cluster uses token authentication (the default of `ray start`), set RAY_AUTH_MODE=token "
                f"and {_TOKEN_SOURCES}"
            )
        raise UsageError(f"Cannot connect to the Ray cluster at {address!r}: {first_line(e)}{hint}") from None
    return True


def _probe(address: str) -> None:
    """Fails fast, with a UsageError naming ``address``, when nothing answers there."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        if isinstance(e, socket.timeout):
            reason = f"no answer in {CONNECT_TIMEOUT_S:g}s"
        else:
            reason = e.strerror or type(e).__name__
        raise UsageError(
            f"Cannot reach the Ray cluster at {address!r}: {reason}. Check --address (HOST:PORT or ray://HOST:PORT)."
        ) from None


def _host_port(address: str) -> tuple[str, int]:
    text = address
    client = text.startswith("ray://")
    if client:
        text = text[len("ray://") :]
    text = text.split("/", 1)[0]
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        host, port = text, str(_RAY_CLIENT_PORT) if client else ""
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise UsageError(f"Invalid Ray address {address!r}; expected HOST:PORT, ray://HOST:PORT or auto.")
    return host, int(port)


def _task_slots(resources, cpus_per_task, gpus_per_task) -> int:
    """How many runs a cluster with ``resources`` (`ray.cluster_resources()`) can hold at once.

    Raises:
        UsageError: not even one run fits; the message names what is short.
    """
    need = {"CPU": ("cpus_per_task", cpus_per_task), "GPU": ("gpus_per_task", gpus_per_task)}
    fits, short = [], []
    for resource, (arg, per_task) in need.items():
        if not per_task:
            continue
        have = resources.get(resource, 0)
        fits.append(int(have // per_task))
        if fits[-1] < 1:
            short.append(f"{arg}={per_task:g} but the cluster has {have:g} {resource}")
    if short:
        raise UsageError(f"No Ray task can be scheduled: {'; '.join(short)}.")
    return min(fits)


@contextlib.contextmanager
def _env(name, value):
    """Sets an environment variable for the block, unless the user set it."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
