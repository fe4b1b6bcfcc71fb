"""Per-layer gradient norms and activation statistics, recorded during `model.fit`.

`GradientNormLogger` is a Keras callback. For the duration of a `fit` it swaps
the model's `train_step` for one that computes the very gradients the
optimizer applies with a `tf.GradientTape`, and, inside the same compiled
step, reduces them to per-layer norms. Forward activations come from the same
forward pass (a functional view of the model that also returns every hidden
layer's output), so nothing is computed twice. The numbers go into
preallocated buffers (`tf.Variable`s) and reach Python once per epoch. Per
step, Python only picks which compiled step to run (gradient norms and/or
activation statistics due?) and looks at the loss `fit` already reports.

What is recorded, per hidden layer (index 0 = nearest the input) and the
output layer (index = depth, name ``output``):

- every ``log_every`` steps: ``kernel_grad_norm``, ``bias_grad_norm``
  (L2 norms of the gradients of the layer's kernel and bias);
- every ``act_every`` steps: ``kernel_norm``, ``update_ratio``
  (‖ΔW‖/‖W‖ of that step's update), and ``act_mean``, ``act_std``,
  ``act_rms``, ``saturated_fraction`` (saturating activations: share of
  unit outputs whose derivative is below 1% of its maximum) and
  ``dead_fraction`` (ReLU family: share of units that are not positive for
  any example of the batch) of the layer's output;
- step 0: all of the above except ``update_ratio``, at initialization, on a
  fixed probe batch, before any update.

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

import dataclasses
import math
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

import models
from bench import quantities
from bench.quantities import SATURATION_THRESHOLD  # noqa: F401  (public name)
from bench.results import HISTORY_COLUMNS, LAYER_COLUMNS

# The measured columns of layers.parquet, in the buffers' order.
_GRAD_FIELDS = quantities.cadence_fields("grad")
_ACT_FIELDS = quantities.cadence_fields("act")
_GRAD_QUANTITIES = [quantities.LAYER_QUANTITIES[name] for name in _GRAD_FIELDS]
_ACT_QUANTITIES = [quantities.LAYER_QUANTITIES[name] for name in _ACT_FIELDS]
# A non-finite kernel gradient marks divergence (every layer has a kernel).
_DIVERGENCE_FIELD = _GRAD_FIELDS.index("kernel_grad_norm")


class _Layer:
    """One instrumented layer: its variables and how to read its activation."""

    def __init__(self, index, name, weight_layer, activation_layer):
        self.index = index
        self.name = name
        self.kernel = weight_layer.kernel
        self.bias = getattr(weight_layer, "bias", None)
        self.kernel_idx = self.bias_idx = None  # positions in model.trainable_weights
        self.kernel_size = int(np.prod(self.kernel.shape))
        self.bias_size = int(np.prod(self.bias.shape)) if self.bias is not None else 0
        self.output_layer = activation_layer if activation_layer is not None else weight_layer
        self.activation = _activation_of(activation_layer) if activation_layer is not None else None
        # The pre-activation is the activation layer's input (after a norm
        # that precedes it); the output layer's is the logits, the model's output.
        self.preact = activation_layer.input if activation_layer is not None else None
        self.slope = getattr(activation_layer, "alpha", None) if type(activation_layer).__name__ == "PReLU" else None


def _activation_of(layer):
    """The registry entry of a Keras activation layer (for its family/derivative)."""
    cls = type(layer).__name__
    if cls == "Activation":
        fn = layer.activation
        name = getattr(fn, "__name__", str(fn))
    else:
        name = {
            "LeakyReLU": "leaky_relu",
            "PReLU": "prelu",
            "ELU": "elu",
            "ReLU": "relu",
        }.get(cls, cls.lower())
        if cls == "ReLU" and getattr(layer, "max_value", None) == 6:
            name = "relu6"
    name = {"silu": "swish", "hard_silu": "hard_swish"}.get(name, name)
    # The parameters the derivative depends on.
    if cls == "LeakyReLU":
        name = f"leaky_relu(negative_slope={float(layer.negative_slope)!r})"
    elif cls == "ELU":
        name = f"elu(alpha={float(layer.alpha)!r})"
    try:
        return models.activations.get(name)
    except ValueError:
        return None


class GradientNormLogger(keras.callbacks.Callback):
    """Records per-layer gradient norms and activation statistics during `fit`.

    Args:
        probe_data: ``(x, y)`` of a fixed batch, used for the step-0
            measurement at initialization. Without it, no step-0 record.
        test_data: optional ``(x, y)`` or `tf.data.Dataset` of batches,
            evaluated at step 0 for the history table (later evaluations come from `fit`'s ``validation_data``).
        log_every: record gradient norms every this many steps.
        act_every: record activation statistics, kernel norms and update
            ratios every this many steps.
        run_id: the value of the ``run_id`` column of the tables.

    Attributes (after `fit`):
        layers: DataFrame in the ``layers.parquet`` layout.
        history: DataFrame in the ``history.parquet`` layout.
        diverged_step: first step with a non-finite loss or gradient, or None.
    """

    def __init__(self, probe_data=None, test_data=None, log_every=1, act_every=10, run_id=""):
        super().__init__()
        for arg, value in (("log_every", log_every), ("act_every", act_every)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Argument `{arg}` must be a positive integer. Received: {arg}={value!r}")
        self.probe_data = probe_data
        self.test_data = test_data
        self.log_every = log_every
        self.act_every = act_every
        self.run_id = run_id
        self._reset()

    # ------------------------------------------------------------------ state

    def _reset(self):
        self._layer_rows = []
        self._history_rows = []
        self._flushed_grad = 0
        self._flushed_act = 0
        self._epoch = 0
        self._counter = None
        self._flushed_at = 0
        self._flush_every = 1
        self.diverged_step = None
        self.layers = pd.DataFrame(columns=LAYER_COLUMNS)
        self.history = pd.DataFrame(columns=HISTORY_COLUMNS)

    def on_train_begin(self, logs=None):
        self._reset()
        model = self.model
        hidden = models.hidden_layers(model)
        out = models.output_layer(model)
        self._layers = [_Layer(h.index, h.name, h.weight_layer, h.activation_layer) for h in hidden]
        self._layers.append(_Layer(len(hidden), "output", out, None))
        n = len(self._layers)

        # The forward pass that also returns each instrumented layer's output
        # and each hidden layer's pre-activation (the output layer's is the logits).
        self._tap = keras.Model(
            model.inputs,
            [model.outputs[0]] + [l.output_layer.output for l in self._layers] + [l.preact for l in self._layers[:-1]],
        )

        index = {v.path: i for i, v in enumerate(model.trainable_weights)}
        for layer in self._layers:
            layer.kernel_idx = index[layer.kernel.path]
            layer.bias_idx = index[layer.bias.path] if layer.bias is not None else None

        # Buffers hold one epoch (or 10,000 steps when the epoch length is
        # unknown; they are then flushed whenever they fill up).
        steps = self.params.get("steps") if self.params else None
        per_epoch = steps if steps else 10_000
        self._grad_cap = max(1, math.ceil(per_epoch / self.log_every)) + 1
        self._act_cap = max(1, math.ceil(per_epoch / self.act_every)) + 1
        nan = float("nan")
        with tf.init_scope():
            self._grad_buf = tf.Variable(tf.fill([self._grad_cap, n, len(_GRAD_FIELDS)], nan), trainable=False)
            self._grad_step = tf.Variable(tf.zeros([self._grad_cap], tf.int64), trainable=False)
            self._grad_count = tf.Variable(0, dtype=tf.int64, trainable=False)
            self._act_buf = tf.Variable(tf.fill([self._act_cap, n, len(_ACT_FIELDS)], nan), trainable=False)
            self._act_step = tf.Variable(tf.zeros([self._act_cap], tf.int64), trainable=False)
            self._act_count = tf.Variable(0, dtype=tf.int64, trainable=False)
            self._shadow = [tf.Variable(tf.zeros_like(l.kernel.value), trainable=False) for l in self._layers]

        if self.probe_data is not None:
            self._measure_init()

        # Swap in the instrumented step for this fit; restored in on_train_end.
        self._install(model)

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
        self.layers = _layer_frame(self._layer_rows, self.run_id, self._layers)
        self.history = pd.DataFrame(self._history_rows, columns=HISTORY_COLUMNS[1:])
        self.history.insert(0, "run_id", self.run_id)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        # `fit` has already turned the logs into Python floats: checking the
        # loss here is free. (Keras' running mean stays non-finite once a
        # step's loss was.) Non-finite gradients under a finite loss are found
        # in the buffers at the end of the epoch.
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
        self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self._flush()
        logs = logs or {}
        step = int(self.model.optimizer.iterations.numpy())
        self._history_rows.append(
            (
                step,
                epoch + 1,
                _float(logs.get("loss")),
                _float(logs.get("accuracy")),
                _float(logs.get("val_loss")),
                _float(logs.get("val_accuracy")),
            )
        )

    # ------------------------------------------------------- step 0 (at init)

    def _measure_init(self):
        model = self.model
        x, y = self.probe_data
        x = tf.convert_to_tensor(x)
        y = tf.convert_to_tensor(y)
        # Training-mode forward pass (as in the first update), but leave the
        # model untouched: batch-norm moving statistics are restored after.
        saved = [v.numpy() for v in model.non_trainable_weights]
        p = self._forward_backward(x, y)
        y_pred, loss = p.y_pred, p.loss
        for v, value in zip(model.non_trainable_weights, saved):
            v.assign(value)
        g = self._grad_norms(p).numpy()
        a = self._act_stats(p, update_ratio=False).numpy()
        for i, layer in enumerate(self._layers):
            self._layer_rows.append((0, 0, layer.index, layer.name, *g[i], *a[i]))
        acc = float(np.mean(np.argmax(y_pred.numpy(), axis=-1) == np.asarray(y)))
        test_loss = test_acc = np.nan
        if self.test_data is not None:
            test = self.test_data
            if isinstance(test, (tuple, list)):
                test = tf.data.Dataset.from_tensor_slices(tuple(test)).batch(512)
            res = model.evaluate(test, verbose=0, return_dict=True)
            test_loss, test_acc = res.get("loss", np.nan), res.get("accuracy", np.nan)
        self._history_rows.append((0, 0, float(loss), acc, float(test_loss), float(test_acc)))
        if not np.isfinite(g[:, _DIVERGENCE_FIELD]).all() or not np.isfinite(float(loss)):
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
        n = len(self._layers)
        with tf.GradientTape() as tape:
            outs = self._tap(x, training=True)
            y_pred = outs[0]
            acts, preacts = outs[1 : n + 1], [*outs[n + 1 :], y_pred]
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            batch = tf.shape(tf.nest.flatten(x)[0])[0]
            if track_loss:
                tracker = getattr(model, "_loss_tracker", None)
                if tracker is not None:
                    tracker.update_state(loss, sample_weight=batch)
            scaled = opt.scale_loss(loss)
        weights = model.trainable_weights
        both = tape.gradient(scaled, [*weights, *preacts])
        # Loss scaling (mixed precision): the recorded gradients are the
        # loss's own. The scale is read before the update, which may change it.
        unscale = None
        if not (type(opt).scale_loss is keras.optimizers.Optimizer.scale_loss and opt.loss_scale_factor is None):
            unscale = 1.0 / tf.cast(opt.scale_loss(tf.ones([])), tf.float32)
        return _Pass(
            y_pred=y_pred,
            loss=loss,
            acts=acts,
            preacts=preacts,
            grads=both[: len(weights)],
            preact_grads=both[len(weights) :],
            batch_size=tf.cast(batch, tf.float32),
            unscale=unscale,
        )

    def _values(self, layer, i, p, act=False, previous=None):
        """The `quantities.LayerValues` of layer ``i`` from a pass, for the gradient or the activation cadence."""
        if act:
            a = p.acts[i]
            a = tf.cast(tf.reshape(a, [tf.shape(a)[0], -1]), tf.float32)
            z = p.preacts[i]
            z = tf.cast(tf.reshape(z, [tf.shape(z)[0], -1]), tf.float32)
            slope = tf.reshape(layer.slope.value, [-1]) if layer.slope is not None else None
            return quantities.LayerValues(
                kernel=layer.kernel.value,
                previous_kernel=previous,
                output=a,
                activation=layer.activation,
                preact=z,
                batch_size=p.batch_size,
                activation_slope=slope,
            )
        grads, dz = p.grads, p.preact_grads[i]
        kernel_grad = grads[layer.kernel_idx]
        bias_grad = grads[layer.bias_idx] if layer.bias_idx is not None else None
        if p.unscale is not None:
            kernel_grad, dz = kernel_grad * p.unscale, dz * p.unscale
            bias_grad = bias_grad * p.unscale if bias_grad is not None else None
        return quantities.LayerValues(
            kernel_grad=kernel_grad,
            bias_grad=bias_grad,
            kernel=layer.kernel.value,
            activation=layer.activation,
            preact=p.preacts[i],
            preact_grad=dz,
            batch_size=p.batch_size,
        )

    def _grad_norms(self, p):
        """(n_layers, len(_GRAD_FIELDS)) gradient quantities of every layer."""
        rows = []
        for i, layer in enumerate(self._layers):
            v = self._values(layer, i, p)
            rows.append(tf.stack([q.compute(v) for q in _GRAD_QUANTITIES]))
        return tf.stack(rows)

    def _act_stats(self, p, update_ratio=True):
        """(n_layers, len(_ACT_FIELDS)) statistics of kernels, activations and pre-activations."""
        rows = []
        for i, (layer, shadow) in enumerate(zip(self._layers, self._shadow)):
            v = self._values(layer, i, p, act=True, previous=shadow.read_value() if update_ratio else None)
            rows.append(tf.stack([q.compute(v) for q in _ACT_QUANTITIES]))
        return tf.stack(rows)

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
            for layer, shadow in zip(self._layers, self._shadow):
                shadow.assign(layer.kernel.value)
            return tf.constant(0)

        def record_grads():
            norms = self._grad_norms(p)
            row = self._grad_count % self._grad_cap
            self._grad_buf[row].assign(norms)
            self._grad_step[row].assign(step)
            self._grad_count.assign_add(1)
            return tf.constant(0)

        def record_acts():
            stats = self._act_stats(p)
            row = self._act_count % self._act_cap
            self._act_buf[row].assign(stats)
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
        opt.apply_gradients(zip(grads, weights))
        when(log_grad, self.log_every, record_grads, lambda: tf.constant(0))
        when(log_act, self.act_every, record_acts, lambda: tf.constant(0))
        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    # ----------------------------------------------------------- to Python

    def _flush(self):
        """Moves buffered records into Python lists (once per epoch)."""
        if not hasattr(self, "_grad_count"):
            return
        if self._counter is not None:
            self._flushed_at = self._counter[0]
        grad = _drain(self._grad_buf, self._grad_step, self._grad_count, self._flushed_grad, self._grad_cap)
        act = _drain(self._act_buf, self._act_step, self._act_count, self._flushed_act, self._act_cap)
        self._flushed_grad = int(self._grad_count.numpy())
        self._flushed_act = int(self._act_count.numpy())
        for s in sorted(grad):
            if not np.isfinite(grad[s][:, _DIVERGENCE_FIELD]).all():
                self._mark_diverged(s)
                break
        diverged = self.diverged_step if self.diverged_step is not None else -1
        steps = sorted(set(grad) | set(act))
        n = len(self._layers)
        nan_g = np.full((n, len(_GRAD_FIELDS)), np.nan)
        nan_a = np.full((n, len(_ACT_FIELDS)), np.nan)
        for s in steps:
            if diverged >= 0 and s > diverged:
                continue
            g = grad.get(s, nan_g)
            a = act.get(s, nan_a)
            for i, layer in enumerate(self._layers):
                self._layer_rows.append((s, self._epoch, layer.index, layer.name, *g[i], *a[i]))


@dataclasses.dataclass
class _Pass:
    """What one forward and backward pass gives the recording (see `_forward_backward`)."""

    y_pred: Any
    loss: Any
    acts: list
    preacts: list  # hidden layers' pre-activations, then the logits
    grads: list  # of model.trainable_weights, as the optimizer gets them
    preact_grads: list  # of the scaled loss, per entry of preacts
    batch_size: Any
    unscale: Any  # 1 / loss scale, or None without loss scaling


def _drain(buf, step_buf, count_var, flushed, cap):
    """{step: values} for the records written since the last flush."""
    count = int(count_var.numpy())
    if count == flushed:
        return {}
    values, steps = buf.numpy(), step_buf.numpy()
    first = max(flushed, count - cap)  # older rows were overwritten
    return {int(steps[k % cap]): values[k % cap] for k in range(first, count)}


def _layer_frame(rows, run_id, layers):
    cols = ["step", "epoch", "layer_index", "layer_name", *_GRAD_FIELDS, *_ACT_FIELDS]
    df = pd.DataFrame(rows, columns=cols)
    df.insert(0, "run_id", run_id)
    df = df.astype({"step": "int64", "epoch": "int64", "layer_index": "int64"})
    for c in (*_GRAD_FIELDS, *_ACT_FIELDS):
        df[c] = df[c].astype("float64")
    # Parameter counts, so that layers of different sizes compare per weight.
    sizes = {l.index: (l.kernel_size, l.bias_size) for l in layers}
    df["kernel_size"] = df["layer_index"].map(lambda i: sizes[i][0]).astype("int64")
    df["bias_size"] = df["layer_index"].map(lambda i: sizes[i][1]).astype("int64")
    return df[[*LAYER_COLUMNS, "kernel_size", "bias_size"]].sort_values(["step", "layer_index"], kind="stable").reset_index(drop=True)


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")
