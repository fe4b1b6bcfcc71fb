"""Runs on this machine: in this process, or in a pool of worker processes that die with it.

`PoolExecutor` starts ``jobs`` worker processes (``spawn``: TensorFlow does
not survive ``fork``, and a forked child would keep the Keras backend its
parent imported; a spawned one reads ``KERAS_BACKEND`` afresh), each with ``cores // jobs`` TensorFlow threads so that
workers do not oversubscribe the cores. A worker never outlives the process
that started it, even one killed with SIGKILL: the kernel sends it SIGKILL
when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``), and a watchdog
thread that polls the parent's pid covers systems without it.
`InlineExecutor` trains in this process, one task at a time. A task is one
run or one population (`bench.population.run_group`).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from vgbench.bench.errors import SuiteInterrupted, UsageError
from vgbench.bench.executors.base import Executor, TaskFailed
from vgbench.bench.population import run_group

# Seconds between two checks of the watchdog that ends an orphaned worker.
WATCHDOG_INTERVAL_S = 1.0

_PR_SET_PDEATHSIG = 1


class InlineExecutor(Executor):
    """Trains each run in this process, when `wait` is called, on the driver's datasets."""

    slots = 1

    def __init__(self, datasets):
        super().__init__()
        self.datasets = datasets
        self._tasks = {}

    def __enter__(self):
        from vgbench.bench.train import configure_tensorflow

        configure_tensorflow()
        return self

    def submit(self, task):
        handle = len(self._tasks)
        self._tasks[handle] = task
        return handle

    def wait(self, handles, timeout):
        if not handles:
            return []
        handle = handles[0]
        task = self._tasks.pop(handle)
        data = self.datasets[task[0].dataset]
        self._done = {handle: run_group([c.to_dict() for c in task], data=data, on_step=self.on_step)}
        return [handle]

    def result(self, handle):
        return self._done.pop(handle)

    def cancel(self, handles):
        for handle in handles:
            self._tasks.pop(handle, None)


class PoolExecutor(Executor):
    """Trains runs in ``jobs`` worker processes on this machine.

    Args:
        jobs: worker processes.
        data_path: where workers load the dataset (else the usual sources).
        checksums: dataset name → the driver's checksum; a worker that
            reads other data fails its runs.
    """

    def __init__(self, jobs: int, data_path=None, checksums=None, keep: bool = False):
        super().__init__()
        self.slots = jobs
        self.data_path = str(data_path) if data_path else None
        self.checksums = dict(checksums or {})
        # Kept open after a suite (`bench.runner.kept_workers`): `shutdown` ends it.
        self.keep = keep
        self._pool = None
        self._steps = None

    def __enter__(self):
        if self._pool is not None:
            return self  # kept from an earlier suite: the same workers
        threads = max(1, (os.cpu_count() or 1) // self.slots)
        ctx = mp.get_context("spawn")
        # Workers report running steps through a queue, not a manager: a
        # manager is one more process that would outlive a killed driver.
        self._steps = ctx.Queue()
        self._pool = ProcessPoolExecutor(
            max_workers=self.slots,
            mp_context=ctx,
            initializer=_worker_init,
            initargs=(threads, os.getpid(), self._steps),
        )
        return self

    def submit(self, task):
        dicts = [c.to_dict() for c in task]
        return self._pool.submit(_pool_task, dicts, self.data_path, self.checksums.get(task[0].dataset))

    def wait(self, handles, timeout):
        finished, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        with contextlib.suppress(queue_mod.Empty, OSError, ValueError):
            while True:
                self.on_step(*self._steps.get_nowait())
        return list(finished)

    def result(self, handle):
        try:
            return handle.result()
        except BrokenProcessPool:
            self.keep = False
            # A killed worker takes the pool down: nothing of the unfinished
            # runs was written, so a rerun resumes.
            raise SuiteInterrupted(
                "a worker process died (killed or out of memory); finished runs are saved, "
                "rerun the same command to resume"
            ) from None
        except UsageError:
            raise  # the same cause would fail every run (a worker on another backend): stop the suite
        except Exception as e:
            raise TaskFailed(e) from None

    def cancel(self, handles):
        self.keep = False  # a stopped suite's workers are not reused
        for fut in handles:
            fut.cancel()
        # The pool would wait for the running runs to end; a stop is a stop.
        for process in list((getattr(self._pool, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                process.terminate()

    def close(self):
        if not self.keep:
            self.shutdown()

    @property
    def closed(self) -> bool:
        return self._pool is None

    def shutdown(self):
        """Ends the workers (at the end of a suite, or of `bench.runner.kept_workers` for a kept pool)."""
        self.keep = False
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._steps is not None:
            self._steps.close()
            self._steps.cancel_join_thread()
            self._steps = None


_STEPS = None


def _worker_init(threads: int, parent_pid: int, steps):
    global _STEPS
    _die_with_parent(parent_pid)
    _STEPS = steps
    from vgbench.bench.train import configure_tensorflow

    configure_tensorflow(threads)


def _pool_task(config_dicts, data_path, checksum):
    return run_group(config_dicts, data_path=data_path, checksum=checksum, on_step=_report_step)


def _report_step(run_id, step):
    if _STEPS is not None:
        _STEPS.put_nowait((run_id, step))


def _die_with_parent(parent_pid: int) -> None:
    """Makes this process end when ``parent_pid`` ends, however it ends."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog below does it
    # The parent may have died before prctl took effect.
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch():
        while True:
            time.sleep(WATCHDOG_INTERVAL_S)
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))

    threading.Thread(target=watch, name="vgbench-parent-watchdog", daemon=True).start()
