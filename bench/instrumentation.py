"""Per-layer gradient norms and activation statistics of any Keras 3 model, recorded during `model.fit`.

`GradientNormLogger` is a Keras callback (TensorFlow and JAX backends). For
the duration of a `fit` it swaps the model's `train_step` for one that
computes the very gradients the optimizer applies (with a `tf.GradientTape`
on TensorFlow, `jax.value_and_grad` on JAX), and, inside the same compiled
step, reduces them to per-layer and per-variable norms. The numbers wait on
the device (in preallocated `tf.Variable` buffers on TensorFlow) and reach
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
one step per backend behind one interface (`bench.tapping.BackendSteps`:
`install`, `drain`, `measure`, `batch_end`), each owning its state: the TensorFlow tape step
(`bench.instrumentation_tf.Steps`), the JAX step
(`bench.instrumentation_jax.Steps`), and the JAX population step
(`bench.population`); the recorded rows and their tables
(`bench.tables.Tables`); TensorBoard events (`bench.summaries.LayerEvents`);
and this callback, which picks the step of the backend once and moves each
epoch's records from the step to the tables and events. A population's
replicas use the callback without `fit` (`begin`, `record`,
`record_history`, `finish`).

Reference:
    Glorot & Bengio, "Understanding the difficulty of training deep
    feedforward neural networks", AISTATS 2010 (per-layer gradient and
    activation statistics as the diagnosis of vanishing gradients).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from vgbench.bench import instrumentation_jax, instrumentation_tf, tables
from vgbench.bench.measures import ACT_FIELDS, GRAD_FIELDS, Measures
from vgbench.bench.quantities import SATURATION_THRESHOLD  # noqa: F401  (public name)

# Public names of this module, defined with the tables.
ACCURACY_METRICS, METRIC_PREFIX, accuracy_metric = tables.ACCURACY_METRICS, tables.METRIC_PREFIX, tables.accuracy_metric

# The instrumented step of each Keras backend the logger records on.
STEPS = {"tensorflow": instrumentation_tf.Steps, "jax": instrumentation_jax.Steps}


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
        if backend not in STEPS:
            raise ValueError(
                f"GradientNormLogger records on the TensorFlow and JAX backends only. Received: Keras backend "
                f"{backend!r} (set KERAS_BACKEND to tensorflow or jax before Keras is imported)"
            )
        self._steps_class = STEPS[backend]
        self._measures = None
        # Whether `fit` may hand the per-step logs to the callbacks off the
        # training thread (JAX: so that reading them does not wait for the step).
        self.async_safe = self._steps_class.async_safe
        self._reset()

    # ------------------------------------------------------------------ state

    def _reset(self, measures=None):
        self._tables = tables.Tables(measures)
        self._steps = None
        self._epoch = 0
        self._events = None
        self.layers, self.variables, self.history = tables.empty_frames()

    @property
    def diverged_step(self):
        """First step with a non-finite loss or gradient, or None."""
        return self._tables.diverged_step

    @diverged_step.setter
    def diverged_step(self, step):
        self._tables.diverged_step = step

    def on_train_begin(self, logs=None):
        self._setup(self.model)
        if self.probe_data is not None:
            self._measure_init()
        # Swap in the instrumented step for this fit; restored in on_train_end.
        steps = self.params.get("steps") if self.params else None
        self._steps.install(self.model, steps_per_epoch=steps)

    def _setup(self, model):
        """Finds the units, makes this fit's step and opens the event writer."""
        self._measures = Measures(model, histograms=self.tensorboard_dir is not None)
        self._reset(self._measures)
        self._steps = self._steps_class(
            model,
            self._measures,
            log_every=self.log_every,
            act_every=self.act_every,
            on_diverged=self._mark_diverged,
            flush=self._flush,
        )
        if self.tensorboard_dir is not None:
            from vgbench.bench.summaries import LayerEvents

            self._events = LayerEvents(
                self.tensorboard_dir, self.run_id, [u.name for u in self._measures.units], GRAD_FIELDS, ACT_FIELDS
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

    @property
    def started(self) -> bool:
        """Whether the logger has found its model's units (`fit` began, or `begin` was called)."""
        return self._measures is not None

    def record(self, step, epoch, grad=None, act=None, var=None, hist=None):
        """Appends one step's records (`Steps` arrays of one replica; None: not measured at this step)."""
        self._record(step, epoch, grad, act, var, hist)

    def record_history(self, step, epoch, logs):
        """Appends one history row from `fit`-style logs (``loss``, ``accuracy``, ``val_loss``, ...); returns it."""
        return self._tables.record_history(step, epoch, logs)

    def mark_diverged(self, step):
        """Records the first step with a non-finite loss or gradient."""
        self._tables.mark_diverged(step)

    def finish(self):
        """Closes the TensorBoard writer and builds the tables (`layers`, `variables`, `history`)."""
        if self._events is not None:
            self._events.close()
            self._events = None
        self.layers, self.variables, self.history = self._tables.frames(self.run_id)

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
        if self._steps is not None:
            self._steps.functions.clear()
        self.finish()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        # The step looks at the loss `fit` reports (TensorFlow) or watches it
        # itself (JAX: the step dispatcher, see `bench.instrumentation_jax`).
        self._steps.batch_end(logs)

    def _mark_diverged(self, step: int):
        self._tables.mark_diverged(step)
        # `_model`: on JAX, `Callback.model` syncs the variables with a state
        # that the running step may already have moved on from.
        self._model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self._flush()
        step = int(self.model.optimizer.iterations.numpy())
        self._tables.record_history(step, epoch + 1, logs or {})

    # ------------------------------------------------------- step 0 (at init)

    def _measure_init(self):
        model = self.model
        x, y = self.probe_data
        # The step leaves the model's state untouched (batch-norm moving statistics included).
        g, var, a, h, loss, y_pred = self._steps.measure(x, y)
        self._record(0, 0, g, a, var, h)
        # The step-0 train metrics: the model's own compiled metrics on the
        # probe batch (their state is reset before and after; `fit` resets
        # them at each epoch anyway).
        model.reset_metrics()
        logs = {k: tables.as_float(v) for k, v in model.compute_metrics(x, y, y_pred, sample_weight=None).items()}
        model.reset_metrics()
        logs["loss"] = loss
        if self.test_data is not None:
            test = self.test_data
            if isinstance(test, (tuple, list)):
                test = tf.data.Dataset.from_tensor_slices(tuple(test)).batch(512)
            res = model.evaluate(test, verbose=0, return_dict=True)
            logs.update({f"val_{k}": tables.as_float(v) for k, v in res.items()})
        self._tables.record_history(0, 0, logs)
        if not np.isfinite(self._measures.all_variable_norms(g, var)).all() or not np.isfinite(loss):
            self._mark_diverged(0)

    # ----------------------------------------------------------- to Python

    def _flush(self):
        """Moves the step's records into the tables and TensorBoard (once per epoch)."""
        if self._steps is None:
            return
        grad, act = self._steps.drain()
        for s in sorted(grad):
            if not np.isfinite(self._measures.all_variable_norms(*grad[s])).all():
                self._mark_diverged(s)
                break
        diverged = self.diverged_step if self.diverged_step is not None else -1
        for s in sorted(set(grad) | set(act)):
            if diverged >= 0 and s > diverged:
                continue
            g, var = grad.get(s, (None, None))
            a, hist = act.get(s, (None, None))
            self._record(s, self._epoch, g, a, var, hist)
        if self._events is not None:
            self._events.flush()

    def _record(self, step, epoch, g, a, var, hist):
        """Appends one step's records (None: not measured at this step) to the tables and TensorBoard."""
        self._tables.record(step, epoch, g, a, var)
        if self._events is not None:
            self._events.record(step, g, a, hist)
