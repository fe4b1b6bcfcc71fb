"""The JAX backend's instrumented train step for `bench.instrumentation.GradientNormLogger`.

On JAX, `fit` calls ``logs, state = model.train_function(state, iterator)``
once per step with the whole training state as arrays (Keras' `JAXTrainer`).
`Steps.install` replaces that function for the duration of a `fit` with a
Python dispatcher that picks one of up to four jitted steps by what is due at
this step (gradient norms? activation statistics?), so that steps which record
nothing compile to Keras' own step. Each jitted step is Keras'
`JAXTrainer.train_step` (loss scaling, metrics, non-trainable updates such as
batch-norm moving statistics, as Keras does them) with the recording added:
from the very gradients `jax.value_and_grad` gives the optimizer, it returns
the logger's per-layer tables as arrays. The dispatcher keeps those device
arrays (JAX's dispatch stays asynchronous) and `Steps.drain` converts them
once per epoch.

The backward signal ∂L/∂z: JAX cannot watch an intermediate value, so the
traced forward pass adds a zero "probe" array to each unit's z (through the
same per-instance wrappers that record z on TensorFlow, `bench.tapping.tapped`) and the
one `jax.value_and_grad` call differentiates with respect to the weights and
the probes. The probes' shapes come from an abstract evaluation of the
forward pass (`jax.eval_shape`) while the step is traced, so they cost
nothing per step and follow every batch size.

A non-finite loss is seen two steps later (reading a step's result as soon as
it is dispatched would wait for it): training stops then, and the tables keep
what was recorded up to the diverged step, as on TensorFlow.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from vgbench.bench.measures import ACT_FIELDS
from vgbench.bench.quantities import UPDATE_RATIO
from vgbench.bench.tapping import BackendSteps, Pass, tapped

# A step's loss is read this many steps after it was dispatched: by then it
# has been computed, so reading it does not stall the pipeline.
_LOSS_LAG = 2

UPDATE_RATIO_FIELD = ACT_FIELDS.index(UPDATE_RATIO)

# Records kept on device before they are converted even within an epoch
# (an epoch of unknown length).
_MAX_PENDING = 10_000


class Steps(BackendSteps):
    """The jitted instrumented steps of one `fit`, their dispatcher and the records they returned.

    The arguments are those of `bench.tapping.BackendSteps`.
    """

    # `fit` may hand the per-step logs to the callbacks off the training
    # thread (so that reading them does not wait for the step): the
    # dispatcher watches the loss, `batch_end` reads nothing.
    async_safe = True

    def __init__(self, model, measures, **kwargs):
        super().__init__(model, measures, **kwargs)
        self.pending = []  # (step, records as device arrays)
        self.losses = []  # (step, that step's loss is finite: a device bool)

    # ------------------------------------------------------------ the pass

    def _forward_backward(self, tv, ntv, ov, mv, x, y, sample_weight):
        """One training-mode forward and backward pass, traced: Keras' loss and gradients, and the recording.

        Returns:
            ``(pass, aux)``: the `bench.tapping.Pass` of the recording, and Keras'
            ``(unscaled_loss, y_pred, non_trainable_variables,
            metrics_variables)``.
        """
        import jax
        import jax.numpy as jnp

        model, units = self.model, self.measures.units
        opt = model.optimizer
        n = len(units)
        recordings = []

        def loss_fn(tv, probes):
            with tapped(units, probes) as rec:
                loss, aux = model.compute_loss_and_updates(
                    tv, ntv, mv, x, y, sample_weight, training=True, optimizer_variables=ov
                )
            recordings.append(rec)
            acts = [rec.output.get(i) for i in range(n)]
            zs = [rec.preact.get(i) for i in range(n)]
            return loss, (aux, acts, zs)

        shapes = jax.eval_shape(lambda tv: loss_fn(tv, None)[1][2], tv)
        self.measures.learn_order(recordings[-1])
        probes = [None if s is None else jnp.zeros(s.shape, s.dtype) for s in shapes]
        grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
        (_, (aux, acts, zs)), (grads, preact_grads) = grad_fn(tv, probes)
        unscale = None
        if not (type(opt).scale_loss is keras.optimizers.Optimizer.scale_loss and opt.loss_scale_factor is None):
            # Loss scaling: the recorded gradients are the loss's own.
            mapping = list(zip(opt.variables, ov, strict=True))
            with keras.StatelessScope(state_mapping=mapping):
                unscale = 1.0 / keras.ops.cast(opt.scale_loss(keras.ops.ones(())), "float32")
        batch = next(t for t in keras.tree.flatten(x) if t is not None).shape[0]
        p = Pass(
            y_pred=aux[1],
            loss=aux[0],
            acts=acts,
            preacts=zs,
            grads=list(grads),
            preact_grads=preact_grads,
            batch_size=jnp.asarray(batch, "float32"),
            unscale=unscale,
            weights=list(tv),
        )
        return p, aux

    def _records(self, p, new_tv, log_grad, log_act, update_ratio=True):
        """The arrays a step returns for the tables: ``{"grad", "var", "act", "hist"}`` as due."""
        measures = self.measures
        out = {}
        if log_grad:
            out["grad"] = measures.grad_norms(p)
            out["var"] = measures.variable_norms(p)
        if log_act:
            out.update(self._act_records(p, new_tv, update_ratio))
        return out

    def _act_records(self, p, new_tv, update_ratio):
        """``{"act", "hist"}``: kernels after the update (as on TensorFlow), before it for the update ratio."""
        measures = self.measures
        after = dataclasses.replace(p, weights=list(new_tv))
        previous = [p.weights[u.kernel_idx] for u in measures.units] if update_ratio else None
        out = {"act": measures.act_stats(after, previous=previous)}
        if measures.histograms:
            out["hist"] = measures.hist(p)
        return out

    # ------------------------------------------------------------ the steps

    def step_function(self, log_grad, log_act):
        """The instrumented step for one "what is due" key, as a pure function (not jitted).

        ``step(state, data) -> (logs, state, records, loss_is_finite)``, with
        ``state = (trainable, non_trainable, optimizer, metrics)`` variable
        values: Keras' `train_step`, plus the records. `bench.population`
        maps it over the replicas of a population with `jax.vmap`.
        """

        def train_step(state, data):
            p, logs, new, finite = self._keras_step(state, data)
            return logs, new, self._records(p, new[0], log_grad, log_act), finite

        return train_step

    def _keras_step(self, state, data):
        """Keras' `train_step` as a pure function: ``(pass, logs, new state, loss is finite)``."""
        import jax.numpy as jnp
        from keras.src.trainers.data_adapters import data_adapter_utils

        model = self.model
        tv, ntv, ov, mv = state
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        p, (unscaled_loss, y_pred, ntv, mv) = self._forward_backward(tv, ntv, ov, mv, x, y, sample_weight)
        new_tv, ov = model.optimizer.stateless_apply(ov, p.grads, tv)
        logs, mv = model._update_metrics_variables(mv, unscaled_loss, x, y, y_pred, sample_weight)
        return p, logs, (new_tv, ntv, ov, mv), jnp.isfinite(unscaled_loss)

    def population_step_function(self, log_grad, log_hist=False):
        """The pure step function of a population's steps (`bench.population` vmaps it).

        ``step(state, data) -> (logs, state, records, loss_is_finite)``, as
        `step_function(log_grad, False)`, with the gradient histograms
        (``log_hist``, TensorBoard only) of the activation cadence. A
        population's activation statistics come from `act_function`, a
        forward pass of its own: an activation step compiled as one
        function with the training step took XLA ~1.5 s longer to compile
        at depth 40 than the two apart (and computing them under a traced
        switch made every step ~1.5x slower: XLA materializes the switch's
        operands, every layer's activations and weights, each step).
        """

        def train_step(state, data):
            p, logs, new, finite = self._keras_step(state, data)
            records = self._records(p, new[0], log_grad, False)
            if log_hist and self.measures.histograms:
                records["hist"] = self.measures.hist(p)
            return logs, new, records, finite

        return train_step

    def act_function(self):
        """A step's activation statistics by a forward pass alone: ``act(state, new_trainable, data, first)``.

        ``state`` is the step's state before its update and
        ``new_trainable`` its trainable values after it: the statistics of
        `step_function`'s activation records (the training-mode forward pass
        of ``state`` on ``data``, the kernels after the update, the update
        ratio), computed without the backward pass. With the traced bool
        ``first`` it is step 0 instead (as `init_function`: the kernels of
        ``state``, update ratio NaN).
        """
        import jax
        import jax.numpy as jnp
        from keras.src.trainers.data_adapters import data_adapter_utils

        model, units = self.model, self.measures.units
        n = len(units)

        def act_step(state, new_tv, data, first):
            tv, ntv, ov, mv = state
            x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)

            def forward(probes):
                with tapped(units, probes) as rec:
                    _, aux = model.compute_loss_and_updates(
                        tv, ntv, mv, x, y, sample_weight, training=True, optimizer_variables=ov
                    )
                return [rec.output.get(i) for i in range(n)], [rec.preact.get(i) for i in range(n)], aux

            # The same zero probes as the training step's pass, so that z is computed as there.
            shapes = jax.eval_shape(lambda: forward(None)[1])
            probes = [None if s is None else jnp.zeros(s.shape, s.dtype) for s in shapes]
            acts, zs, aux = forward(probes)
            batch = next(t for t in keras.tree.flatten(x) if t is not None).shape[0]
            p = Pass(
                y_pred=aux[1],
                loss=aux[0],
                acts=acts,
                preacts=zs,
                grads=[],
                preact_grads=[],
                batch_size=jnp.asarray(batch, "float32"),
                unscale=None,
                weights=list(tv),
            )
            kernels = [jnp.where(first, a, b) for a, b in zip(tv, new_tv, strict=True)]
            measures = self.measures
            previous = [p.weights[u.kernel_idx] for u in measures.units]
            act = measures.act_stats(dataclasses.replace(p, weights=kernels), previous=previous)
            return act.at[:, UPDATE_RATIO_FIELD].set(jnp.where(first, jnp.nan, act[:, UPDATE_RATIO_FIELD]))

        return act_step

    def _step(self, log_grad, log_act):
        """The jitted instrumented step for one "what is due" key: Keras' `train_step`, plus the records."""
        import jax

        model = self.model
        train_step = self.step_function(log_grad, log_act)
        if model.run_eagerly or not model.jit_compile:
            return train_step
        return jax.jit(train_step, donate_argnums=0)

    def install(self, model, steps_per_epoch=None):
        """Replaces `model.train_function` (made by `fit` just before) with the dispatcher, for this fit.

        ``steps_per_epoch`` is not needed here: the records wait in a list
        (converted within an epoch past `_MAX_PENDING` steps).
        """
        self.functions.clear()
        self.pending.clear()
        self.losses.clear()
        counter = [int(model.optimizer.iterations.numpy())]
        per_call = int(getattr(model, "steps_per_execution", 1) or 1)

        def train_function(state, iterator):
            logs = None
            for k in range(per_call):
                try:
                    data = next(iterator)
                except StopIteration:
                    if k == 0:
                        raise  # the end of the data: `fit` ends the epoch
                    break
                step = counter[0] + 1
                key = (step % self.log_every == 0, step % self.act_every == 0)
                fn = self.functions.get(key) or self.functions.setdefault(key, self._step(*key))
                logs, state, records, finite = fn(state, data)
                counter[0] = step
                if records:
                    self.pending.append((step, records))
                self.losses.append((step, finite))
                self._watch_loss()
                if len(self.pending) >= _MAX_PENDING:
                    self.flush()
            return logs, state

        model.train_function = train_function

    def batch_end(self, logs):
        """After each batch: nothing (the dispatcher watches the loss, `_watch_loss`)."""

    def _watch_loss(self):
        """Marks the run diverged at the first non-finite loss, read `_LOSS_LAG` steps after its step."""
        while len(self.losses) > _LOSS_LAG:
            step, finite = self.losses.pop(0)
            if not bool(finite):
                self.on_diverged(step)

    def drain(self):
        """``(grad, act)``: ``{step: (grad norms, other variables' norms)}`` and ``{step: (act stats, hist)}``.

        The records kept since the last call, converted to numpy in one transfer.
        """
        import jax

        for step, finite in self.losses:
            if not bool(finite):
                self.on_diverged(step)
        self.losses.clear()
        host = jax.device_get([r for _, r in self.pending])
        steps = [s for s, _ in self.pending]
        self.pending.clear()
        grad, act = {}, {}
        for step, r in zip(steps, host, strict=True):
            if "grad" in r:
                grad[step] = (np.asarray(r["grad"]), np.asarray(r["var"]))
            if "act" in r:
                act[step] = (np.asarray(r["act"]), np.asarray(r["hist"]) if "hist" in r else None)
        return grad, act

    # ------------------------------------------------------------ step 0

    def measure(self, x, y):
        """Step 0 on the probe batch, from the model's current state, without changing it.

        Returns:
            ``(grad norms, other variables' norms, act stats, histogram or
            None, loss, y_pred)`` as numpy arrays (and a float loss).
        """
        import jax

        x = keras.tree.map_structure(keras.ops.convert_to_tensor, x)
        y = keras.tree.map_structure(keras.ops.convert_to_tensor, y)
        records, loss, y_pred = jax.jit(self.init_function())(state_of(self.model), x, y)
        r = jax.device_get(records)
        return r["grad"], r["var"], r["act"], r.get("hist"), float(loss), y_pred

    def init_function(self):
        """Step 0 as a pure function: ``init(state, x, y) -> (records, loss, y_pred)``, changing no state."""

        def init_step(state, x, y):
            tv, ntv, ov, mv = state
            p, (unscaled_loss, y_pred, _, _) = self._forward_backward(tv, ntv, ov, mv, x, y, None)
            return self._records(p, tv, True, True, update_ratio=False), unscaled_loss, y_pred

        return init_step


def state_of(model):
    """A compiled model's training state as arrays: ``(trainable, non_trainable, optimizer, metrics)`` values."""
    return (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
