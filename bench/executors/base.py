"""The executor interface, and the one loop that drives any executor through a suite.

An executor only decides where a task executes: it submits a task (one
run, or a population of runs trained together, `bench.population`), says
which tasks have finished, hands back a finished task's `RunRecord`s, and
cancels what is in flight. `drive` does the rest, the same
for every executor: it keeps ``slots`` tasks in flight, records each
finished run on disk (`bench.results.write_run`) as soon as it arrives,
updates the progress bar and the `SuiteSummary`, and cancels the tasks in
flight when it stops early (Ctrl-C, SIGTERM, a full disk, an error).
"""

from __future__ import annotations

import abc
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vgbench.bench import results as results_mod


@dataclass
class SuiteSummary:
    """What `bench.runner.run_suite` did."""

    out: Path
    total: int
    skipped: int  # already complete before this invocation
    done: int = 0
    statuses: dict = field(default_factory=dict)  # run_id → status
    wall_time_s: float = 0.0
    run_time_s: float = 0.0  # sum of the runs' own wall times


class TaskFailed(Exception):
    """A task ended without a record; the run is recorded as failed and the suite goes on.

    ``cause`` is the exception that ended it.
    """

    def __init__(self, cause):
        super().__init__(str(cause))
        self.cause = cause


class Executor(abc.ABC):
    """Where runs execute. Used as a context manager around `drive`.

    Subclasses set ``slots`` (tasks in flight at once) by the end of
    `__enter__`, and call ``self.on_step(run_id, step)`` when they learn a
    running run's step (optional; it feeds the progress bar).
    """

    slots: int = 1

    def __init__(self):
        self.on_step = lambda run_id, step: None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @abc.abstractmethod
    def submit(self, task):
        """Starts a task, a tuple of `RunConfig`s (one run, or one population); returns a hashable handle."""

    @abc.abstractmethod
    def wait(self, handles, timeout: float) -> list:
        """The handles among ``handles`` that have finished, waiting up to ``timeout`` seconds for one."""

    @abc.abstractmethod
    def result(self, handle):
        """The `RunRecord`s of a finished task, one per config, in the task's order.

        Raises:
            TaskFailed: this run failed outside training; record it and go on.
            Exception: any other error stops the suite.
        """

    @abc.abstractmethod
    def cancel(self, handles) -> None:
        """Stops the tasks in flight now; their runs stay unwritten."""

    def close(self) -> None:  # noqa: B027 - optional hook: most executors hold nothing to release
        """Releases what the executor started (processes, a Ray instance)."""


def progress_bar(total, initial, enabled):
    """The suite's progress bar on stderr (disabled: a no-op bar)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="run", disable=not enabled, dynamic_ncols=True, file=sys.stderr)


def failed_record(config, exc):
    """The record of a run whose task ended without one: status failed, with the error."""
    import pandas as pd

    result = results_mod.empty_result(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
    return results_mod.RunRecord(config.run_id, config.to_dict(), result, pd.DataFrame(), pd.DataFrame())


def as_tasks(todo) -> list[tuple]:
    """``todo`` as tasks: a `RunConfig` is a task of one run; a list or tuple of them, one population."""
    return [tuple(t) if isinstance(t, (list, tuple)) else (t,) for t in todo]


def drive(executor: Executor, todo, out, summary: SuiteSummary, progress: bool = True) -> None:
    """Runs every task of ``todo`` (see `as_tasks`) on ``executor`` and records each finished run in ``out``.

    The caller holds ``out``'s lock. Enters and closes ``executor``.

    Raises:
        KeyboardInterrupt: Ctrl-C or SIGTERM (`bench.errors.Terminated`),
            after cancelling the tasks in flight; finished runs are on disk.
        bench.errors.DiskFull: the device is full; finished runs are on disk.
    """
    with executor, progress_bar(summary.total, summary.skipped, progress) as bar:
        running = {}

        def on_step(run_id, step):
            running[run_id] = step
            bar.set_postfix_str(", ".join(f"{rid[:40]} step {s}" for rid, s in sorted(running.items())))

        executor.on_step = on_step
        queue = list(reversed(as_tasks(todo)))
        pending = {}
        try:
            while queue or pending:
                while queue and len(pending) < executor.slots:
                    task = queue.pop()
                    pending[executor.submit(task)] = task
                for handle in executor.wait(list(pending), timeout=1.0):
                    task = pending.pop(handle)
                    try:
                        records = executor.result(handle)
                    except TaskFailed as e:
                        records = [failed_record(c, e.cause) for c in task]
                    for record in records:
                        results_mod.write_run(out, record)
                        running.pop(record.run_id, None)
                        _count(summary, record, bar)
        except BaseException:
            executor.cancel(list(pending))
            raise


def _count(summary, record, bar):
    result = record.result
    summary.done += 1
    summary.statuses[record.run_id] = result["status"]
    wall = float(result.get("wall_time_s") or 0.0)
    summary.run_time_s += wall if math.isfinite(wall) else 0.0
    bar.update(1)
    bar.set_postfix_str(f"{record.run_id[:48]} {result['status']} steps={result.get('steps', 0)}")
