"""Sizes a run before it starts: memory it needs, and what this machine has.

A depth or width typed with a few zeros too many builds for minutes and then
dies of memory in every worker; estimating first lets the command line refuse
it at once, naming the estimate and the limit. The estimate is deliberately
simple (weights, optimizer state, activations of a batch, the prepared data
and a per-layer overhead measured on TensorFlow 2.21 CPU) and errs on the
side of the model: it is meant to catch what cannot fit, not to plan
capacity.
"""

from __future__ import annotations

import math
import os

from vgbench.bench.config import RunConfig
from vgbench.bench.errors import UsageError
from vgbench.models.architectures import DEFAULT_INPUT_SHAPES, block_sizes, count_params

GIB = 2**30
# One TensorFlow worker process before any model (runtime, kernels, Keras).
BASE_BYTES = 512 * 2**20
# Keras layer objects and the traced train/measure steps, per hidden block
# (measured: ~0.8 MiB per block of a narrow MLP, depth 20 vs 160).
BYTES_PER_BLOCK = 3 * 2**18
# Copies of every weight held at once: the weights, their gradients, and the
# logger's per-step buffers; plus the optimizer's slots.
_WEIGHT_COPIES = 3
_OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "adam": 2}
# Images in the standard splits, for runs that use all of them.
_DEFAULT_SAMPLES = (60_000, 10_000)


def estimate_memory(config: RunConfig) -> int:
    """Estimates the peak memory, in bytes, of one run in its worker process.

    Args:
        config: The run.

    Returns:
        The estimate in bytes. Takes time proportional to the depth.
    """
    return _shared_bytes(config) + _replica_bytes(config)


def _replica_bytes(config: RunConfig) -> int:
    """The part of `estimate_memory` that each replica of a population needs for itself."""
    kwargs = config.model_kwargs()
    params = count_params(
        config.arch,
        depth=config.depth,
        width=config.width,
        activation=config.activation,
        norm=kwargs["norm"],
        residual_every=kwargs["residual_every"],
    )
    weights = 4 * params * (_WEIGHT_COPIES + _OPTIMIZER_SLOTS[config.optimizer])
    floats_per_block = block_sizes(config.arch, depth=config.depth, width=config.width)
    activations = 4 * 4 * config.batch_size * sum(floats_per_block)
    return BYTES_PER_BLOCK * config.depth + weights + activations


def _shared_bytes(config: RunConfig) -> int:
    """The part of `estimate_memory` that the replicas of a population share: the process and the data."""
    shape = DEFAULT_INPUT_SHAPES[config.arch]
    # The standard datasets have no more than these; a larger count is the
    # data check's to refuse, with its own message.
    n_train, n_test = (
        min(n or default, default) if config.dataset in ("mnist", "fashion_mnist") else (n or default)
        for n, default in zip((config.train_samples, config.test_samples), _DEFAULT_SAMPLES)
    )
    # float32 inputs, held by the prepared arrays and by the tf.data cache.
    data = 2 * 4 * math.prod(shape) * (n_train + n_test)
    return BASE_BYTES + data


def estimate_population_memory(configs: list[RunConfig]) -> int:
    """Estimates the peak memory, in bytes, of a population (`bench.population`) in its worker process.

    The process and the data are shared; each replica adds its model, its
    training state and its activations (the vmapped step holds every
    replica's at once).
    """
    return _shared_bytes(configs[0]) + sum(_replica_bytes(c) for c in configs)


def max_population(config: RunConfig, limit: int | None = None) -> int:
    """The most replicas of ``config``'s shape that fit in ``limit`` bytes (this machine's memory when None); >= 1."""
    limit = machine_memory() if limit is None else limit
    room = limit - _shared_bytes(config)
    return max(1, int(room // max(1, _replica_bytes(config))))


def machine_memory() -> int:
    """Returns the physical memory of this machine in bytes."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(configs: list[RunConfig], limit: int | None = None) -> None:
    """Refuses runs whose estimated memory exceeds what this machine has.

    Args:
        configs: The runs.
        limit: Bytes available to one run; this machine's physical memory
            when None.

    Raises:
        UsageError: Naming the largest run, its estimate and the limit.
    """
    if not configs:
        return
    limit = machine_memory() if limit is None else limit
    # Runs that differ only in seed, activation family or the like need the
    # same memory; sizing one of each shape keeps large grids quick.
    shapes = {}
    for c in configs:
        key = (
            c.arch,
            c.depth,
            c.width,
            c.batch_size,
            c.optimizer,
            c.fix,
            c.train_samples,
            c.test_samples,
            c.activation == "prelu",
        )
        shapes.setdefault(key, c)
    configs = list(shapes.values())
    # The per-block overhead alone bounds the estimate from below; checking it
    # first keeps a depth of a billion from being counted block by block.
    floors = [(BASE_BYTES + BYTES_PER_BLOCK * c.depth, i) for i, c in enumerate(configs)]
    floor, worst = max(floors)
    need, qualifier = floor, "at least "
    if floor <= limit:
        need, worst = max((estimate_memory(c), i) for i, c in enumerate(configs))
        qualifier = ""
    if need > limit:
        c = configs[worst]
        raise UsageError(
            f"Run {c.run_id[:80]!r} (arch={c.arch}, depth={c.depth}, width={c.width}, batch_size={c.batch_size}) "
            f"needs {qualifier}an estimated {need / GIB:,.1f} GiB of memory, more than this machine's "
            f"{limit / GIB:,.1f} GiB; use a smaller --depth, --width or --batch-size."
        )
