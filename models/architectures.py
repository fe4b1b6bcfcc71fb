"""Deep MLPs and CNNs for MNIST, with the usual fixes for vanishing gradients.

`build_model` returns a functional `keras.Model` that maps images to logits.
Instrumentation finds the layers it measures by name, so the names below are
a contract (`i` is the hidden block, 0 nearest the input):

- `hidden_{i}`: the weight layer, `Dense` (mlp) or 3x3 `Conv2D` (cnn).
- `hidden_{i}_norm`: `BatchNormalization` or `LayerNormalization`, if any.
- `hidden_{i}_act`: the activation layer.
- `hidden_{i}_add`: the residual `Add` that closes a skip ending at block i.
- `hidden_{i}_dropout`: `Dropout`, if any.
- `hidden_{i}_proj`: the projection (`Dense`, or 1x1 `Conv2D`) of a skip
  starting at block i, present only when the widths on both ends differ.
- `pool_{j}`: the j-th 2x2 `MaxPooling2D` (cnn only).
- `input`, `global_pool` (cnn only) and `output`, the logits `Dense`.

Within a block the order is weight layer, then `norm="batchnorm"` or
`"layernorm"`, activation, `norm="batchnorm_after"`, residual add, dropout.

Residual skips: with `residual_every=k`, blocks form consecutive groups of k,
the first group starting at block 0, and the input of each group is added to
the output of its last block. Block 0's input is the image (784 values, or 1
channel), so the first skip goes through `hidden_0_proj`; this keeps every
hidden block inside a group of the same shape, the first one included. In a
CNN, groups restart after each pooling layer so that no skip spans a change
of resolution. A group cut short by the end of the network (or by a pool)
still gets its skip, over the blocks that remain.

Seeds: every layer's initializer gets its own seed, drawn from the run's
seed and the layer's slot by `numpy.random.SeedSequence` (`layer_seed`):
slot i for the kernel of `hidden_{i}`, `depth` for the output layer,
`depth + 1 + i` for the projection at block i, and a stream of their own for
the dropout masks. Runs of two seeds therefore share no weights: with the
seed plus the layer's index, as before, seed s + 1's kernel i was seed s's
kernel i + 1, so "three seeds" were largely the same matrices in other
places. Biases start at zero unless a bias initializer is given.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vgbench.models import activations as activations_lib
from vgbench.models import initializers as initializers_lib

if TYPE_CHECKING:
    import keras

__all__ = [
    "ARCHS",
    "DEFAULT_INPUT_SHAPES",
    "HiddenLayer",
    "NORMS",
    "block_sizes",
    "build_model",
    "count_params",
    "hidden_layers",
    "output_layer",
]

ARCHS = ("mlp", "cnn")
NORMS = (None, "batchnorm", "batchnorm_after", "layernorm")
DEFAULT_INPUT_SHAPES = {"mlp": (784,), "cnn": (28, 28, 1)}
MAX_POOLS = 2


def build_model(
    arch: str = "mlp",
    *,
    depth: int,
    width: int,
    activation: str | activations_lib.Activation,
    initializer: str | initializers_lib.Initializer,
    input_shape: Sequence[int] | None = None,
    num_classes: int = 10,
    norm: str | None = None,
    residual_every: int = 0,
    dropout: float = 0.0,
    width_schedule: Sequence[int] | None = None,
    bias_initializer: str | initializers_lib.Initializer = "zeros",
    seed: int = 0,
) -> keras.Model:
    """Builds a deep MLP or CNN classifier that outputs logits.

    Args:
        arch: `"mlp"` (`depth` Dense blocks on flattened images) or `"cnn"`
            (`depth` 3x3 conv blocks, two 2x2 max-pools, global average
            pooling).
        depth: Number of hidden blocks.
        width: Units (mlp) or channels (cnn) of every hidden block.
        activation: Activation spec or `activations.Activation`.
        initializer: Kernel initializer spec or `initializers.Initializer`;
            used for every kernel, projections and the output layer included.
        input_shape: Shape of one example; defaults to `(784,)` for mlp and
            `(28, 28, 1)` for cnn.
        num_classes: Number of logits.
        norm: `None`, `"batchnorm"` (before the activation; the weight layer
            then has no bias, which the normalization would cancel),
            `"batchnorm_after"` (after the activation) or `"layernorm"`
            (before the activation).
        residual_every: `k > 0` adds an identity skip around every group of
            `k` blocks; 0 for none.
        dropout: Dropout rate after every block, in `[0, 1)`.
        width_schedule: Optional per-block widths, `depth` positive integers
            that replace `width`.
        bias_initializer: Initializer spec or `initializers.Initializer` of
            every bias, hidden and output layers alike (layers followed by
            batch norm have none); `"zeros"` by default. Mean-field theory's
            σ_b² is its variance.
        seed: Non-negative integer from which all initializer and dropout
            seeds are derived.

    Returns:
        An uncompiled functional `keras.Model`.

    Raises:
        ValueError: If an argument is invalid; the message names it.
        UnknownNameError: For an unknown activation or initializer.
    """
    if arch not in ARCHS:
        raise ValueError(f"Argument `arch` must be one of {', '.join(map(repr, ARCHS))}. Received: arch={arch!r}")
    _check_int("depth", depth, minimum=1)
    _check_int("width", width, minimum=1)
    _check_int("num_classes", num_classes, minimum=1)
    _check_int("residual_every", residual_every, minimum=0)
    _check_int("seed", seed, minimum=0)
    if norm not in NORMS:
        raise ValueError(f"Argument `norm` must be one of {', '.join(map(repr, NORMS))}. Received: norm={norm!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"Argument `dropout` must be a number in [0, 1). Received: dropout={dropout!r}")
    widths = _widths(depth, width, width_schedule)
    input_shape = _input_shape(arch, input_shape)
    act = activations_lib.get(activation)
    init = initializers_lib.get(initializer)
    bias_init = initializers_lib.get(bias_initializer)

    import keras

    conv = arch == "cnn"
    pool_after = _pool_positions(depth) if conv else []
    group_end = _residual_groups(depth, residual_every, pool_after)

    def weight_layer(units, name, seed_offset, kernel_size=3, use_bias=True):
        kwargs = dict(
            use_bias=use_bias,
            kernel_initializer=init.make(layer_seed(seed, seed_offset)),
            bias_initializer=bias_init.make(_bias_seed(layer_seed(seed, seed_offset))),
            name=name,
        )
        if conv:
            return keras.layers.Conv2D(units, kernel_size, padding="same", **kwargs)
        return keras.layers.Dense(units, **kwargs)

    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    skips = {}  # Group end -> (group start, tensor entering the group).
    for i in range(depth):
        if i in group_end:
            skips[group_end[i]] = (i, x)
        prefix = f"hidden_{i}"
        x = weight_layer(widths[i], prefix, i, use_bias=norm != "batchnorm")(x)
        if norm == "batchnorm":
            x = keras.layers.BatchNormalization(name=f"{prefix}_norm")(x)
        elif norm == "layernorm":
            x = keras.layers.LayerNormalization(name=f"{prefix}_norm")(x)
        x = act.layer(f"{prefix}_act")(x)
        if norm == "batchnorm_after":
            x = keras.layers.BatchNormalization(name=f"{prefix}_norm")(x)
        if i in skips:
            start, shortcut = skips.pop(i)
            if shortcut.shape[-1] != widths[i]:
                shortcut = weight_layer(
                    widths[i],
                    f"hidden_{start}_proj",
                    depth + 1 + start,
                    kernel_size=1,
                    use_bias=False,
                )(shortcut)
            x = keras.layers.Add(name=f"{prefix}_add")([x, shortcut])
        if dropout > 0:
            x = keras.layers.Dropout(dropout, seed=layer_seed(seed, i, stream=1), name=f"{prefix}_dropout")(x)
        if i in pool_after:
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool_{pool_after.index(i)}")(x)
    if conv:
        x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    outputs = keras.layers.Dense(
        num_classes,
        kernel_initializer=init.make(layer_seed(seed, depth)),
        bias_initializer=bias_init.make(_bias_seed(layer_seed(seed, depth))),
        name="output",
    )(x)
    return keras.Model(inputs, outputs, name=arch)


def layer_seed(seed: int, slot: int, stream: int = 0) -> int:
    """The seed of one layer's initializer (``stream`` 0) or dropout (1), from the run's seed and the layer's slot.

    Derived by `numpy.random.SeedSequence`, so that the layers of one run and
    the runs of nearby seeds draw from unrelated streams (``seed + slot``
    would give seed s + 1 the kernels of seed s, one layer over). Within the
    31-bit range TensorFlow's and JAX's seeds take.
    """
    import numpy as np

    return int(np.random.SeedSequence([seed, stream, slot]).generate_state(1)[0]) % _SEED_RANGE


def _bias_seed(kernel_seed: int) -> int:
    """The seed of a layer's bias initializer, given its kernel's.

    A bias drawn with its kernel's seed from the same distribution would
    repeat the kernel's first entries; half the 31-bit seed range away keeps
    the two streams apart and the seed within the range TensorFlow takes.
    """
    return (kernel_seed + _BIAS_SEED_SHIFT) % _SEED_RANGE


_SEED_RANGE = 2**31
_BIAS_SEED_SHIFT = 2**30


def count_params(
    arch: str = "mlp",
    *,
    depth: int,
    width: int,
    activation: str = "relu",
    input_shape: Sequence[int] | None = None,
    num_classes: int = 10,
    norm: str | None = None,
    residual_every: int = 0,
) -> int:
    """Counts the weights `build_model` would create, without Keras.

    Lets a caller size a model before building it: a depth or width typed
    with a few zeros too many makes a model that no machine can hold, and
    building it would take minutes before failing. Normalization statistics
    and PReLU slopes are included.

    Args:
        arch, depth, width, input_shape, num_classes, norm, residual_every:
            As for `build_model`.
        activation: Activation spec; only `prelu` adds weights.

    Returns:
        The number of scalars in the model's weights.
    """
    conv = arch == "cnn"
    shape = _input_shape(arch, input_shape)
    kernel = 9 if conv else 1
    channels = shape[-1] if conv else math.prod(shape)
    spatial = math.prod(shape[:-1]) if conv else 1
    prelu = activations_lib.get(activation).base == "prelu"
    pool_after = _pool_positions(depth) if conv else []
    group_end = _residual_groups(depth, residual_every, pool_after)
    total = 0
    for i in range(depth):
        total += kernel * channels * width + (width if norm != "batchnorm" else 0)
        total += {None: 0, "layernorm": 2 * width}.get(norm, 4 * width)
        total += width * spatial if prelu else 0  # one slope per unit (and position)
        if i in group_end and channels != width:
            total += channels * width  # the skip's projection
        channels = width
        if i in pool_after:
            spatial = _pooled(shape, spatial)
    return total + width * num_classes + num_classes


def block_sizes(arch: str = "mlp", *, depth: int, width: int, input_shape: Sequence[int] | None = None) -> list[int]:
    """Values per example in the output of each hidden block, as `build_model` lays them out.

    With `count_params`, this sizes the activations a batch keeps for the
    backward pass, without Keras.

    Returns:
        `depth` integers: `width` for an MLP, `positions * width` for a CNN,
        where the positions shrink after each pooling layer.
    """
    shape = _input_shape(arch, input_shape)
    spatial = math.prod(shape[:-1]) if arch == "cnn" else 1
    pool_after = set(_pool_positions(depth)) if arch == "cnn" else set()
    sizes = []
    for i in range(depth):
        sizes.append(spatial * width)
        if i in pool_after:
            spatial = _pooled(shape, spatial)
    return sizes


def _pooled(shape: Sequence[int], spatial: int) -> int:
    # 2x2 pooling with "same" padding on a square image: ceil(side / 2).
    return math.ceil(math.sqrt(spatial) / 2) ** 2


def _check_int(arg: str, value, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise ValueError(f"Argument `{arg}` must be {kind}. Received: {arg}={value!r}")


def _widths(depth: int, width: int, width_schedule) -> list[int]:
    if width_schedule is None:
        return [width] * depth
    if isinstance(width_schedule, (str, bytes)) or not isinstance(width_schedule, Sequence):
        widths = None
    else:
        widths = list(width_schedule)
    if (
        widths is None
        or len(widths) != depth
        or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths)
    ):
        raise ValueError(
            f"Argument `width_schedule` must be None or a sequence of `depth` "
            f"({depth}) positive integers. Received: width_schedule={width_schedule!r}"
        )
    return widths


def _input_shape(arch: str, input_shape) -> tuple[int, ...]:
    if input_shape is None:
        return DEFAULT_INPUT_SHAPES[arch]
    rank = len(DEFAULT_INPUT_SHAPES[arch])
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if (
        shape is None
        or len(shape) != rank
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)
    ):
        example = DEFAULT_INPUT_SHAPES[arch]
        raise ValueError(
            f"Argument `input_shape` must be {rank} positive integer(s) for "
            f"arch={arch!r}, e.g. {example}. Received: input_shape={input_shape!r}"
        )
    return shape


def _pool_positions(depth: int) -> list[int]:
    """Blocks after which a CNN pools: the first third and two thirds."""
    # Block counts of 0 (depth < 3) would pool the raw input; drop them, and
    # the duplicates they leave, keeping at most MAX_POOLS.
    ends = sorted({(j + 1) * depth // (MAX_POOLS + 1) for j in range(MAX_POOLS)})
    return [count - 1 for count in ends if count > 0]


def _residual_groups(depth: int, every: int, pool_after: Sequence[int]) -> dict[int, int]:
    """Maps the first block of each residual group to its last block."""
    if every == 0:
        return {}
    groups = {}
    segment_ends = [*pool_after, depth - 1]
    start = 0
    for end in segment_ends:
        for first in range(start, end + 1, every):
            groups[first] = min(first + every - 1, end)
        start = end + 1
    return groups


_WEIGHT_LAYER_NAME = re.compile(r"hidden_(\d+)")


@dataclasses.dataclass(frozen=True)
class HiddenLayer:
    """The layers of one hidden block of a model built by `build_model`.

    Attributes:
        index: Block index, 0 nearest the input.
        name: Name of the weight layer, e.g. `"hidden_3"`.
        weight_layer: The `Dense` or `Conv2D` layer.
        activation_layer: The `hidden_{index}_act` layer.
    """

    index: int
    name: str
    weight_layer: keras.layers.Layer
    activation_layer: keras.layers.Layer


def hidden_layers(model: keras.Model) -> list[HiddenLayer]:
    """Lists the hidden blocks of a model built by `build_model`, in order.

    Args:
        model: A model that follows this module's naming contract.

    Returns:
        One `HiddenLayer` per block, sorted by index.

    Raises:
        ValueError: If the model has no hidden blocks, a gap in their
            indices, or a block without its activation layer.
    """
    by_name = {layer.name: layer for layer in model.layers}
    blocks = []
    for name, layer in by_name.items():
        match = _WEIGHT_LAYER_NAME.fullmatch(name)
        if match is None:
            continue
        act = by_name.get(f"{name}_act")
        if act is None:
            raise ValueError(f"Layer '{name}' has no activation layer '{name}_act'. Received: model={model.name!r}")
        blocks.append(HiddenLayer(int(match.group(1)), name, layer, act))
    blocks.sort(key=lambda block: block.index)
    if [block.index for block in blocks] != list(range(len(blocks))) or not blocks:
        raise ValueError(
            "Argument `model` must have hidden layers named hidden_0, hidden_1, "
            f"... without gaps. Received: model={model.name!r} with layers "
            f"{[block.name for block in blocks]}"
        )
    return blocks


def output_layer(model: keras.Model) -> keras.layers.Dense:
    """Returns the `output` logits layer of a model built by `build_model`.

    Raises:
        ValueError: If the model has no layer named `output`.
    """
    for layer in model.layers:
        if layer.name == "output":
            return layer
    raise ValueError(f"Argument `model` must have a layer named 'output'. Received: model={model.name!r}")
