"""The per-layer records of one forward and backward pass: what every instrumented step computes.

`Measures` is the part of `bench.instrumentation.GradientNormLogger` that
every step shares (the TensorFlow tape step of `bench.instrumentation_tf`,
the JAX step of `bench.instrumentation_jax`, and the JAX population step of
`bench.population`): which units and variables are recorded (`bench.units`),
where each variable's norm comes from, and, from a `bench.tapping.Pass`, the
gradient-cadence and activation-cadence tables of every unit. Each quantity
is computed by its entry of the quantity registry (`bench.quantities`); the
code is written with `keras.ops`, so it runs inside TensorFlow's compiled
step and JAX's jitted one alike.
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from vgbench.bench import quantities
from vgbench.bench import quantities as Q
from vgbench.bench.summaries import HISTOGRAM_EDGES as _HIST_EDGES
from vgbench.bench.summaries import HISTOGRAM_FLOOR
from vgbench.bench.units import find_units

# The measured columns of layers.parquet, in the records' order.
GRAD_FIELDS = quantities.cadence_fields("grad")
ACT_FIELDS = quantities.cadence_fields("act")
_GRAD_QUANTITIES = [quantities.LAYER_QUANTITIES[name] for name in GRAD_FIELDS]
_ACT_QUANTITIES = [quantities.LAYER_QUANTITIES[name] for name in ACT_FIELDS]
KERNEL_FIELD = GRAD_FIELDS.index(Q.KERNEL_GRAD_NORM)
BIAS_FIELD = GRAD_FIELDS.index(Q.BIAS_GRAD_NORM)


class Measures:
    """The units of a model, where each variable's norm comes from, and the records of a pass.

    Args:
        model: the Keras model (its units are found once, here).
        histograms: also record histograms of log10|g| (`hist`).

    Attributes:
        units: the `bench.units.Unit`s, each with the indices of its
            variables in ``model.trainable_weights`` (``kernel_idx``,
            ``bias_idx``, ``var_idx``, ``slope_idx``).
        variables: ``[(unit index, variable, name relative to the unit)]``,
            the rows of the ``variables`` table.
        var_sizes: the size of each of ``variables``.
        var_source: per entry of ``variables``: ``(unit index, field)`` of
            the grad-cadence table when it is a unit's main weight or bias,
            else ``(None, k)``: the k-th of `variable_norms`.
        other_idx: the trainable-weight indices of the variables that are no
            unit's main weight or bias.
        positions: unit index → ``layer_index``, fixed by `learn_order`
            (None before).
    """

    def __init__(self, model, histograms=False):
        self.histograms = bool(histograms)
        self.positions = None
        self.units = find_units(model)
        self.variables = [(i, v, name) for i, u in enumerate(self.units) for v, name in u.variables]
        index = {id(v): k for k, v in enumerate(model.trainable_weights)}
        # Where each variable's norm comes from: a unit's main weight and bias
        # are its kernel_grad_norm and bias_grad_norm (computed once, for both
        # tables); only the other variables get norms of their own.
        self.var_sizes = [int(np.prod(v.shape)) for _, v, _ in self.variables]
        self.var_source = []
        self.other_idx = []
        for i, v, _ in self.variables:
            unit = self.units[i]
            if v is unit.kernel:
                self.var_source.append((i, KERNEL_FIELD))
            elif v is unit.bias:
                self.var_source.append((i, BIAS_FIELD))
            else:
                self.var_source.append((None, len(self.other_idx)))
                self.other_idx.append(index.get(id(v)))
        for u in self.units:
            u.kernel_idx = index.get(id(u.kernel))
            u.bias_idx = index.get(id(u.bias)) if u.bias is not None else None
            u.var_idx = [index.get(id(v)) for v, _ in u.variables]
            u.slope_idx = index.get(id(u.slope)) if u.slope is not None else None

    def learn_order(self, rec):
        """Fixes each unit's layer_index from the first pass; warns once about what cannot be recorded."""
        if self.positions is not None:
            return
        called = [i for i in rec.order if self.units[i].index is None]
        rest = [i for i, u in enumerate(self.units) if u.index is None and i not in called]
        positions = {i: u.index for i, u in enumerate(self.units) if u.index is not None}
        positions.update({i: k for k, i in enumerate(called + rest)})
        self.positions = positions
        missing, unknown = [], []
        for i, u in enumerate(self.units):
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
                f"GradientNormLogger: {'; '.join(parts)}; gradient norms are recorded for every layer.", stacklevel=4
            )

    def layer_positions(self):
        if self.positions is not None:
            return self.positions
        return {i: (u.index if u.index is not None else i) for i, u in enumerate(self.units)}

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

    def grad_norms(self, p):
        """(n_units, len(GRAD_FIELDS)) gradient quantities of every unit."""
        return _table([self._values(unit, i, p) for i, unit in enumerate(self.units)], _GRAD_QUANTITIES)

    def variable_norms(self, p):
        """Gradient norms of the variables that are no unit's main weight or bias (see `var_source`)."""
        if not self.other_idx:
            return ops.full((1,), float("nan"))
        return ops.sqrt(2.0 * ops.stack([quantities.half_sum_sq(self._grad(p, k)) for k in self.other_idx]))

    def all_variable_norms(self, g, other):
        """(..., n_variables) gradient norm of every trainable variable, from grad-cadence tables and the others'.

        ``g`` is ``(..., n_units, len(GRAD_FIELDS))`` and ``other`` the
        matching `variable_norms`, for one step or stacked over steps.
        """
        g, other = np.asarray(g), np.asarray(other)
        if not self.var_source:
            return np.empty(g.shape[:-2] + (0,))
        return np.stack([g[..., i, field] if i is not None else other[..., field] for i, field in self.var_source], -1)

    def hist(self, p):
        """(n_units, bins) counts of log10|g| over each unit's weight gradients, in fixed bins."""
        lo, hi = float(_HIST_EDGES[0]), float(_HIST_EDGES[-1])
        bins = len(_HIST_EDGES) - 1
        rows = []
        for unit in self.units:
            counts = ops.zeros((bins,), "int32")
            for k in unit.var_idx:
                g = ops.reshape(ops.abs(self._grad(p, k)), (-1,))
                logs = ops.log(ops.maximum(g, HISTOGRAM_FLOOR)) / math.log(10.0)
                counts += _histogram_fixed_width(logs, lo, hi, bins)
            rows.append(ops.cast(counts, "float32"))
        return ops.stack(rows)

    def act_stats(self, p, previous=None):
        """(n_units, len(ACT_FIELDS)) statistics of kernels, activations and pre-activations.

        ``previous``: per unit, its main weight before this step's update
        (for the update ratio), or None (step 0).
        """
        values = [
            self._values(unit, i, p, act=True, previous=previous[i] if previous is not None else None)
            for i, unit in enumerate(self.units)
        ]
        return _table(values, _ACT_QUANTITIES)


def _table(values, quantities_):
    """(n_units, n_quantities): every quantity's ``compute`` per unit, stacked in one op, then its ``finish``."""
    n, k = len(values), len(quantities_)
    raw = ops.reshape(ops.stack([ops.cast(q.compute(v), "float32") for v in values for q in quantities_]), (n, k))
    columns = [q.finish(raw[:, j], values) if q.finish is not None else raw[:, j] for j, q in enumerate(quantities_)]
    return ops.stack(columns, axis=1)


def _histogram_fixed_width(x, lo, hi, bins):
    """Counts of ``x`` in ``bins`` equal bins over [lo, hi], values outside going to the end bins (int32).

    NaNs are counted in no bin: a diverging step's gradients are a result
    (the run is recorded diverged), and TensorFlow's op refuses them.
    """
    if keras.backend.backend() == "tensorflow":
        nan = tf.math.is_nan(x)
        counts = tf.histogram_fixed_width(tf.where(nan, tf.cast(lo, x.dtype), x), [lo, hi], nbins=bins)
        return counts - tf.one_hot(0, bins, on_value=tf.reduce_sum(tf.cast(nan, "int32")), dtype="int32")
    import jax.numpy as jnp

    idx = jnp.clip(jnp.floor((x - lo) * (bins / (hi - lo))), 0, bins - 1)
    idx = jnp.where(jnp.isnan(idx), bins, idx).astype("int32")  # NaN: one past the last bin, dropped
    return jnp.bincount(idx, length=bins + 1)[:bins].astype("int32")
