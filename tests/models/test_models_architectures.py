import itertools
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from vgbench.models import (
    HiddenLayer,
    UnknownNameError,
    activations,
    build_model,
    hidden_layers,
    initializers,
    output_layer,
)
from vgbench.models.architectures import block_sizes, count_params

RNG = np.random.default_rng(0)
# One shared batch keeps the pairwise test fast.
X_MLP = RNG.random((4, 784), dtype=np.float32)
X_CNN = RNG.random((2, 28, 28, 1), dtype=np.float32)
Y = np.array([0, 1, 2, 3], dtype="int32")
PAIRS = list(itertools.product(activations.names(), initializers.names()))
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def mlp(**kwargs):
    args = dict(depth=4, width=8, activation="tanh", initializer="glorot_uniform", seed=0)
    args.update(kwargs)
    return build_model("mlp", **args)


def gradients(model, x, y, training=True):
    with tf.GradientTape() as tape:
        loss = LOSS(y, model(x, training=training))
    return loss, tape.gradient(loss, model.trainable_variables)


def layer_names(model):
    return [layer.name for layer in model.layers]


def assert_outputs_differ(a, b, x=X_MLP, training=True):
    out_a = np.asarray(a(x, training=training))
    out_b = np.asarray(b(x, training=training))
    assert np.abs(out_a - out_b).max() > 1e-4


def test_the_product_covers_every_activation_and_initializer():
    assert len(activations.names()) >= 15
    assert len(initializers.names()) >= 12
    assert len(PAIRS) >= 15 * 12


@pytest.mark.parametrize("activation, initializer", PAIRS)
def test_every_pair_trains_one_step_with_finite_gradients(activation, initializer):
    model = build_model("mlp", depth=2, width=8, activation=activation, initializer=initializer)
    loss, grads = gradients(model, X_MLP, Y)
    assert np.isfinite(float(loss))
    assert len(grads) == len(model.trainable_variables) > 0
    for variable, grad in zip(model.trainable_variables, grads):
        assert grad is not None, variable.path
        assert np.isfinite(np.asarray(grad)).all(), variable.path


def test_mlp_follows_the_naming_contract():
    model = mlp(depth=3)
    assert layer_names(model) == [
        "input",
        "hidden_0",
        "hidden_0_act",
        "hidden_1",
        "hidden_1_act",
        "hidden_2",
        "hidden_2_act",
        "output",
    ]
    assert model.input_shape == (None, 784)
    assert model.output_shape == (None, 10)
    for block in hidden_layers(model):
        assert isinstance(block.weight_layer, keras.layers.Dense)
        assert block.weight_layer.units == 8
        assert block.weight_layer.use_bias
    out = output_layer(model)
    assert isinstance(out, keras.layers.Dense) and out.name == "output"
    # Logits: the output layer applies no activation.
    assert out.activation is keras.activations.linear


def test_hidden_layers_are_ordered_by_index_past_ten():
    model = mlp(depth=12)
    blocks = hidden_layers(model)
    assert [b.index for b in blocks] == list(range(12))
    assert [b.name for b in blocks] == [f"hidden_{i}" for i in range(12)]
    for b in blocks:
        assert isinstance(b, HiddenLayer)
        assert b.weight_layer is model.get_layer(b.name)
        assert b.activation_layer is model.get_layer(f"{b.name}_act")


def test_hidden_layers_and_output_layer_reject_other_models():
    inputs = keras.Input((4,))
    bare = keras.Model(inputs, keras.layers.Dense(2, name="hidden_0")(inputs), name="bare")
    with pytest.raises(ValueError, match="'hidden_0' has no activation layer 'hidden_0_act'"):
        hidden_layers(bare)
    with pytest.raises(ValueError, match="Argument `model` must have a layer named 'output'"):
        output_layer(bare)
    empty = keras.Model(inputs, keras.layers.Dense(2, name="output")(inputs))
    with pytest.raises(ValueError, match="without gaps"):
        hidden_layers(empty)


@pytest.mark.parametrize("depth, sizes", [(3, [28, 14, 7]), (6, [28, 28, 14, 14, 7, 7])])
def test_cnn_downsamples_twice_and_trains(depth, sizes):
    model = build_model("cnn", depth=depth, width=4, activation="relu", initializer="he_normal")
    names = layer_names(model)
    pools = [n for n in names if n.startswith("pool_")]
    assert pools == ["pool_0", "pool_1"]
    for pool in pools:
        assert isinstance(model.get_layer(pool), keras.layers.MaxPooling2D)
    assert names[-2:] == ["global_pool", "output"]
    blocks = hidden_layers(model)
    assert len(blocks) == depth
    for block, size in zip(blocks, sizes):
        conv = block.weight_layer
        assert isinstance(conv, keras.layers.Conv2D)
        assert conv.kernel_size == (3, 3) and conv.padding == "same" and conv.filters == 4
        assert conv.output.shape[1:] == (size, size, 4)
    assert model.output_shape == (None, 10)
    loss, grads = gradients(model, X_CNN, Y[:2])
    assert np.isfinite(float(loss))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_shallow_cnns_pool_at_most_once_per_third():
    one = build_model("cnn", depth=1, width=2, activation="relu", initializer="he_normal")
    assert not [n for n in layer_names(one) if n.startswith("pool_")]
    two = build_model("cnn", depth=2, width=2, activation="relu", initializer="he_normal")
    assert [n for n in layer_names(two) if n.startswith("pool_")] == ["pool_0"]
    assert layer_names(two).index("pool_0") == layer_names(two).index("hidden_0_act") + 1


def test_batchnorm_goes_before_the_activation_and_drops_the_bias():
    base, fixed = mlp(), mlp(norm="batchnorm")
    names = layer_names(fixed)
    for i in range(4):
        norm = fixed.get_layer(f"hidden_{i}_norm")
        assert isinstance(norm, keras.layers.BatchNormalization)
        assert names.index(f"hidden_{i}") < names.index(f"hidden_{i}_norm") < names.index(f"hidden_{i}_act")
        assert not fixed.get_layer(f"hidden_{i}").use_bias
    assert fixed.get_layer("output").use_bias
    assert_outputs_differ(base, fixed)


def test_batchnorm_after_goes_after_the_activation_and_keeps_the_bias():
    base, fixed = mlp(), mlp(norm="batchnorm_after")
    names = layer_names(fixed)
    for i in range(4):
        assert isinstance(fixed.get_layer(f"hidden_{i}_norm"), keras.layers.BatchNormalization)
        assert names.index(f"hidden_{i}_act") < names.index(f"hidden_{i}_norm")
        assert fixed.get_layer(f"hidden_{i}").use_bias
    assert_outputs_differ(base, fixed)


def test_layernorm_goes_before_the_activation_and_keeps_the_bias():
    base, fixed = mlp(), mlp(norm="layernorm")
    names = layer_names(fixed)
    for i in range(4):
        assert isinstance(fixed.get_layer(f"hidden_{i}_norm"), keras.layers.LayerNormalization)
        assert names.index(f"hidden_{i}_norm") < names.index(f"hidden_{i}_act")
        assert fixed.get_layer(f"hidden_{i}").use_bias
    # Layer normalization does not depend on the batch: it changes inference too.
    assert_outputs_differ(base, fixed, training=False)


def _adds(model):
    return sorted(n for n in layer_names(model) if re.fullmatch(r"hidden_\d+_add", n))


@pytest.mark.parametrize(
    "depth, every, adds",
    [
        (4, 1, ["hidden_0_add", "hidden_1_add", "hidden_2_add", "hidden_3_add"]),
        (4, 2, ["hidden_1_add", "hidden_3_add"]),
        # A group cut short by the end of the network keeps its skip.
        (5, 2, ["hidden_1_add", "hidden_3_add", "hidden_4_add"]),
        (3, 4, ["hidden_2_add"]),
    ],
)
def test_residual_skips_close_every_group(depth, every, adds):
    base, fixed = mlp(depth=depth), mlp(depth=depth, residual_every=every)
    assert _adds(fixed) == adds
    for name in adds:
        add = fixed.get_layer(name)
        assert isinstance(add, keras.layers.Add)
        i = int(name.split("_")[1])
        # The skip joins after the block's activation.
        assert layer_names(fixed).index(f"hidden_{i}_act") < layer_names(fixed).index(name)
    # Only the first skip starts at the 784-wide input and needs a projection.
    assert [n for n in layer_names(fixed) if n.endswith("_proj")] == ["hidden_0_proj"]
    proj = fixed.get_layer("hidden_0_proj")
    assert isinstance(proj, keras.layers.Dense) and proj.units == 8 and not proj.use_bias
    assert_outputs_differ(base, fixed, training=False)


def test_residual_skips_are_identities_between_equal_widths():
    model = mlp(depth=4, residual_every=2)
    names = ["hidden_1_add", "hidden_3_act", "hidden_3_add"]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    group_input, block_output, added = (np.asarray(t) for t in probe(X_MLP))
    np.testing.assert_allclose(added, group_input + block_output, rtol=1e-6)


def test_residual_projections_follow_the_width_schedule():
    model = mlp(depth=4, residual_every=2, width_schedule=[8, 8, 16, 16])
    assert [n for n in layer_names(model) if n.endswith("_proj")] == ["hidden_0_proj", "hidden_2_proj"]
    assert model.get_layer("hidden_2_proj").units == 16
    assert [b.weight_layer.units for b in hidden_layers(model)] == [8, 8, 16, 16]
    same = mlp(depth=4, residual_every=2, width_schedule=[8, 16, 16, 16])
    assert [n for n in layer_names(same) if n.endswith("_proj")] == ["hidden_0_proj"]


def test_cnn_residual_groups_restart_after_each_pool():
    model = build_model("cnn", depth=6, width=4, activation="relu", initializer="he_normal", residual_every=3)
    names = layer_names(model)
    # Blocks per resolution: {0, 1}, {2, 3}, {4, 5}; a group of 3 would span a pool.
    assert _adds(model) == ["hidden_1_add", "hidden_3_add", "hidden_5_add"]
    proj = model.get_layer("hidden_0_proj")
    assert isinstance(proj, keras.layers.Conv2D) and proj.kernel_size == (1, 1)
    assert [n for n in names if n.endswith("_proj")] == ["hidden_0_proj"]
    _, grads = gradients(model, X_CNN, Y[:2])
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_dropout_follows_each_block_and_is_active_only_in_training():
    base, fixed = mlp(), mlp(dropout=0.5)
    names = layer_names(fixed)
    for i in range(4):
        layer = fixed.get_layer(f"hidden_{i}_dropout")
        assert isinstance(layer, keras.layers.Dropout) and layer.rate == 0.5
        assert names.index(f"hidden_{i}_act") < names.index(f"hidden_{i}_dropout")
    assert_outputs_differ(base, fixed, training=True)
    np.testing.assert_allclose(np.asarray(base(X_MLP)), np.asarray(fixed(X_MLP)), rtol=1e-6)


def test_no_fix_adds_no_extra_layers():
    names = layer_names(mlp())
    assert not [n for n in names if n.endswith(("_norm", "_add", "_proj", "_dropout"))]


def test_same_seed_gives_identical_weights():
    a, b = mlp(seed=3, residual_every=2), mlp(seed=3, residual_every=2)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_different_seeds_give_different_kernels():
    a, b = mlp(seed=3), mlp(seed=4)
    for name in ["hidden_0", "hidden_2", "output"]:
        assert not np.allclose(a.get_layer(name).kernel, b.get_layer(name).kernel)


def _seed(seed, slot):
    # The documented derivation, spelled out: SeedSequence([seed, stream 0, slot]), 31 bits.
    return int(np.random.SeedSequence([seed, 0, slot]).generate_state(1)[0]) % 2**31


def test_nearby_seeds_share_no_kernel():
    # Three seeds are three draws: no kernel of one run reappears in another, in any layer.
    kernels = {
        seed: [np.asarray(mlp(seed=seed, depth=6, width=16).get_layer(f"hidden_{i}").kernel) for i in range(1, 6)]
        for seed in (0, 1, 2)
    }
    for a in (0, 1, 2):
        for b in (0, 1, 2):
            if a < b:
                for ka in kernels[a]:
                    assert not any(np.allclose(ka, kb) for kb in kernels[b]), (a, b)


def test_kernels_use_the_documented_seeds():
    init = initializers.get("glorot_uniform")
    model = mlp(seed=5, depth=3, residual_every=3)
    for i in range(3):
        kernel = model.get_layer(f"hidden_{i}").kernel
        np.testing.assert_array_equal(kernel, init.make(_seed(5, i))(kernel.shape))
    out = model.get_layer("output").kernel
    np.testing.assert_array_equal(out, init.make(_seed(5, 3))(out.shape))
    proj = model.get_layer("hidden_0_proj").kernel
    np.testing.assert_array_equal(proj, init.make(_seed(5, 3 + 1 + 0))(proj.shape))
    # Blocks of one shape still start from different weights.
    assert not np.allclose(model.get_layer("hidden_1").kernel, model.get_layer("hidden_2").kernel)
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:
            np.testing.assert_array_equal(layer.bias, 0.0)


def test_accepts_resolved_activation_and_initializer():
    act, init = activations.get("leaky_relu(negative_slope=0.1)"), initializers.get("kaiming_normal")
    model = mlp(activation=act, initializer=init)
    assert model.get_layer("hidden_0_act").negative_slope == pytest.approx(0.1)
    a = mlp(activation="LeakyReLU(negative_slope=0.1)", initializer="he_normal")
    for wa, wb in zip(model.get_weights(), a.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_custom_input_shape_and_classes():
    model = build_model(
        "mlp", depth=1, width=3, activation="relu", initializer="he_normal", input_shape=(5,), num_classes=2
    )
    assert model.input_shape == (None, 5) and model.output_shape == (None, 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arch": "rnn"}, "Argument `arch` must be one of 'mlp', 'cnn'. Received: arch='rnn'"),
        ({"depth": 0}, "Argument `depth` must be a positive integer. Received: depth=0"),
        ({"depth": 2.0}, "Argument `depth` must be a positive integer. Received: depth=2.0"),
        ({"depth": True}, "Argument `depth` must be a positive integer. Received: depth=True"),
        ({"width": -1}, "Argument `width` must be a positive integer. Received: width=-1"),
        ({"num_classes": 0}, "Argument `num_classes` must be a positive integer. Received: num_classes=0"),
        (
            {"residual_every": -1},
            "Argument `residual_every` must be a non-negative integer. Received: residual_every=-1",
        ),
        ({"seed": -2}, "Argument `seed` must be a non-negative integer. Received: seed=-2"),
        (
            {"norm": "groupnorm"},
            "Argument `norm` must be one of None, 'batchnorm', 'batchnorm_after', 'layernorm'. "
            "Received: norm='groupnorm'",
        ),
        ({"dropout": 1.0}, "Argument `dropout` must be a number in [0, 1). Received: dropout=1.0"),
        ({"dropout": -0.1}, "Argument `dropout` must be a number in [0, 1). Received: dropout=-0.1"),
        ({"dropout": "0.1"}, "Argument `dropout` must be a number in [0, 1). Received: dropout='0.1'"),
        ({"width_schedule": [8, 8]}, "Received: width_schedule=[8, 8]"),
        ({"width_schedule": [8, 8, 0, 8]}, "Received: width_schedule=[8, 8, 0, 8]"),
        ({"width_schedule": "8888"}, "Received: width_schedule='8888'"),
        ({"input_shape": (28, 28)}, "Argument `input_shape` must be 1 positive integer(s) for arch='mlp'"),
        ({"arch": "cnn", "input_shape": (784,)}, "Received: input_shape=(784,)"),
    ],
)
def test_invalid_arguments_are_named_and_echoed(kwargs, message):
    args = dict(arch="mlp", depth=4, width=8, activation="relu", initializer="he_normal")
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        build_model(args.pop("arch"), **args)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_names_raise_unknown_name_error():
    with pytest.raises(UnknownNameError, match="Did you mean 'relu'"):
        mlp(activation="rellu")
    with pytest.raises(UnknownNameError, match="Did you mean 'he_normal'"):
        mlp(initializer="he_nromal")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(arch="mlp", depth=5, width=32),
        dict(arch="mlp", depth=5, width=32, activation="prelu", norm="batchnorm", residual_every=2),
        dict(arch="mlp", depth=4, width=16, norm="layernorm", residual_every=3),
        dict(arch="cnn", depth=6, width=8, activation="prelu", norm="batchnorm_after", residual_every=2),
        dict(arch="cnn", depth=5, width=8, norm="batchnorm", residual_every=1),
        dict(arch="cnn", depth=2, width=4),
    ],
)
def test_count_params_matches_the_built_model(kwargs):
    """The size estimate used to refuse oversized runs counts what Keras builds."""
    model = build_model(initializer="he_normal", **{"activation": "relu", **kwargs})
    assert count_params(**kwargs) == model.count_params()
    assert len(block_sizes(kwargs["arch"], depth=kwargs["depth"], width=kwargs["width"])) == kwargs["depth"]
