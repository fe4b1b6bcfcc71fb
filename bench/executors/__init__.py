"""Where a suite's runs execute: the executors by name.

`bench.executors.base` defines the interface and the loop that drives any
executor; `local` holds this machine's executors (in-process and a worker
pool), `ray` the Ray executor. `bench.runner.run_suite` picks one by name.
"""

from __future__ import annotations

from vgbench.bench.errors import UsageError

EXECUTORS = ("local", "ray")


def check_name(name) -> str:
    """The executor name, validated.

    Raises:
        UsageError: an unknown name; the message lists the valid ones.
    """
    if name not in EXECUTORS:
        raise UsageError(f"Unknown executor {name!r}. Valid executors: {', '.join(EXECUTORS)}")
    return name
