"""Per-layer gradient norms and activation statistics of any Keras 3 model, recorded during `model.fit`.

`GradientNormLogger` is a Keras callback (TensorFlow backend). For the
duration of a `fit` it swaps the model's `train_step` for one that computes
the very gradients the optimizer applies with a `tf.GradientTape`, and,
inside the same compiled step, reduces them to per-layer and per-variable
norms. The numbers go into preallocated buffers (`tf.Variable`s) and reach
Python once per epoch. Per step, Python only picks which compiled step to
run (gradient norms and/or activation statistics due?) and looks at the loss
`fit` already reports.

Which layers: every layer with trainable weights, of a Sequential,
functional or subclassed model, in the order the forward pass calls them
(`layer_index` 0 first), named by the layer's path (`layer.path`). Keras'
own layers are units as a whole (an `LSTM` with its cell, a
`MultiHeadAttention` with its projections, a `Bidirectional` wrapper);
nested models and user-defined layers without weights of their own are
looked into; a user-defined layer with weights of its own is one unit with
all the weights below it. Models built by `models.build_model` are
recognized by their layer names and keep their blocks: ``hidden_{i}`` (its
weight layer, with the norm, projection and PReLU weights of block ``i`` in
the variables table) and ``output``, the pre-activation being the input of
the block's activation layer.

How activations are found: while the instrumented step is traced (and for
the step-0 pass), each unit's `call` (and the `activation` attribute of a
layer that has one, e.g. ``Dense(activation="relu")``) is wrapped on the
instance, so that the one forward pass records each unit's output and its
pre-activation z (the input of its activation function, or its output when
it has none); the wrappers are removed right after, so the compiled step
holds plain ops. A layer called more than once per pass (a shared layer)
counts once: its weight gradients are the optimizer's (summed over the
calls), its output and z are those of its first call. A layer that returns
several tensors (an RNN with states, attention with scores) is recorded by
its first output.

What is recorded, per layer:

- every ``log_every`` steps: ``kernel_grad_norm`` (L2 norm of the gradient
  of the layer's main weight: ``kernel``, else ``depthwise_kernel``, else
  ``embeddings``, else ``gamma`` (normalization); an RNN's input kernel, its
  cell's ``kernel``; else its first trainable variable that is not its
  bias), ``bias_grad_norm`` (of ``bias``, or ``beta`` for a
  normalization) and ``backward_rms`` (RMS of batch size × ∂L/∂z, from the
  same ``tape.gradient`` call); and, in the ``variables`` table, the
  gradient norm of every trainable variable;
- every ``act_every`` steps: ``preact_rms`` (RMS of z: read every step, z
  cost ~10% of a step), ``kernel_norm``, ``update_ratio``
  (‖ΔW‖/‖W‖ of that step's update), and ``act_mean``, ``act_std``,
  ``act_rms``, ``saturated_fraction`` and ``dead_fraction`` (from the
  derivative of the layer's activation at z, for the activations of
  `models.activations`; NaN for others and for layers without one) and
  ``inactive_fraction`` (ReLU family); with ``tensorboard_dir``, also a
  histogram of log10|g| over the layer's weight gradients;
- step 0: all of the above except ``update_ratio``, at initialization, on a
  fixed probe batch, before any update, with the model's own `compute_loss`
  and compiled metrics.

Where a layer's output cannot be recorded (a layer the forward pass never
calls, an output that is not a floating-point tensor with a batch axis), its
gradient norms are still recorded, the quantities that need the output or z
are NaN, and one warning line says so.

Step ``s >= 1`` is the ``s``-th optimizer update; the gradients recorded at
step ``s`` are the ones that update applied.

A non-finite loss or gradient marks the run diverged at that step; training
stops after that step and everything recorded before it is kept.

The parts: which layers are recorded (`bench.units`); the records of one
forward and backward pass, from the quantity registry (`bench.measures`);
one step per backend, each owning its state: the TensorFlow tape step
(here), the JAX step (`bench.instrumentation_jax.Steps`) and the JAX
population step (`bench.population`); and this callback, which holds the
buffers' records as tables and writes TensorBoard events. A population's
replicas use the callback without `fit` (`begin`, `record`,
`record_history`, `finish`).

Reference:
    Glorot & Bengio, "Understanding the difficulty of training deep
    feedforward neural networks", AISTATS 2010 (per-layer gradient and
    activation statistics as the diagnosis of vanishing gradients).
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from vgbench.bench import instrumentation_jax
from vgbench.bench.measures import ACT_FIELDS as _ACT_FIELDS
from vgbench.bench.measures import GRAD_FIELDS as _GRAD_FIELDS
from vgbench.bench.measures import Measures
from vgbench.bench.quantities import SATURATION_THRESHOLD  # noqa: F401  (public name)
from vgbench.bench.results import HISTORY_COLUMNS, LAYER_COLUMNS, VARIABLE_COLUMNS
from vgbench.bench.summaries import HISTOGRAM_EDGES as _HIST_EDGES
from vgbench.bench.tapping import Pass as _Pass
from vgbench.bench.tapping import tapped as _tapped

# The compiled metrics that fill the history's accuracy columns, by
# preference; else the first other one whose name ends in "accuracy" or "acc"
# (not a top-k accuracy). Every other compiled metric goes to a column
# "metric:NAME" ("metric:val_NAME" on the test data).
ACCURACY_METRICS = ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy", "binary_accuracy")
METRIC_PREFIX = "metric:"


def accuracy_metric(names) -> str | None:
    """The compiled metric that the history's accuracy columns report, among log keys ``names``; None if none."""
    names = [n for n in names if not n.startswith("val_")]
    for name in ACCURACY_METRICS:
        if name in names:
            return name
    for name in names:
        if (name.endswith("accuracy") or name.endswith("_acc")) and "top_k" not in name:
            return name
    return None


# --------------------------------------------------------------------------- #
# The callback
# --------------------------------------------------------------------------- #


class GradientNormLogger(keras.callbacks.Callback):
    """Records per-layer and per-variable gradient norms and activation statistics during `fit`.

    Works with any Keras 3 model on the TensorFlow or JAX backend (Sequential,
    functional, subclassed), any compiled loss and label format.

    Args:
        probe_data: ``(x, y)`` of a fixed batch, used for the step-0
            measurement at initialization. Without it, no step-0 record.
        test_data: optional ``(x, y)`` or `tf.data.Dataset` of batches,
            evaluated at step 0 for the history table (later evaluations
            come from `fit`'s ``validation_data``).
        log_every: record gradient norms every this many steps.
        act_every: record activation statistics, kernel norms and update
            ratios (and gradient histograms) every this many steps.
        run_id: the value of the ``run_id`` column of the tables.
        tensorboard_dir: optional directory: the per-layer quantities are
            also written as TensorBoard scalars (tag ``QUANTITY/LAYER_NAME``)
            at every recorded step, and a histogram of log10|g| over each
            layer's weight gradients (tag ``grad_log10/LAYER_NAME``) every
            ``act_every`` steps, into ``tensorboard_dir/RUN_ID`` (``run``
            when ``run_id`` is empty).

    Attributes (after `fit`):
        layers: DataFrame in the ``layers.parquet`` layout.
        variables: DataFrame in the ``variables.parquet`` layout: one row
            per step and trainable variable, on the gradient cadence.
        history: DataFrame in the ``history.parquet`` layout, plus a column
            ``metric:NAME`` per other compiled metric.
        diverged_step: first step with a non-finite loss or gradient, or None.
    """

    def __init__(self, probe_data=None, test_data=None, log_every=1, act_every=10, run_id="", tensorboard_dir=None):
        super().__init__()
        for arg, value in (("log_every", log_every), ("act_every", act_every)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Argument `{arg}` must be a positive integer. Received: {arg}={value!r}")
        self.probe_data = probe_data
        self.test_data = test_data
        self.log_every = log_every
        self.act_every = act_every
        self.run_id = run_id
        self.tensorboard_dir = tensorboard_dir
        # The backend Keras runs (fixed per process): TensorFlow, or JAX.
        backend = keras.backend.backend()
        if backend not in ("tensorflow", "jax"):
            raise ValueError(
                f"GradientNormLogger records on the TensorFlow and JAX backends only. Received: Keras backend "
                f"{backend!r} (set KERAS_BACKEND to tensorflow or jax before Keras is imported)"
            )
        self._jax = backend == "jax"
        # JAX: `fit` may hand the per-step logs to the callbacks off the
        # training thread (so that reading them does not wait for the step);
        # this logger reads nothing there (see `on_train_batch_end`).
        self.async_safe = self._jax
        self._reset()

    # ------------------------------------------------------------------ state

    def _reset(self):
        self._layer_rows = []
        self._variable_rows = []
        self._history_rows = []
        self._flushed_grad = 0
        self._flushed_act = 0
        self._epoch = 0
        self._counter = None
        self._flushed_at = 0
        self._flush_every = 1
        self._events = None
        self.diverged_step = None
        self.layers = pd.DataFrame(columns=LAYER_COLUMNS)
        self.variables = pd.DataFrame(columns=VARIABLE_COLUMNS)
        self.history = pd.DataFrame(columns=HISTORY_COLUMNS)

    def on_train_begin(self, logs=None):
        self._setup(self.model)
        if self.probe_data is not None:
            self._measure_init()
        # Swap in the instrumented step for this fit; restored in on_train_end.
        if self._jax:
            self._jax_steps.install(self.model)
        else:
            self._install(self.model)

    def _setup(self, model):
        """Finds the units and where each variable's norm comes from; makes the buffers and the event writer."""
        self._reset()
        self._measures = Measures(model, histograms=self.tensorboard_dir is not None)
        self._units = self._measures.units
        n = len(self._units)

        # Buffers hold one epoch (or 10,000 steps when the epoch length is
        # unknown; they are then flushed whenever they fill up).
        steps = self.params.get("steps") if self.params else None
        per_epoch = steps if steps else 10_000
        self._grad_cap = max(1, math.ceil(per_epoch / self.log_every)) + 1
        self._act_cap = max(1, math.ceil(per_epoch / self.act_every)) + 1
        self._histograms = self._measures.histograms
        if self._jax:
            self._jax_steps = instrumentation_jax.Steps(
                model,
                self._measures,
                log_every=self.log_every,
                act_every=self.act_every,
                on_diverged=self._mark_diverged,
                flush=self._flush,
            )
        else:
            self._make_buffers(n)

        if self.tensorboard_dir is not None:
            from vgbench.bench.results import run_dir_name
            from vgbench.bench.summaries import EventWriter

            self._events = EventWriter(
                Path(self.tensorboard_dir) / (run_dir_name(self.run_id) if self.run_id else "run")
            )

    # ------------------------------------------- recording without `fit`

    def begin(self, model, steps_per_epoch=None):
        """Prepares to record ``model`` from steps computed elsewhere (a `bench.population` replica).

        Finds the units and opens the TensorBoard writer, as `fit` would at
        its start, but neither measures step 0 nor replaces the train step:
        the caller hands in each step's records (`record`) and history rows
        (`record_history`), then builds the tables (`finish`).
        """
        self.set_model(model)
        self.set_params({"epochs": 1, "steps": steps_per_epoch, "verbose": 0})
        self._setup(model)
        return self

    @property
    def measures(self):
        """The `bench.measures.Measures` of this fit: the units, and the records of a pass."""
        return self._measures

    def record(self, step, epoch, grad=None, act=None, var=None, hist=None):
        """Appends one step's records (`Steps` arrays of one replica; None: not measured at this step)."""
        self._record(step, epoch, grad, act, var, hist)

    def record_history(self, step, epoch, logs):
        """Appends one history row from `fit`-style logs (``loss``, ``accuracy``, ``val_loss``, ...); returns it."""
        row = _history_row(step, epoch, logs)
        self._history_rows.append(row)
        return row

    def mark_diverged(self, step):
        """Records the first step with a non-finite loss or gradient."""
        if self.diverged_step is None or step < self.diverged_step:
            self.diverged_step = step

    def finish(self):
        """Closes the TensorBoard writer and builds the tables (`layers`, `variables`, `history`)."""
        if self._events is not None:
            self._events.close()
            self._events = None
        self.layers = _layer_frame(self._layer_rows, self.run_id, self._units, self._measures.layer_positions())
        self.variables = _variable_frame(self._variable_rows, self.run_id)
        history = pd.DataFrame(self._history_rows)
        for c in HISTORY_COLUMNS[1:]:
            if c not in history.columns:
                history[c] = np.nan
        extra = sorted(c for c in history.columns if c not in HISTORY_COLUMNS)
        history = history[HISTORY_COLUMNS[1:] + extra].astype({"step": "int64", "epoch": "int64"})
        history.insert(0, "run_id", self.run_id)
        self.history = history

    def _make_buffers(self, n):
        """TensorFlow: the preallocated buffers the compiled step writes its records into."""
        nan = float("nan")
        bins = len(_HIST_EDGES) - 1
        with tf.init_scope():
            self._grad_buf = tf.Variable(tf.fill([self._grad_cap, n, len(_GRAD_FIELDS)], nan), trainable=False)
            others = max(1, len(self._measures.other_idx))
            self._var_buf = tf.Variable(tf.fill([self._grad_cap, others], nan), trainable=False)
            self._grad_step = tf.Variable(tf.zeros([self._grad_cap], tf.int64), trainable=False)
            self._grad_count = tf.Variable(0, dtype=tf.int64, trainable=False)
            self._act_buf = tf.Variable(tf.fill([self._act_cap, n, len(_ACT_FIELDS)], nan), trainable=False)
            hist_rows = self._act_cap if self._histograms else 1
            self._hist_buf = tf.Variable(tf.zeros([hist_rows, n, bins]), trainable=False)
            self._act_step = tf.Variable(tf.zeros([self._act_cap], tf.int64), trainable=False)
            self._act_count = tf.Variable(0, dtype=tf.int64, trainable=False)
            self._shadow = [tf.Variable(tf.zeros_like(u.kernel.value), trainable=False) for u in self._units]

    def on_train_end(self, logs=None):
        self.finalize()

    def finalize(self):
        """Restores the model's own train step and builds the tables.

        Called by `on_train_end`; call it yourself when `fit` raised, to keep
        what was recorded until then.
        """
        self._flush()
        model = self.model
        if "train_step" in model.__dict__:
            del model.train_step
        model.train_function = None
        self._functions = {}
        if self._jax:
            self._jax_steps.functions.clear()
        self.finish()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        # `fit` has already turned the logs into Python floats: checking the
        # loss here is free. (Keras' running mean stays non-finite once a
        # step's loss was.) Non-finite gradients under a finite loss are found
        # in the buffers at the end of the epoch.
        if self._jax:
            return  # JAX: the step dispatcher watches the loss (see `bench.instrumentation_jax`)
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss) and self.diverged_step is None:
            self._mark_diverged(self._current_step())
        if self._counter is not None and self._counter[0] - self._flushed_at >= self._flush_every:
            self._flush()

    def _current_step(self) -> int:
        if self._counter is not None:
            return self._counter[0]
        return int(self.model.optimizer.iterations.numpy())

    def _mark_diverged(self, step: int):
        if self.diverged_step is None or step < self.diverged_step:
            self.diverged_step = step
        # `_model`: on JAX, `Callback.model` syncs the variables with a state
        # that the running step may already have moved on from.
        self._model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self._flush()
        step = int(self.model.optimizer.iterations.numpy())
        self._history_rows.append(_history_row(step, epoch + 1, logs or {}))

    # ------------------------------------------------------- step 0 (at init)

    def _measure_init(self):
        model = self.model
        x, y = self.probe_data
        if self._jax:
            # Stateless: the batch-norm moving statistics stay untouched.
            g, var, a, h, loss, y_pred = self._jax_steps.measure(x, y)
        else:
            x = tf.nest.map_structure(tf.convert_to_tensor, x)
            y = tf.nest.map_structure(tf.convert_to_tensor, y)
            # Training-mode forward pass (as in the first update), but leave the
            # model untouched: batch-norm moving statistics are restored after.
            saved = [v.numpy() for v in model.non_trainable_weights]
            p = self._forward_backward(x, y)
            for v, value in zip(model.non_trainable_weights, saved, strict=True):
                v.assign(value)
            g = self._measures.grad_norms(p).numpy()
            var = self._measures.variable_norms(p).numpy()
            a = self._measures.act_stats(p).numpy()
            h = self._measures.hist(p).numpy() if self._histograms else None
            loss, y_pred = float(p.loss), p.y_pred
        self._record(0, 0, g, a, var, h)
        # The step-0 train metrics: the model's own compiled metrics on the
        # probe batch (their state is reset before and after; `fit` resets
        # them at each epoch anyway).
        model.reset_metrics()
        logs = {k: _float(v) for k, v in model.compute_metrics(x, y, y_pred, sample_weight=None).items()}
        model.reset_metrics()
        logs["loss"] = loss
        if self.test_data is not None:
            test = self.test_data
            if isinstance(test, (tuple, list)):
                test = tf.data.Dataset.from_tensor_slices(tuple(test)).batch(512)
            res = model.evaluate(test, verbose=0, return_dict=True)
            logs.update({f"val_{k}": _float(v) for k, v in res.items()})
        self._history_rows.append(_history_row(0, 0, logs))
        if not np.isfinite(self._measures.all_variable_norms(g, var)).all() or not np.isfinite(loss):
            self._mark_diverged(0)

    # --------------------------------------------------------- compiled step

    def _forward_backward(self, x, y, sample_weight=None, track_loss=False):
        """One forward and backward pass: the optimizer's gradients and the recorded signals.

        The gradients with respect to the weights and to every layer's
        pre-activation come from one `tape.gradient` call on the loss the
        optimizer scales, so the backward signal costs no second pass.
        """
        model = self.model
        opt = model.optimizer
        with tf.GradientTape() as tape:
            with _tapped(self._units) as rec:
                y_pred = model(x, training=True) if model._call_has_training_arg else model(x)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            batch = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
            if track_loss:
                tracker = getattr(model, "_loss_tracker", None)
                if tracker is not None:
                    tracker.update_state(loss, sample_weight=batch)
            scaled = opt.scale_loss(loss)
        self._measures.learn_order(rec)
        weights = model.trainable_weights
        n = len(self._units)
        # z is read where it was recorded; a z that the loss does not depend
        # on has a zero gradient.
        zs = [rec.preact.get(i) for i in range(n)]
        sources = [z for z in zs if z is not None]
        both = tape.gradient(scaled, [*weights, *sources])
        dz = iter(both[len(weights) :])
        preact_grads = []
        for z in zs:
            g = next(dz) if z is not None else None
            preact_grads.append(tf.zeros_like(z) if z is not None and g is None else g)
        # Loss scaling (mixed precision): the recorded gradients are the
        # loss's own. The scale is read before the update, which may change it.
        unscale = None
        if not (type(opt).scale_loss is keras.optimizers.Optimizer.scale_loss and opt.loss_scale_factor is None):
            unscale = 1.0 / tf.cast(opt.scale_loss(tf.ones([])), tf.float32)
        return _Pass(
            y_pred=y_pred,
            loss=loss,
            acts=[rec.output.get(i) for i in range(n)],
            preacts=zs,
            grads=both[: len(weights)],
            preact_grads=preact_grads,
            batch_size=tf.cast(batch, tf.float32),
            unscale=unscale,
        )

    def _install(self, model):
        """Replaces `model.train_function` for this fit.

        With one step per call (Keras' default), a Python dispatcher picks one
        of up to four compiled steps by what is due at this step (gradient
        norms? activation statistics?), so no step pays for a `tf.cond`:
        a conditional costs about as much as all the norms together. With
        ``steps_per_execution > 1`` the decision moves into the graph.
        """
        self._functions = {}
        self._counter = None
        start = int(model.optimizer.iterations.numpy())
        if int(getattr(model, "steps_per_execution", 1) or 1) != 1:
            model.train_step = lambda data: self._train_step(data, None, None)
            model.make_train_function(force=True)
            return
        counter = self._counter = [start]
        self._flushed_at = start
        self._flush_every = min((self._grad_cap - 1) * self.log_every, (self._act_cap - 1) * self.act_every)

        def compiled(key):
            model.train_step = lambda data: self._train_step(data, *key)
            type(model).make_train_function(model, force=True)
            fn = model.train_function
            model.train_function = train_function
            return fn

        def train_function(iterator):
            counter[0] += 1
            key = (counter[0] % self.log_every == 0, counter[0] % self.act_every == 0)
            fn = self._functions.get(key) or self._functions.setdefault(key, compiled(key))
            try:
                return fn(iterator)
            except BaseException:  # e.g. the end of the data: no step was taken
                counter[0] -= 1
                raise

        model.train_function = train_function

    def _train_step(self, data, log_grad, log_act):
        """Keras' TensorFlow `train_step`, with the recording added.

        ``log_grad``/``log_act``: Python booleans (what this compiled step
        records), or None to decide in the graph from the step number.
        """
        model = self.model
        opt = model.optimizer
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        p = self._forward_backward(x, y, sample_weight, track_loss=True)
        y_pred, grads = p.y_pred, p.grads
        weights = model.trainable_weights

        step = opt.iterations + 1  # this update's 1-based step number

        def snapshot():
            for unit, shadow in zip(self._units, self._shadow, strict=True):
                shadow.assign(unit.kernel.value)
            return tf.constant(0)

        def record_grads():
            norms = self._measures.grad_norms(p)
            row = self._grad_count % self._grad_cap
            self._grad_buf[row].assign(norms)
            if self._measures.other_idx:
                self._var_buf[row].assign(self._measures.variable_norms(p))
            self._grad_step[row].assign(step)
            self._grad_count.assign_add(1)
            return tf.constant(0)

        def record_acts():
            stats = self._measures.act_stats(p, previous=[shadow.read_value() for shadow in self._shadow])
            row = self._act_count % self._act_cap
            self._act_buf[row].assign(stats)
            if self._histograms:
                self._hist_buf[row].assign(self._measures.hist(p))
            self._act_step[row].assign(step)
            self._act_count.assign_add(1)
            return tf.constant(0)

        def when(flag, every, fn, otherwise):
            if flag is None:
                return tf.cond(tf.equal(step % every, 0), fn, otherwise)
            return fn() if flag else otherwise()

        # Stateful ops run in program order inside a tf.function: recording
        # after the update lets the norms overlap with it instead of
        # delaying it. Only the snapshot for the update ratio must come first.
        when(log_act, self.act_every, snapshot, lambda: tf.constant(0))
        opt.apply_gradients(zip(grads, weights, strict=True))
        when(log_grad, self.log_every, record_grads, lambda: tf.constant(0))
        when(log_act, self.act_every, record_acts, lambda: tf.constant(0))
        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    # ----------------------------------------------------------- to Python

    def _flush(self):
        """Moves buffered records into Python lists (once per epoch)."""
        if self._jax:
            if not hasattr(self, "_jax_steps"):
                return
            grad, act = self._jax_steps.drain()
        else:
            if not hasattr(self, "_grad_count"):
                return
            if self._counter is not None:
                self._flushed_at = self._counter[0]
            grad = _drain(
                [self._grad_buf, self._var_buf], self._grad_step, self._grad_count, self._flushed_grad, self._grad_cap
            )
            act_bufs = [self._act_buf, self._hist_buf] if self._histograms else [self._act_buf]
            act = _drain(act_bufs, self._act_step, self._act_count, self._flushed_act, self._act_cap)
            self._flushed_grad = int(self._grad_count.numpy())
            self._flushed_act = int(self._act_count.numpy())
        for s in sorted(grad):
            if not np.isfinite(self._measures.all_variable_norms(*grad[s])).all():
                self._mark_diverged(s)
                break
        diverged = self.diverged_step if self.diverged_step is not None else -1
        for s in sorted(set(grad) | set(act)):
            if diverged >= 0 and s > diverged:
                continue
            g, var = grad.get(s, (None, None))
            a = act.get(s, (None, None))
            self._record(s, self._epoch, g, a[0], var, a[1] if self._histograms else None)
        if self._events is not None:
            self._events.flush()

    def _record(self, step, epoch, g, a, var, hist):
        """Appends one step's records (None: not measured at this step) to the tables and TensorBoard."""
        n = len(self._units)
        g = np.full((n, len(_GRAD_FIELDS)), np.nan) if g is None else g
        a = np.full((n, len(_ACT_FIELDS)), np.nan) if a is None else a
        positions = self._measures.layer_positions()
        for i, unit in enumerate(self._units):
            self._layer_rows.append((step, epoch, positions[i], unit.name, *g[i], *a[i]))
        if var is not None:
            var = self._measures.all_variable_norms(g, var)
            for k, (i, v, name) in enumerate(self._measures.variables):
                size = self._measures.var_sizes[k]
                self._variable_rows.append((step, epoch, positions[i], self._units[i].name, name, v.path, size, var[k]))
        if self._events is not None:
            scalars = {}
            for i, unit in enumerate(self._units):
                for name, value in zip((*_GRAD_FIELDS, *_ACT_FIELDS), (*g[i], *a[i]), strict=True):
                    scalars[f"{name}/{unit.name}"] = value
            self._events.scalars(step, scalars)
            if hist is not None:
                self._events.histograms(step, {f"grad_log10/{u.name}": hist[i] for i, u in enumerate(self._units)})


def _drain(bufs, step_buf, count_var, flushed, cap):
    """{step: (values of each buffer)} for the records written since the last flush."""
    count = int(count_var.numpy())
    if count == flushed:
        return {}
    values, steps = [b.numpy() for b in bufs], step_buf.numpy()
    first = max(flushed, count - cap)  # older rows were overwritten
    return {int(steps[k % cap]): tuple(v[k % cap] for v in values) for k in range(first, count)}


def _layer_frame(rows, run_id, units, positions):
    cols = ["step", "epoch", "layer_index", "layer_name", *_GRAD_FIELDS, *_ACT_FIELDS]
    df = pd.DataFrame(rows, columns=cols)
    df.insert(0, "run_id", run_id)
    df = df.astype({"step": "int64", "epoch": "int64", "layer_index": "int64"})
    for c in (*_GRAD_FIELDS, *_ACT_FIELDS):
        df[c] = df[c].astype("float64")
    # Parameter counts, so that layers of different sizes compare per weight.
    sizes = {positions[i]: (u.kernel_size, u.bias_size) for i, u in enumerate(units)}
    df["kernel_size"] = df["layer_index"].map(lambda i: sizes[i][0]).astype("int64")
    df["bias_size"] = df["layer_index"].map(lambda i: sizes[i][1]).astype("int64")
    df = df[[*LAYER_COLUMNS, "kernel_size", "bias_size"]]
    return df.sort_values(["step", "layer_index"], kind="stable").reset_index(drop=True)


def _variable_frame(rows, run_id):
    df = pd.DataFrame(rows, columns=VARIABLE_COLUMNS[1:])
    df.insert(0, "run_id", run_id)
    df = df.astype({"step": "int64", "epoch": "int64", "layer_index": "int64", "size": "int64", "grad_norm": "float64"})
    return df.sort_values(["step", "layer_index"], kind="stable").reset_index(drop=True)


def _history_row(step, epoch, logs) -> dict:
    """One history row from `fit`'s logs: loss, the accuracy-like metric, and every other compiled metric."""
    acc = accuracy_metric(logs)
    row = {
        "step": step,
        "epoch": epoch,
        "train_loss": _float(logs.get("loss")),
        "train_accuracy": _float(logs.get(acc)) if acc else float("nan"),
        "test_loss": _float(logs.get("val_loss")),
        "test_accuracy": _float(logs.get(f"val_{acc}")) if acc else float("nan"),
    }
    skip = {"loss", "val_loss", acc, f"val_{acc}"}
    for key, value in logs.items():
        if key not in skip:
            row[METRIC_PREFIX + key] = _float(value)
    return row


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")
