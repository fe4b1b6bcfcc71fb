"""What a forward pass shows the logger: each layer's output and pre-activation, tapped while the step is traced.

Shared by the TensorFlow step (`bench.instrumentation_tf`) and the JAX step
(`bench.instrumentation_jax`): `tapped` wraps the layers' `call` (and
`activation`) on the instances for one traced forward pass, `Pass` holds
what one forward and backward pass gives the recording, and `BackendSteps`
is the interface both steps give the logger.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import keras
import tensorflow as tf


class Recording:
    """What one forward pass showed: each unit's output and z (first call), and the order of first calls."""

    def __init__(self):
        self.output = {}
        self.preact = {}
        self.order = []
        self.unrecordable = set()

    def enter(self, i):
        if i not in self.order:
            self.order.append(i)

    def keep(self, table, i, value) -> bool:
        """Records ``value``'s first tensor as unit ``i``'s entry of ``table``; whether it was recorded."""
        if i in table:
            return False  # a shared layer: its first call counts
        t = first_tensor(value)
        if t is None:
            self.unrecordable.add(i)
            return False
        table[i] = t
        return True


def first_tensor(value):
    """The first output of a layer if it is a floating-point tensor with a batch axis, else None."""
    flat = keras.tree.flatten(value)
    if not flat:
        return None
    t = flat[0]
    if not keras.ops.is_tensor(t) or not keras.backend.is_float_dtype(keras.backend.standardize_dtype(t.dtype)):
        return None
    rank = getattr(t.shape, "rank", None) if isinstance(t, tf.Tensor) else len(t.shape)
    if rank is None or rank < 1:
        return None
    return t


def with_first(value, t):
    """``value`` (a layer's output structure) with its first tensor replaced by ``t``."""
    flat = keras.tree.flatten(value)
    if len(flat) == 1 and keras.ops.is_tensor(value):
        return t
    return keras.tree.pack_sequence_as(value, [t, *flat[1:]])


@contextlib.contextmanager
def tapped(units, probes=None):
    """Wraps the units' `call` (and `activation`) on the instances for one forward pass; restores them after.

    Args:
        units: the `_Unit`s.
        probes: optional, per unit: an array of the shape of its z, or None.
            Where given, the forward pass goes on with ``z + probe`` instead
            of z, so that the gradient with respect to the probe (a zero
            array) is ∂L/∂z: how the JAX backend, which cannot watch an
            intermediate value, gets the backward signal from the same
            differentiation as the weights' gradients.
    """
    rec = Recording()
    undo = []

    def probed(i, z):
        probe = probes[i] if probes is not None else None
        return z if probe is None else z + probe

    def wrap_call(layer, i, z_from_input, z_from_output):
        had = "call" in layer.__dict__
        original = layer.call

        def call(*args, **kwargs):
            rec.enter(i)
            if z_from_input:
                key = "inputs" if not args else None
                z = args[0] if args else kwargs.get("inputs")
                if rec.keep(rec.preact, i, z):
                    if args:
                        args = (probed(i, z), *args[1:])
                    else:
                        kwargs[key] = probed(i, z)
            out = original(*args, **kwargs)
            rec.keep(rec.output, i, out)
            if z_from_output and rec.keep(rec.preact, i, out) and probes is not None:
                out = with_first(out, probed(i, rec.preact[i]))
            return out

        layer.call = call
        undo.append(lambda: setattr(layer, "call", original) if had else delattr(layer, "call"))

    def wrap_activation(layer, i):
        original = layer.__dict__["activation"]

        def activation(z, *args, **kwargs):
            if rec.keep(rec.preact, i, z):
                z = probed(i, z)
            return original(z, *args, **kwargs)

        layer.activation = activation
        undo.append(lambda: setattr(layer, "activation", original))

    try:
        for i, u in enumerate(units):
            if u.act_layer is not None:
                wrap_call(u.act_layer, i, z_from_input=True, z_from_output=False)
            elif u.layer is not None:
                wrap_call(u.layer, i, z_from_input=False, z_from_output=not u.tap_activation)
                if u.tap_activation:
                    wrap_activation(u.layer, i)
        yield rec
    finally:
        for fn in reversed(undo):
            fn()


@dataclasses.dataclass
class Pass:
    """What one forward and backward pass gives the recording (see the logger's `_forward_backward`)."""

    y_pred: Any
    loss: Any
    acts: list  # per unit: its output, or None where not recorded
    preacts: list  # per unit: its z, or None
    grads: list  # of model.trainable_weights, as the optimizer gets them
    preact_grads: list  # of the scaled loss, per entry of preacts
    batch_size: Any
    unscale: Any  # 1 / loss scale, or None without loss scaling
    weights: list | None = None  # values of model.trainable_weights to read; None: the variables' own

    def value(self, variable, k):
        """The value of trainable variable ``variable`` (index ``k``) that this pass's records read."""
        return self.weights[k] if self.weights is not None else variable.value


class BackendSteps:
    """The instrumented steps of one `fit` on one backend: what `bench.instrumentation.GradientNormLogger` calls.

    A backend's step installs itself on the model (`install`), is told of
    each finished batch (`batch_end`), hands over the records it holds
    (`drain`) and measures a batch without training (`measure`, step 0).
    ``async_safe`` says whether `fit` may call `batch_end` off the
    training thread.

    Args:
        model: the compiled Keras model.
        measures: its `bench.measures.Measures` (the units, and the records of a pass).
        log_every: the gradient cadence.
        act_every: the activation cadence.
        on_diverged: called with a step whose loss was non-finite.
        flush: called when records pile up within an epoch (they are then
            taken with `drain`).
    """

    async_safe = False

    def __init__(self, model, measures, *, log_every=1, act_every=10, on_diverged=None, flush=None):
        self.model = model
        self.measures = measures
        self.log_every = log_every
        self.act_every = act_every
        self.on_diverged = on_diverged or (lambda step: None)
        self.flush = flush or (lambda: None)
        self.functions = {}  # the compiled steps, by what is due

    def install(self, model, steps_per_epoch=None):
        raise NotImplementedError

    def batch_end(self, logs):
        raise NotImplementedError

    def drain(self):
        raise NotImplementedError

    def measure(self, x, y):
        raise NotImplementedError
