"""The TensorFlow backend's instrumented train step for `bench.instrumentation.GradientNormLogger`.

`Steps.install` swaps the model's `train_step` for the duration of a `fit`
for one that computes the very gradients the optimizer applies with a
`tf.GradientTape` and, inside the same compiled step, reduces them to
per-layer and per-variable norms. The numbers go into preallocated buffers
(`tf.Variable`s) and reach Python once per epoch (`Steps.drain`). Per step,
Python only picks which compiled step to run (gradient norms and/or
activation statistics due?) and looks at the loss `fit` already reports
(`Steps.batch_end`).

The interface is that of the JAX step (`bench.instrumentation_jax.Steps`):
`install`, `drain`, `measure` (step 0), `batch_end`, the cache of compiled
steps `functions`, and the callbacks ``on_diverged`` and ``flush``.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from vgbench.bench.measures import ACT_FIELDS, GRAD_FIELDS
from vgbench.bench.summaries import HISTOGRAM_EDGES
from vgbench.bench.tapping import BackendSteps, Pass, tapped

# Buffers hold one epoch, or this many steps when the epoch length is
# unknown (they are then flushed whenever they fill up).
_UNKNOWN_EPOCH = 10_000


class Steps(BackendSteps):
    """The compiled instrumented steps of one `fit`, their dispatcher and the buffers they write.

    The arguments are those of `bench.tapping.BackendSteps`; ``flush`` is
    called when the buffers are about to fill up within an epoch.
    """

    # `fit` must hand `batch_end` the step's logs on the training thread:
    # the flush it may trigger reads the buffers the running step writes.
    async_safe = False

    def __init__(self, model, measures, **kwargs):
        super().__init__(model, measures, **kwargs)
        self._buffers = None
        self._counter = None  # [the last step dispatched], with one step per call
        self._flushed_at = 0
        self._flush_every = 1
        self._flushed_grad = 0
        self._flushed_act = 0
        self._loss_diverged = False

    # ------------------------------------------------------------ the pass

    def _forward_backward(self, x, y, sample_weight=None, track_loss=False):
        """One forward and backward pass: the optimizer's gradients and the recorded signals.

        The gradients with respect to the weights and to every layer's
        pre-activation come from one `tape.gradient` call on the loss the
        optimizer scales, so the backward signal costs no second pass.
        """
        model = self.model
        opt = model.optimizer
        units = self.measures.units
        with tf.GradientTape() as tape:
            with tapped(units) as rec:
                y_pred = model(x, training=True) if model._call_has_training_arg else model(x)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            batch = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
            if track_loss:
                tracker = getattr(model, "_loss_tracker", None)
                if tracker is not None:
                    tracker.update_state(loss, sample_weight=batch)
            scaled = opt.scale_loss(loss)
        self.measures.learn_order(rec)
        weights = model.trainable_weights
        n = len(units)
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
        return Pass(
            y_pred=y_pred,
            loss=loss,
            acts=[rec.output.get(i) for i in range(n)],
            preacts=zs,
            grads=both[: len(weights)],
            preact_grads=preact_grads,
            batch_size=tf.cast(batch, tf.float32),
            unscale=unscale,
        )

    # ------------------------------------------------------------ the steps

    def install(self, model, steps_per_epoch=None):
        """Makes the buffers for ``steps_per_epoch`` steps and replaces `model.train_function` for this fit.

        With one step per call (Keras' default), a Python dispatcher picks one
        of up to four compiled steps by what is due at this step (gradient
        norms? activation statistics?), so no step pays for a `tf.cond`:
        a conditional costs about as much as all the norms together. With
        ``steps_per_execution > 1`` the decision moves into the graph.
        """
        self._buffers = _Buffers(self.measures, steps_per_epoch or _UNKNOWN_EPOCH, self.log_every, self.act_every)
        self._flushed_grad = self._flushed_act = 0
        self._loss_diverged = False
        self.functions.clear()
        self._counter = None
        start = int(model.optimizer.iterations.numpy())
        if int(getattr(model, "steps_per_execution", 1) or 1) != 1:
            model.train_step = lambda data: self._train_step(data, None, None)
            model.make_train_function(force=True)
            return
        counter = self._counter = [start]
        self._flushed_at = start
        buffers = self._buffers
        self._flush_every = min((buffers.grad_cap - 1) * self.log_every, (buffers.act_cap - 1) * self.act_every)

        def compiled(key):
            model.train_step = lambda data: self._train_step(data, *key)
            type(model).make_train_function(model, force=True)
            fn = model.train_function
            model.train_function = train_function
            return fn

        def train_function(iterator):
            counter[0] += 1
            key = (counter[0] % self.log_every == 0, counter[0] % self.act_every == 0)
            fn = self.functions.get(key) or self.functions.setdefault(key, compiled(key))
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
        measures, buffers = self.measures, self._buffers
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        p = self._forward_backward(x, y, sample_weight, track_loss=True)
        y_pred, grads = p.y_pred, p.grads
        weights = model.trainable_weights

        step = opt.iterations + 1  # this update's 1-based step number

        def snapshot():
            for unit, shadow in zip(measures.units, buffers.shadow, strict=True):
                shadow.assign(unit.kernel.value)
            return tf.constant(0)

        def record_grads():
            norms = measures.grad_norms(p)
            row = buffers.grad_count % buffers.grad_cap
            buffers.grad[row].assign(norms)
            if measures.other_idx:
                buffers.var[row].assign(measures.variable_norms(p))
            buffers.grad_step[row].assign(step)
            buffers.grad_count.assign_add(1)
            return tf.constant(0)

        def record_acts():
            stats = measures.act_stats(p, previous=[shadow.read_value() for shadow in buffers.shadow])
            row = buffers.act_count % buffers.act_cap
            buffers.act[row].assign(stats)
            if measures.histograms:
                buffers.hist[row].assign(measures.hist(p))
            buffers.act_step[row].assign(step)
            buffers.act_count.assign_add(1)
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

    def batch_end(self, logs):
        """After each batch, with `fit`'s logs: marks a non-finite loss diverged; flushes before the buffers fill.

        `fit` has already turned the logs into Python floats: checking the
        loss here is free. (Keras' running mean stays non-finite once a
        step's loss was.) Non-finite gradients under a finite loss are found
        in the buffers when they are drained.
        """
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss) and not self._loss_diverged:
            self._loss_diverged = True
            self.on_diverged(self._current_step())
        if self._counter is not None and self._counter[0] - self._flushed_at >= self._flush_every:
            self.flush()

    def _current_step(self) -> int:
        if self._counter is not None:
            return self._counter[0]
        return int(self.model.optimizer.iterations.numpy())

    # ----------------------------------------------------------- to Python

    def drain(self):
        """``(grad, act)``: ``{step: (grad norms, other variables' norms)}`` and ``{step: (act stats, hist)}``.

        The records written since the last call (hist None without
        histograms), read from the buffers.
        """
        if self._buffers is None:
            return {}, {}
        if self._counter is not None:
            self._flushed_at = self._counter[0]
        b = self._buffers
        grad = _read(b.grad_step, b.grad_count, self._flushed_grad, b.grad_cap, b.grad, b.var)
        hist = [b.hist] if self.measures.histograms else []
        rows = _read(b.act_step, b.act_count, self._flushed_act, b.act_cap, b.act, *hist)
        act = {s: (v[0], v[1] if hist else None) for s, v in rows.items()}
        self._flushed_grad = int(b.grad_count.numpy())
        self._flushed_act = int(b.act_count.numpy())
        return grad, act

    # ------------------------------------------------------------ step 0

    def measure(self, x, y):
        """Step 0 on the probe batch, from the model's current state, without changing it.

        Returns:
            ``(grad norms, other variables' norms, act stats, histogram or
            None, loss, y_pred)`` as numpy arrays (and a float loss).
        """
        model, measures = self.model, self.measures
        x = tf.nest.map_structure(tf.convert_to_tensor, x)
        y = tf.nest.map_structure(tf.convert_to_tensor, y)
        # Training-mode forward pass (as in the first update), but leave the
        # model untouched: batch-norm moving statistics are restored after.
        saved = [v.numpy() for v in model.non_trainable_weights]
        p = self._forward_backward(x, y)
        for v, value in zip(model.non_trainable_weights, saved, strict=True):
            v.assign(value)
        g = measures.grad_norms(p).numpy()
        var = measures.variable_norms(p).numpy()
        a = measures.act_stats(p).numpy()
        h = measures.hist(p).numpy() if measures.histograms else None
        return g, var, a, h, float(p.loss), p.y_pred


class _Buffers:
    """The preallocated `tf.Variable`s the compiled step writes its records into: one epoch's worth."""

    def __init__(self, measures, per_epoch, log_every, act_every):
        nan = float("nan")
        n = len(measures.units)
        bins = len(HISTOGRAM_EDGES) - 1
        self.grad_cap = max(1, math.ceil(per_epoch / log_every)) + 1
        self.act_cap = max(1, math.ceil(per_epoch / act_every)) + 1
        with tf.init_scope():
            self.grad = tf.Variable(tf.fill([self.grad_cap, n, len(GRAD_FIELDS)], nan), trainable=False)
            others = max(1, len(measures.other_idx))
            self.var = tf.Variable(tf.fill([self.grad_cap, others], nan), trainable=False)
            self.grad_step = tf.Variable(tf.zeros([self.grad_cap], tf.int64), trainable=False)
            self.grad_count = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.act = tf.Variable(tf.fill([self.act_cap, n, len(ACT_FIELDS)], nan), trainable=False)
            hist_rows = self.act_cap if measures.histograms else 1
            self.hist = tf.Variable(tf.zeros([hist_rows, n, bins]), trainable=False)
            self.act_step = tf.Variable(tf.zeros([self.act_cap], tf.int64), trainable=False)
            self.act_count = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.shadow = [tf.Variable(tf.zeros_like(u.kernel.value), trainable=False) for u in measures.units]


def _read(step_buf, count_var, flushed, cap, *bufs):
    """{step: (values of each buffer)} for the records written since the last flush."""
    count = int(count_var.numpy())
    if count == flushed:
        return {}
    values, steps = [b.numpy() for b in bufs], step_buf.numpy()
    first = max(flushed, count - cap)  # older rows were overwritten
    return {int(steps[k % cap]): tuple(v[k % cap] for v in values) for k in range(first, count)}
