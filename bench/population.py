"""Populations: the runs of a suite that share an architecture, trained as one vmapped, jitted JAX program.

Runs that differ only in seed, learning rate and initializers (the
protocol repeats each architecture over 3 learning rates × 3 seeds) have
the same shapes and the same forward graph: only numbers differ. On the
JAX backend they form a *population*: each replica's model is built with
its own seed (so it starts from the weights it has when trained alone), the
replicas' trainable, non-trainable, optimizer and metric variables are
stacked, and one jitted step trains them all, `jax.vmap` over the stacked
state. The optimizer's learning rate is one of its variables (Keras keeps a
float learning rate as a variable), so each replica updates with its own.
The step is the logger's own JAX step (`bench.instrumentation_jax.Steps`),
so the per-layer quantities are those of the quantity registry, computed
per replica in the same step.

Every replica is still a run: the same run_id, `RunRecord`, tables and
columns as alone. Each replica sees the batches its seed gives alone (the
same shuffled order of the same arrays), and is evaluated on the same test
batches. A replica whose loss or gradient becomes non-finite is recorded
``diverged`` at that step, with everything measured until then, and is
frozen (its state no longer changes) while the others go on.

`group` forms the populations of a list of runs; `train_population` trains
one; `run_group` is what an executor runs for a task (one run or a
population).
"""

from __future__ import annotations

import os
import time
import traceback

import numpy as np

from vgbench.bench.config import RunConfig

# Fields a population's replicas may differ in: the numbers, not the shapes.
VARYING_FIELDS = ("seed", "learning_rate", "initializer", "bias_initializer")

# The batch size of the test evaluation, as `bench.train.train_run`'s pipeline.
TEST_BATCH = 512

# Set (to "1") by the runner while it trains populations: a JAX run that shares its
# population with no other run then trains as a population of one, the same compiled
# program as its neighbours' (one function, not one per cadence and one for step 0).
POPULATION_ENV = "VGBENCH_POPULATION"


def population_key(config: RunConfig) -> tuple:
    """What the runs of one population share: every config field but `VARYING_FIELDS`."""
    d = config.to_dict()
    return tuple(sorted((k, v) for k, v in d.items() if k not in VARYING_FIELDS))


def group(configs, *, enabled: bool = True, memory: int | None = None, min_tasks: int = 1) -> list[list[RunConfig]]:
    """The tasks of a suite: its populations (JAX runs, ``enabled``), else one run each.

    Args:
        configs: the runs to train, in suite order.
        enabled: form populations at all (only JAX runs ever do).
        memory: bytes one task may use (None: no limit); a population whose
            estimate (`bench.sizing.estimate_population_memory`) exceeds it
            is split into populations of near-equal size that fit.
        min_tasks: split the largest populations in halves until there are
            at least this many tasks (or every task is one run), so that
            parallel workers all have work.

    Returns:
        Lists of configs, in the order of their first run in ``configs``.
    """
    from vgbench.bench import sizing

    groups: dict = {}
    for c in configs:
        key = population_key(c) if enabled and c.backend == "jax" else ("run", c.run_id)
        groups.setdefault(key, []).append(c)
    tasks = []
    for members in groups.values():
        size = sizing.max_population(members[0], memory) if memory is not None else len(members)
        parts = -(-len(members) // size)
        per = -(-len(members) // parts)
        tasks.extend(members[i : i + per] for i in range(0, len(members), per))
    while len(tasks) < min_tasks:
        k = max(range(len(tasks)), key=lambda i: len(tasks[i]), default=None)
        if k is None or len(tasks[k]) < 2:
            break
        half = (len(tasks[k]) + 1) // 2
        tasks[k : k + 1] = [tasks[k][:half], tasks[k][half:]]
    return tasks


# Seconds of fixed cost (building, compiling, step 0, evaluation) a task pays, in
# multiply-adds of training arithmetic: ~10 s at the ~5e9 a second of one core.
_FIXED_COST = 5e10


def estimated_cost(task) -> float:
    """A task's relative cost: its fixed cost plus its replicas' training arithmetic (multiply-adds, roughly).

    Only for ordering tasks, longest first, so that parallel workers end
    together (a long population started last would train alone at the end).
    """
    c = task[0]
    per_example = c.width * (c.depth * c.width + 1024)  # hidden layers, and the input layer of a ~1k-pixel image
    if c.max_steps is not None:
        steps = c.max_steps
    else:  # every example of each epoch (the whole MNIST training split when unset)
        steps = c.epochs * (c.train_samples or 60_000) / c.batch_size
    return _FIXED_COST + len(task) * steps * c.batch_size * 3 * per_example


def run_group(config_dicts, data=None, data_path=None, checksum=None, on_step=None) -> list:
    """Trains one task (a run, or a population of runs) and returns its `RunRecord`s, in the given order.

    Args: as `bench.task.run_task`, with ``config_dicts`` a list.
    """
    from vgbench.bench import backend
    from vgbench.bench import task as task_mod

    configs = [RunConfig.from_dict(d) for d in config_dicts]
    alone = len(configs) == 1 and not (configs[0].backend == "jax" and os.environ.get(POPULATION_ENV) == "1")
    if alone:
        return [task_mod.run_task(config_dicts[0], data=data, data_path=data_path, checksum=checksum, on_step=on_step)]
    backend.select(configs[0].backend)
    if data is None:
        data = task_mod.load_data_cached(configs[0].dataset, data_path)
        if checksum is not None and data.checksum != checksum:
            from vgbench.bench.errors import DataError

            raise DataError(
                f"Worker read {configs[0].dataset} from {data.source} with checksum {data.checksum[:12]}, "
                f"not the driver's {checksum[:12]}; give every worker the same file."
            )
    return train_population(configs, data=data, on_step=on_step)


# --------------------------------------------------------------------------- #
# Training a population
# --------------------------------------------------------------------------- #


def train_population(configs, data=None, data_path=None, on_step=None, tensorboard_dir=None) -> list:
    """Trains the runs of one population together; returns one `RunRecord` per config, in order.

    Args:
        configs: runs with equal `population_key` (JAX backend).
        data: optional `bench.data.Dataset` already loaded.
        data_path: where to read the dataset when ``data`` is None.
        on_step: optional ``on_step(run_id, step)`` called at each epoch end.
        tensorboard_dir: as `bench.train.train_run` (default ``$VGBENCH_TENSORBOARD``).

    Returns:
        The records. A failure outside a replica's numbers (building,
        compiling) fails every run of the population, each with the error.

    Raises:
        ValueError: the configs do not form one population, or Keras does
            not run on JAX.
    """
    import keras

    from vgbench.bench.provenance import run_provenance
    from vgbench.bench.results import RunRecord, empty_result
    from vgbench.bench.train import TENSORBOARD_ENV, configure_tensorflow, prepared_data

    configs = list(configs)
    if not configs:
        return []
    if len({population_key(c) for c in configs}) != 1:
        raise ValueError(
            "Argument `configs` must form one population: they differ in more than " + ", ".join(VARYING_FIELDS)
        )
    if keras.backend.backend() != "jax":
        raise ValueError(f"Populations train on the JAX backend. Received: Keras backend {keras.backend.backend()!r}")
    if len({c.run_id for c in configs}) != len(configs):
        raise ValueError("Argument `configs` holds the same run twice.")
    configure_tensorflow()
    t0 = time.perf_counter()
    data, arrays = prepared_data(configs[0], data, data_path)
    tensorboard_dir = tensorboard_dir or os.environ.get(TENSORBOARD_ENV) or None
    results = [empty_result(data_checksum=data.checksum, **run_provenance()) for _ in configs]
    population = None
    try:
        population = _Population(configs, arrays, tensorboard_dir)
        population.train(on_step)
        for r, outcome in enumerate(population.outcomes()):
            results[r].update(outcome)
            if population.jacobians[r] is not None:
                from vgbench.bench import spectrum

                results[r].update(spectrum.run_summary(population.jacobians[r]))
    except Exception as e:  # a failed population is a result for each of its runs
        for result in results:
            result["status"] = "failed"
            result["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:500]
            result["traceback"] = traceback.format_exc()[-4000:]
    wall = time.perf_counter() - t0
    records = []
    for r, c in enumerate(configs):
        # Each run's share of the population's time; the whole is kept beside it.
        results[r]["wall_time_s"] = wall / len(configs)
        results[r]["population_size"] = len(configs)
        results[r]["population_wall_time_s"] = wall
        logger = population.loggers[r] if population is not None and r < len(population.loggers) else None
        tables = _tables(logger)
        jacobian = population.jacobians[r] if population is not None and r < len(population.jacobians) else None
        records.append(RunRecord(c.run_id, c.to_dict(), results[r], *tables, jacobian))
    return records


def _tables(logger):
    import pandas as pd

    if logger is None or not logger.started:
        return pd.DataFrame(), pd.DataFrame(), pd.DataFrame()
    try:
        logger.finish()
    except Exception:
        return pd.DataFrame(), pd.DataFrame(), pd.DataFrame()
    return logger.layers, logger.history, logger.variables


class _Population:
    """The replicas' models, loggers and stacked state, and the loop that trains them."""

    def __init__(self, configs, arrays, tensorboard_dir):
        import jax
        import jax.numpy as jnp
        import keras

        from vgbench.bench.instrumentation import GradientNormLogger
        from vgbench.bench.instrumentation_jax import Steps, state_of
        from vgbench.bench.measures import GRAD_FIELDS
        from vgbench.bench.train import build, schedule

        self.configs = configs
        self.size = len(configs)
        first = configs[0]
        self.log_every, self.act_every = first.log_every, first.act_every
        x_train, y_train = arrays.x_train, arrays.y_train
        self.epochs, self.per_epoch = schedule(first, len(x_train))
        n = min(first.batch_size, len(x_train))
        self.probe = (x_train[:n], y_train[:n])
        self.test = [
            (arrays.x_test[i : i + TEST_BATCH], arrays.y_test[i : i + TEST_BATCH])
            for i in range(0, len(arrays.x_test), TEST_BATCH)
        ]
        self.models, self.loggers, self.jacobians, states = [], [], [], []
        for c in configs:
            # The weights (and dropout seeds) this run starts from when trained alone.
            keras.utils.set_random_seed(c.seed)
            model = build(c, x_train.shape[1:])
            model._symbolic_build(data_batch=(x_train[:1], y_train[:1]))
            logger = GradientNormLogger(
                probe_data=self.probe,
                log_every=c.log_every,
                act_every=c.act_every,
                run_id=c.run_id,
                tensorboard_dir=tensorboard_dir,
            )
            logger.begin(model, steps_per_epoch=self.per_epoch)
            if c.jacobian_examples:
                # Before any update, as alone (`bench.train.logged_run`): the spectrum at initialization.
                from vgbench.bench import spectrum

                self.jacobians.append(spectrum.measure(model, x_train[: c.jacobian_examples], c.depth, c.run_id))
            else:
                self.jacobians.append(None)
            self.models.append(model)
            self.loggers.append(logger)
            states.append(state_of(model))
        # The first replica's model and logger trace the step for all.
        self.template = self.models[0]
        measures = self.loggers[0].measures
        self.steps = Steps(self.template, measures, log_every=self.log_every, act_every=self.act_every)
        self.state = jax.tree_util.tree_map(_stacked, *states)
        self.metrics0 = self.state[3]
        # Which entries of a step's "grad" and "var" records are variables' gradient norms.
        units, fields = len(measures.units), len(GRAD_FIELDS)
        self._grad_mask = np.zeros((units, fields), bool)
        self._var_mask = np.zeros(max(1, len(measures.other_idx)), bool)
        for i, field in measures.var_source:
            (self._grad_mask[i] if i is not None else self._var_mask)[field] = True
        self.x_train = jnp.asarray(x_train)
        self.y_train = jnp.asarray(y_train)
        orders = []
        for c in configs:
            # The shuffle's seed pair (TensorFlow's global seed, the op's) as in `bench.train.train_run`.
            keras.utils.set_random_seed(c.seed)
            orders.append(_batch_order(len(x_train), c.batch_size, c.seed, self.epochs * self.per_epoch))
        # Per step, every replica's batch: (replicas, batch) example indices.
        self.orders = [np.stack(batch) for batch in zip(*orders)]
        self.diverged = [None] * self.size
        self.steps_done = [0] * self.size
        self.last_history = [None] * self.size
        self.histograms = measures.histograms
        self._functions = {}
        self._act_fn = None
        self._eval = None

    # ------------------------------------------------------------ the step

    def _finite(self, records, loss_finite):
        """Whether a replica's step is finite as `GradientNormLogger` judges it: loss, and every variable's norm.

        The variables' norms are entries of the grad-cadence records (a unit's
        kernel and bias) and of the others' norms (`Measures.var_source`):
        one masked test over each table, not one slice per variable (which
        made XLA take ~0.5 s longer to compile a depth-40 step).
        """
        import jax.numpy as jnp

        if "grad" not in records:
            return loss_finite
        finite = loss_finite
        for table, mask in ((records["grad"], self._grad_mask), (records["var"], self._var_mask)):
            finite = finite & jnp.all(jnp.isfinite(table) | ~mask.reshape(table.shape))
        return finite

    def _function(self, log_grad, log_hist):
        """The jitted population step for one "what is due" key (gradient records, gradient histograms)."""
        import jax
        import jax.numpy as jnp

        key = (log_grad, log_hist and self.histograms)
        if key in self._functions:
            return self._functions[key]
        step = self.steps.population_step_function(*key)

        # Named for the compilation cache's files (`jit_population_step-…`).
        def population_step(state, alive, idx, x_all, y_all):
            x, y = jnp.take(x_all, idx, axis=0), jnp.take(y_all, idx, axis=0)
            logs, new, records, loss_finite = step(state, (x, y))
            finite = self._finite(records, loss_finite)
            # A frozen replica keeps its state: the update of its diverged step is its last.
            new = jax.tree_util.tree_map(lambda a, b: jnp.where(alive, a, b), new, state)
            return logs, new, records, alive & finite, finite

        fn = jax.jit(jax.vmap(population_step, in_axes=(0, 0, 0, None, None)), donate_argnums=0)
        self._functions[key] = fn
        return fn

    def _act(self, before, after, idx, first):
        """Per replica: a step's activation records, from its state ``before`` and its trainable values ``after``."""
        import jax
        import jax.numpy as jnp

        if self._act_fn is None:
            step = self.steps.act_function()

            def population_act(state, new_tv, idx, x_all, y_all, first):
                x, y = jnp.take(x_all, idx, axis=0), jnp.take(y_all, idx, axis=0)
                return step(state, new_tv, (x, y), first)

            # ``first`` is one for all replicas (not mapped).
            self._act_fn = jax.jit(jax.vmap(population_act, in_axes=(0, 0, 0, None, None, None)))
        return self._act_fn(before, after, idx, self.x_train, self.y_train, first)

    def _evaluate(self, tv, ntv):
        """Per replica: ``{"val_loss": ..., "val_accuracy": ...}`` arrays on the test batches (as `evaluate`)."""
        import jax

        model = self.template
        if self._eval is None:

            def population_test_step(tv, ntv, mv, x, y):
                logs, (_, _, mv) = model.test_step((tv, ntv, mv), (x, y))
                return logs, mv

            self._eval = jax.jit(jax.vmap(population_test_step, in_axes=(0, 0, 0, None, None)))
        mv, logs = self.metrics0, None
        for x, y in self.test:
            logs, mv = self._eval(tv, ntv, mv, x, y)
        return {f"val_{k}": v for k, v in (logs or {}).items()}

    # ------------------------------------------------------------ step 0

    def _measure_init(self):
        """Step 0: the records and metrics of the probe batch (the first examples), changing no replica's state."""
        import jax
        import jax.numpy as jnp

        n = len(self.probe[0])
        idx = np.broadcast_to(np.arange(n, dtype=np.int32), (self.size, n))
        frozen = jnp.zeros(self.size, bool)  # keeps every replica's state as it is
        state = (self.state[0], self.state[1], self.state[2], jax.tree_util.tree_map(jnp.copy, self.metrics0))
        step0 = self._function(True, True)
        logs, self.state, records, _, finite = step0(state, frozen, idx, self.x_train, self.y_train)
        records = {**records, "act": self._act(self.state, self.state[0], idx, True)}
        val = self._evaluate(self.state[0], self.state[1])
        records, logs, finite, val = jax.device_get((records, logs, finite, val))
        for r, logger in enumerate(self.loggers):
            logger.record(0, 0, records["grad"][r], records["act"][r], records["var"][r], _hist(records, r))
            self.last_history[r] = logger.record_history(0, 0, {**_pick(logs, r), **_pick(val, r)})
            if not finite[r]:
                self._diverge(r, 0)

    def _diverge(self, r, step):
        self.diverged[r] = step
        self.loggers[r].mark_diverged(step)

    # ------------------------------------------------------------ the loop

    def train(self, on_step=None):
        import jax
        import jax.numpy as jnp

        self._measure_init()
        alive = jnp.asarray([d is None for d in self.diverged])
        state = self.state
        step = 0
        for epoch in range(1, self.epochs + 1):
            if all(d is not None for d in self.diverged):
                break
            # `fit` resets the metrics at each epoch.
            state = (state[0], state[1], state[2], jax.tree_util.tree_map(jnp.copy, self.metrics0))
            pending = []
            for _ in range(self.per_epoch):
                step += 1
                act_due = step % self.act_every == 0
                fn = self._function(step % self.log_every == 0, act_due)
                idx = self.orders[step - 1]
                # The step donates its state: the activation records read a copy of it.
                before = jax.tree_util.tree_map(jnp.copy, state) if act_due else None
                logs, state, records, alive, _ = fn(state, alive, idx, self.x_train, self.y_train)
                if act_due:
                    records = {**records, "act": self._act(before, state[0], idx, False)}
                pending.append((step, logs, records, alive, act_due))
            val = self._evaluate(state[0], state[1])
            host, val = jax.device_get(([p[1:] for p in pending], val))
            self._record_epoch(epoch, [p[0] for p in pending], host, val, on_step)
        self.state = state

    def _record_epoch(self, epoch, steps, host, val, on_step):
        for r, logger in enumerate(self.loggers):
            if self.diverged[r] is not None:
                continue  # frozen in an earlier epoch: its run had ended there
            last = None
            for step, (logs, records, alive, act_due) in zip(steps, host, strict=True):
                grad = records.get("grad")
                act = records["act"] if act_due else None
                logger.record(
                    step,
                    epoch,
                    grad[r] if grad is not None else None,
                    act[r] if act is not None else None,
                    records["var"][r] if grad is not None else None,
                    _hist(records, r) if act is not None else None,
                )
                last = (step, logs)
                if not alive[r]:
                    self._diverge(r, step)
                    break
            step, logs = last
            self.steps_done[r] = step
            self.last_history[r] = logger.record_history(step, epoch, {**_pick(logs, r), **_pick(val, r)})
            if on_step is not None:
                try:
                    on_step(self.configs[r].run_id, step)
                except Exception:  # progress display must never break a run
                    pass

    def outcomes(self) -> list[dict]:
        """Per replica: the outcome fields of `bench.train.fit_logged` (steps, last losses, divergence)."""
        out = []
        for r in range(self.size):
            o = {"steps": int(self.steps_done[r])}
            row = self.last_history[r]
            if row is not None:
                for k in ("test_accuracy", "test_loss", "train_loss", "train_accuracy"):
                    o[k] = float(row[k])
            if self.diverged[r] is not None:
                o["status"] = "diverged"
                o["diverged_step"] = int(self.diverged[r])
            out.append(o)
        return out


def _stacked(*leaves):
    """The replicas' values of one variable, stacked on the host (`jnp.stack` compiles a program per shape)."""
    import jax.numpy as jnp

    return jnp.asarray(np.stack([np.asarray(a) for a in leaves]))


def _pick(logs, r) -> dict:
    return {k: float(np.asarray(v)[r]) for k, v in logs.items()}


def _hist(records, r):
    return records["hist"][r] if "hist" in records else None


# Per process: (examples, batch size, seed) → (the batches read so far, the iterator of epochs).
_ORDERS: dict = {}


def _batch_order(n: int, batch_size: int, seed: int, steps: int) -> list:
    """The example indices of each of a run's first ``steps`` batches, as its own pipeline orders them.

    The shuffle of `bench.data.make_tf_dataset` depends on the seed and the
    number of examples only, upstream of the batching, so a pipeline of
    indices batched a whole epoch at a time gives each epoch's order of the
    run's pipeline of examples, cut here into its batches (the last of an
    epoch smaller, as there; reading a pipeline of batches cost ~0.2 ms a
    batch). Kept per process, and read further only when a run needs more
    steps than read so far: the populations of a suite repeat the same seeds.
    """
    from vgbench.bench import data as data_mod

    if steps == 0:
        return []
    key = (n, batch_size, seed)
    if key not in _ORDERS:
        idx = np.arange(n, dtype=np.int32)
        epochs = data_mod.make_tf_dataset(idx, idx, batch_size=n, seed=seed, cache=False).repeat().as_numpy_iterator()
        # `fit` reads one batch to build the model's metrics, then starts a new
        # iterator: the run's order is that of the reshuffling pipeline's second
        # epoch on (its first iterator drew the first shuffle). The first epoch
        # is read and dropped here, in one iterator: a first iterator read to
        # one epoch-long batch would prefetch into the next epoch, and draw a
        # second shuffle.
        next(epochs)
        _ORDERS[key] = ([], epochs)
    batches, epochs = _ORDERS[key]
    while len(batches) < steps:
        epoch = next(epochs)[0]
        batches.extend(epoch[i : i + batch_size] for i in range(0, n, batch_size))
    return batches[:steps]
