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

Reference:
    Glorot & Bengio, "Understanding the difficulty of training deep
    feedforward neural networks", AISTATS 2010 (per-layer gradient and
    activation statistics as the diagnosis of vanishing gradients).
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from keras import ops

from vgbench import models
from vgbench.bench import instrumentation_jax, quantities
from vgbench.bench import quantities as Q
from vgbench.bench.quantities import SATURATION_THRESHOLD  # noqa: F401  (public name)
from vgbench.bench.results import HISTORY_COLUMNS, LAYER_COLUMNS, VARIABLE_COLUMNS
from vgbench.bench.summaries import HISTOGRAM_EDGES as _HIST_EDGES
from vgbench.bench.summaries import HISTOGRAM_FLOOR
from vgbench.bench.tapping import Pass as _Pass
from vgbench.bench.tapping import tapped as _tapped

# The measured columns of layers.parquet, in the buffers' order.
_GRAD_FIELDS = quantities.cadence_fields("grad")
_ACT_FIELDS = quantities.cadence_fields("act")
_GRAD_QUANTITIES = [quantities.LAYER_QUANTITIES[name] for name in _GRAD_FIELDS]
_ACT_QUANTITIES = [quantities.LAYER_QUANTITIES[name] for name in _ACT_FIELDS]
_KERNEL_FIELD = _GRAD_FIELDS.index(Q.KERNEL_GRAD_NORM)
_BIAS_FIELD = _GRAD_FIELDS.index(Q.BIAS_GRAD_NORM)

# The compiled metrics that fill the history's accuracy columns, by
# preference; else the first other one whose name ends in "accuracy" or "acc"
# (not a top-k accuracy). Every other compiled metric goes to a column
# "metric:NAME" ("metric:val_NAME" on the test data).
ACCURACY_METRICS = ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy", "binary_accuracy")
METRIC_PREFIX = "metric:"

_BLOCK_NAME = re.compile(r"hidden_(\d+)(?:_[a-z]+)?")


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
# Which layers: units
# --------------------------------------------------------------------------- #


class _Unit:
    """One instrumented layer: its trainable variables, main weight and bias, and where its output and z are read.

    Attributes:
        name: the ``layer_name`` of its rows.
        layer: the layer whose `call` gives the output (None: never called,
            e.g. variables of the model itself).
        act_layer: for a block of `models.build_model`, the activation layer
            whose input is z and whose output is the output.
        index: a fixed ``layer_index`` (blocks of `models.build_model`), or
            None for the position in call order.
        variables: ``[(variable, name relative to the layer)]``.
        tap_activation: read z at the ``activation`` attribute of ``layer``.
        activation: the `models.activations.Activation` at z, or None
            (no activation, or one the registry does not know).
        activation_name: the activation's name, for the warning about an
            unknown one ("" when none).
    """

    def __init__(self, name, layer, variables, *, act_layer=None, index=None, main_of=None):
        self.name = name
        self.layer = layer
        self.act_layer = act_layer
        self.index = index
        self.variables = variables
        owner = main_of if main_of is not None else layer
        self.kernel, self.bias = _main_weight_and_bias(owner, [v for v, _ in variables])
        self.kernel_size = int(np.prod(self.kernel.shape))
        self.bias_size = int(np.prod(self.bias.shape)) if self.bias is not None else 0
        self.slope = None
        self.tap_activation = False
        self.activation = None
        self.activation_name = ""
        if act_layer is not None:
            self.activation = _activation_of(act_layer)
            self.activation_name = type(act_layer).__name__
            if type(act_layer).__name__ == "PReLU":
                self.slope = act_layer.alpha
        elif layer is not None:
            fn = layer.__dict__.get("activation")
            if callable(fn) and not isinstance(fn, keras.layers.Layer):
                self.tap_activation = True
                self.activation_name = getattr(fn, "__name__", type(fn).__name__)
                self.activation = _activation_of_function(fn)


def _main_weight_and_bias(layer, variables):
    """The variable that ``kernel_grad_norm`` reports and the one ``bias_grad_norm`` reports (or None)."""
    ids = {id(v) for v in variables}
    target = getattr(layer, "cell", None) if isinstance(layer, keras.layers.RNN) else layer

    def attr(obj, name):
        try:
            v = getattr(obj, name, None)
        except Exception:  # a property that cannot be read (e.g. before build)
            return None
        return v if isinstance(v, keras.Variable) and id(v) in ids else None

    bias = next((v for obj in (target, layer) for name in ("bias", "beta") if (v := attr(obj, name)) is not None), None)
    for name in ("kernel", "_kernel", "depthwise_kernel", "embeddings", "gamma"):
        for obj in (target, layer):
            v = attr(obj, name)
            if v is not None:
                return v, bias
    others = [v for v in variables if v is not bias]
    if others:
        return others[0], bias
    return variables[0], None


def _units(model) -> list[_Unit]:
    """The instrumented layers of a model: the blocks of `models.build_model`, else every weight-bearing layer."""
    units = _contract_units(model)
    if units is None:
        units = _generic_units(model)
    # Variables of no unit (e.g. a subclassed model's own): one unit without output.
    assigned = {id(v) for u in units for v, _ in u.variables}
    rest = [v for v in model.trainable_weights if id(v) not in assigned]
    if rest:
        units.append(_Unit(model.name, None, [(v, _relative(v, model)) for v in rest], main_of=model))
    if not units:
        raise ValueError(f"Argument `model` must have trainable weights. Received: model={model.name!r} without any")
    return units


def _contract_units(model):
    """The blocks of a model built by `models.build_model`, or None for another model."""
    try:
        hidden = models.hidden_layers(model)
        out = models.output_layer(model)
    except ValueError:
        return None
    blocks = {h.index: [] for h in hidden}
    blocks[len(hidden)] = []
    for layer in model.layers:
        match = _BLOCK_NAME.fullmatch(layer.name)
        block = int(match.group(1)) if match else len(hidden) if layer is out else None
        if block is None or block not in blocks:
            continue
        base = hidden[block].weight_layer if block < len(hidden) else out
        blocks[block].extend((v, _relative(v, base)) for v in layer.trainable_weights)
    units = [
        _Unit(h.name, h.weight_layer, blocks[h.index], act_layer=h.activation_layer, index=h.index) for h in hidden
    ]
    units.append(_Unit("output", out, blocks[len(hidden)], index=len(hidden)))
    return units


def _generic_units(model):
    """Every weight-bearing layer below the model (see the module docstring for what counts as one)."""
    units, seen, assigned = [], set(), set()

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        weights = layer.trainable_weights
        if not weights:
            return
        subs = layer._flatten_layers(include_self=False, recursive=False)
        below = {id(v) for s in subs for v in s.trainable_weights}
        own = [v for v in weights if id(v) not in below]
        builtin = type(layer).__module__.startswith("keras.") and not isinstance(layer, keras.Model)
        if layer is not model and (builtin or own or not subs):
            mine = [(v, _relative(v, layer)) for v in weights if id(v) not in assigned]
            if mine:
                assigned.update(id(v) for v, _ in mine)
                units.append(_Unit(_layer_name(layer), layer, mine))
            return
        for sub in subs:
            visit(sub)

    visit(model)
    return units


def _layer_name(layer) -> str:
    return getattr(layer, "path", None) or layer.name


def _relative(variable, layer) -> str:
    """A variable's path below its layer's path ("kernel", "lstm_cell/recurrent_kernel", "query/bias")."""
    path = variable.path
    base = _layer_name(layer) if layer is not None else ""
    if base and path.startswith(base + "/"):
        return path[len(base) + 1 :]
    return path


_ACTIVATION_LAYERS = {"LeakyReLU": "leaky_relu", "PReLU": "prelu", "ELU": "elu", "ReLU": "relu"}


def _activation_of(layer):
    """The registry entry of a Keras activation layer (for its family/derivative), or None."""
    cls = type(layer).__name__
    if cls == "Activation":
        return _activation_of_function(layer.activation)
    name = _ACTIVATION_LAYERS.get(cls, cls.lower())
    if cls == "ReLU" and getattr(layer, "max_value", None) == 6:
        name = "relu6"
    # The parameters the derivative depends on.
    if cls == "LeakyReLU":
        name = f"leaky_relu(negative_slope={float(layer.negative_slope)!r})"
    elif cls == "ELU":
        name = f"elu(alpha={float(layer.alpha)!r})"
    return _registered(name)


def _activation_of_function(fn):
    """The registry entry of an activation function (``keras.activations.relu``, ...); None for linear or unknown."""
    name = getattr(fn, "__name__", "")
    if name in ("linear", "identity"):
        return None  # the output layer's case: z is the output, nothing is dead
    return _registered(name)


def _registered(name):
    name = {"silu": "swish", "hard_silu": "hard_swish"}.get(name, name)
    if not name:
        return None
    try:
        return models.activations.get(name)
    except ValueError:
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
        self._positions = None
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
        self._units = _units(model)
        n = len(self._units)
        self._variables = [(i, v, name) for i, u in enumerate(self._units) for v, name in u.variables]
        index = {id(v): k for k, v in enumerate(model.trainable_weights)}
        # Where each variable's norm comes from: a unit's main weight and bias
        # are its kernel_grad_norm and bias_grad_norm (computed once, for both
        # tables); only the other variables get norms of their own.
        self._var_sizes = [int(np.prod(v.shape)) for _, v, _ in self._variables]
        self._var_source = []
        self._other_idx = []
        for i, v, _ in self._variables:
            unit = self._units[i]
            if v is unit.kernel:
                self._var_source.append((i, _KERNEL_FIELD))
            elif v is unit.bias:
                self._var_source.append((i, _BIAS_FIELD))
            else:
                self._var_source.append((None, len(self._other_idx)))
                self._other_idx.append(index.get(id(v)))
        for u in self._units:
            u.kernel_idx = index.get(id(u.kernel))
            u.bias_idx = index.get(id(u.bias)) if u.bias is not None else None
            u.var_idx = [index.get(id(v)) for v, _ in u.variables]
            u.slope_idx = index.get(id(u.slope)) if u.slope is not None else None

        # Buffers hold one epoch (or 10,000 steps when the epoch length is
        # unknown; they are then flushed whenever they fill up).
        steps = self.params.get("steps") if self.params else None
        per_epoch = steps if steps else 10_000
        self._grad_cap = max(1, math.ceil(per_epoch / self.log_every)) + 1
        self._act_cap = max(1, math.ceil(per_epoch / self.act_every)) + 1
        self._histograms = self.tensorboard_dir is not None
        if self._jax:
            self._jax_steps = instrumentation_jax.Steps(self)
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
    def variable_sources(self):
        """Per row of the ``variables`` table: ``(unit, field)`` of a grad record, or ``(None, k)``: other norm k."""
        return list(self._var_source)

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
        self.layers = _layer_frame(self._layer_rows, self.run_id, self._units, self._positions_or_static())
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
            self._var_buf = tf.Variable(tf.fill([self._grad_cap, max(1, len(self._other_idx))], nan), trainable=False)
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
            g = self._grad_norms(p).numpy()
            var = self._variable_norms(p).numpy()
            a = self._act_stats(p).numpy()
            h = self._hist(p).numpy() if self._histograms else None
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
        if not np.isfinite(self._all_variable_norms(g, var)).all() or not np.isfinite(loss):
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
        self._learn_order(rec)
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

    def _learn_order(self, rec):
        """Fixes each unit's layer_index from the first pass; warns once about what cannot be recorded."""
        if self._positions is not None:
            return
        called = [i for i in rec.order if self._units[i].index is None]
        rest = [i for i, u in enumerate(self._units) if u.index is None and i not in called]
        positions = {i: u.index for i, u in enumerate(self._units) if u.index is not None}
        positions.update({i: k for k, i in enumerate(called + rest)})
        self._positions = positions
        missing, unknown = [], []
        for i, u in enumerate(self._units):
            if u.layer is None or i not in rec.order:
                missing.append(f"{u.name} (not called by the forward pass)")
            elif i not in rec.output or i not in rec.preact:
                missing.append(f"{u.name} (its output is not a floating-point tensor with a batch axis)")
            elif u.tap_activation and u.activation is None and u.activation_name not in ("linear", "identity"):
                unknown.append(f"{u.name} (activation {u.activation_name!r} is not in models.activations)")
        parts = []
        if missing:
            parts.append("no activation statistics or backward signal for " + ", ".join(missing))
        if unknown:
            parts.append("dead/saturated fractions are NaN for " + ", ".join(unknown))
        if parts:
            warnings.warn(
                f"GradientNormLogger: {'; '.join(parts)}; gradient norms are recorded for every layer.", stacklevel=3
            )

    def _positions_or_static(self):
        if self._positions is not None:
            return self._positions
        return {i: (u.index if u.index is not None else i) for i, u in enumerate(self._units)}

    # The recording below is written with `keras.ops`: the same code runs
    # inside TensorFlow's compiled step and JAX's jitted one.

    def _grad(self, p, k):
        """Gradient of model.trainable_weights[k] as recorded: dense, float32, loss scaling undone (0 when None)."""
        g = p.grads[k] if k is not None else None
        if g is None:
            return ops.zeros(())
        if isinstance(g, tf.IndexedSlices):
            g = tf.convert_to_tensor(g)
        g = ops.cast(g, "float32")
        return g * p.unscale if p.unscale is not None else g

    def _values(self, unit, i, p, act=False, previous=None):
        """The `quantities.LayerValues` of unit ``i`` from a pass, for the gradient or the activation cadence."""
        a, z = p.acts[i], p.preacts[i]
        kernel = p.value(unit.kernel, unit.kernel_idx)
        if act:
            if a is not None:
                a = ops.cast(ops.reshape(a, (ops.shape(a)[0], -1)), "float32")
            if z is not None:
                z = ops.cast(ops.reshape(z, (ops.shape(z)[0], -1)), "float32")
            slope = ops.reshape(p.value(unit.slope, unit.slope_idx), (-1,)) if unit.slope is not None else None
            return quantities.LayerValues(
                kernel=kernel,
                previous_kernel=previous,
                output=a,
                activation=unit.activation,
                preact=z,
                batch_size=p.batch_size,
                activation_slope=slope,
            )
        dz = p.preact_grads[i]
        if dz is not None:
            dz = ops.cast(dz, "float32")
            dz = dz * p.unscale if p.unscale is not None else dz
        return quantities.LayerValues(
            kernel_grad=self._grad(p, unit.kernel_idx),
            bias_grad=self._grad(p, unit.bias_idx) if unit.bias_idx is not None else None,
            kernel=kernel,
            activation=unit.activation,
            preact=ops.cast(z, "float32") if z is not None else None,
            preact_grad=dz,
            batch_size=p.batch_size,
        )

    def _grad_norms(self, p):
        """(n_units, len(_GRAD_FIELDS)) gradient quantities of every unit."""
        return _table([self._values(unit, i, p) for i, unit in enumerate(self._units)], _GRAD_QUANTITIES)

    def _variable_norms(self, p):
        """Gradient norms of the variables that are no unit's main weight or bias (see `_var_source`)."""
        if not self._other_idx:
            return ops.full((1,), float("nan"))
        return ops.sqrt(2.0 * ops.stack([quantities._half_sum_sq(self._grad(p, k)) for k in self._other_idx]))

    def _all_variable_norms(self, g, other):
        """(n_variables,) gradient norm of every trainable variable, from a grad-cadence row and the others'."""
        return np.array([g[i, field] if i is not None else other[field] for i, field in self._var_source])

    def _hist(self, p):
        """(n_units, bins) counts of log10|g| over each unit's weight gradients, in fixed bins."""
        lo, hi = float(_HIST_EDGES[0]), float(_HIST_EDGES[-1])
        bins = len(_HIST_EDGES) - 1
        rows = []
        for unit in self._units:
            counts = ops.zeros((bins,), "int32")
            for k in unit.var_idx:
                g = ops.reshape(ops.abs(self._grad(p, k)), (-1,))
                logs = ops.log(ops.maximum(g, HISTOGRAM_FLOOR)) / math.log(10.0)
                counts += _histogram_fixed_width(logs, lo, hi, bins)
            rows.append(ops.cast(counts, "float32"))
        return ops.stack(rows)

    def _act_stats(self, p, previous=None):
        """(n_units, len(_ACT_FIELDS)) statistics of kernels, activations and pre-activations.

        ``previous``: per unit, its main weight before this step's update
        (for the update ratio), or None (step 0).
        """
        values = [
            self._values(unit, i, p, act=True, previous=previous[i] if previous is not None else None)
            for i, unit in enumerate(self._units)
        ]
        return _table(values, _ACT_QUANTITIES)

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
            norms = self._grad_norms(p)
            row = self._grad_count % self._grad_cap
            self._grad_buf[row].assign(norms)
            if self._other_idx:
                self._var_buf[row].assign(self._variable_norms(p))
            self._grad_step[row].assign(step)
            self._grad_count.assign_add(1)
            return tf.constant(0)

        def record_acts():
            stats = self._act_stats(p, previous=[shadow.read_value() for shadow in self._shadow])
            row = self._act_count % self._act_cap
            self._act_buf[row].assign(stats)
            if self._histograms:
                self._hist_buf[row].assign(self._hist(p))
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
            if not np.isfinite(self._all_variable_norms(*grad[s])).all():
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
        positions = self._positions_or_static()
        for i, unit in enumerate(self._units):
            self._layer_rows.append((step, epoch, positions[i], unit.name, *g[i], *a[i]))
        if var is not None:
            var = self._all_variable_norms(g, var)
            for k, (i, v, name) in enumerate(self._variables):
                size = self._var_sizes[k]
                self._variable_rows.append((step, epoch, positions[i], self._units[i].name, name, v.path, size, var[k]))
        if self._events is not None:
            scalars = {}
            for i, unit in enumerate(self._units):
                for name, value in zip((*_GRAD_FIELDS, *_ACT_FIELDS), (*g[i], *a[i]), strict=True):
                    scalars[f"{name}/{unit.name}"] = value
            self._events.scalars(step, scalars)
            if hist is not None:
                self._events.histograms(step, {f"grad_log10/{u.name}": hist[i] for i, u in enumerate(self._units)})


def _table(values, quantities_):
    """(n_units, n_quantities): every quantity's ``compute`` per unit, stacked in one op, then its ``finish``."""
    n, k = len(values), len(quantities_)
    raw = ops.reshape(ops.stack([ops.cast(q.compute(v), "float32") for v in values for q in quantities_]), (n, k))
    columns = [q.finish(raw[:, j], values) if q.finish is not None else raw[:, j] for j, q in enumerate(quantities_)]
    return ops.stack(columns, axis=1)


def _histogram_fixed_width(x, lo, hi, bins):
    """Counts of ``x`` in ``bins`` equal bins over [lo, hi], values outside going to the end bins (int32)."""
    if keras.backend.backend() == "tensorflow":
        return tf.histogram_fixed_width(x, [lo, hi], nbins=bins)
    import jax.numpy as jnp

    idx = jnp.clip(jnp.floor((x - lo) * (bins / (hi - lo))), 0, bins - 1).astype("int32")
    return jnp.bincount(idx, length=bins).astype("int32")


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
