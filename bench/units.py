"""Which layers a logger records: the units of any Keras 3 model, their main weight, bias and activation.

Layer discovery for `bench.instrumentation.GradientNormLogger` (see its
module docstring for what counts as a unit): `find_units` gives the units of
a model in a stable order; each `Unit` knows its variables, the weight that
``kernel_grad_norm`` reports and the one ``bias_grad_norm`` reports, where
its output and pre-activation are read, and its activation's registry entry.
"""

from __future__ import annotations

import re

import keras
import numpy as np

from vgbench import models

_BLOCK_NAME = re.compile(r"hidden_(\d+)(?:_[a-z]+)?")


# --------------------------------------------------------------------------- #
# Which layers: units
# --------------------------------------------------------------------------- #


class Unit:
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


def find_units(model) -> list[Unit]:
    """The instrumented layers of a model: the blocks of `models.build_model`, else every weight-bearing layer."""
    units = _contract_units(model)
    if units is None:
        units = _generic_units(model)
    # Variables of no unit (e.g. a subclassed model's own): one unit without output.
    assigned = {id(v) for u in units for v, _ in u.variables}
    rest = [v for v in model.trainable_weights if id(v) not in assigned]
    if rest:
        units.append(Unit(model.name, None, [(v, _relative(v, model)) for v in rest], main_of=model))
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
    units = [Unit(h.name, h.weight_layer, blocks[h.index], act_layer=h.activation_layer, index=h.index) for h in hidden]
    units.append(Unit("output", out, blocks[len(hidden)], index=len(hidden)))
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
                units.append(Unit(_layer_name(layer), layer, mine))
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
