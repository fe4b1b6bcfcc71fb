import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from vgbench.models import UnknownNameError, activations

REQUIRED = {
    "sigmoid": "saturating",
    "hard_sigmoid": "saturating",
    "tanh": "saturating",
    "softsign": "saturating",
    "relu": "relu",
    "relu6": "relu",
    "leaky_relu": "relu",
    "prelu": "relu",
    "elu": "smooth",
    "selu": "smooth",
    "gelu": "smooth",
    "swish": "smooth",
    "mish": "smooth",
    "softplus": "smooth",
    "linear": "linear",
}
# Avoids the kinks of relu-like and hard_sigmoid exactly, where a derivative
# has two reasonable values.
GRID = np.linspace(-8.0, 8.0, 1601, dtype="float32") + np.float32(0.0013)


def test_registry_has_every_required_activation_in_its_family():
    assert set(REQUIRED) <= set(activations.names())
    assert activations.names() == sorted(activations.names())
    for name in activations.names():
        act = activations.get(name)
        assert act.name == act.base == name
        assert act.family in activations.FAMILIES
        if name in REQUIRED:
            assert act.family == REQUIRED[name], name


@pytest.mark.parametrize("alias, base", sorted(activations.ALIASES.items()))
def test_aliases_resolve_to_the_canonical_entry(alias, base):
    assert base in activations.names()
    assert activations.get(alias) == activations.get(base)
    assert activations.get(alias).name == base


def test_silu_is_swish():
    assert activations.get("silu").name == "swish"


def test_names_are_case_and_whitespace_insensitive():
    assert activations.get("  TanH ") == activations.get("tanh")
    assert activations.get("LeakyReLU(Negative_Slope=0.1)").name == "leaky_relu(negative_slope=0.1)"


def test_parameters_are_normalized_in_the_canonical_name():
    act = activations.get("elu( alpha = 2 )")
    assert act.name == "elu(alpha=2.0)"
    assert act.kwargs == {"alpha": 2.0}
    assert activations.get("leaky_relu(negative_slope=0.2)").name == "leaky_relu"
    assert activations.get("leaky_relu").params == {"negative_slope": 0.2}


@pytest.mark.parametrize(
    "spec",
    [*activations.names(), "leaky_relu(negative_slope=0.01)", "elu(alpha=0.5)", "silu"],
)
def test_canonical_names_round_trip(spec):
    act = activations.get(spec)
    assert activations.get(act.name) == act
    assert activations.get(act) is act
    assert hash(activations.get(act.name)) == hash(act)


def test_a_typo_names_the_closest_activation_and_lists_the_valid_ones():
    with pytest.raises(UnknownNameError) as info:
        activations.get("sigmod")
    message = str(info.value)
    assert message.startswith("Unknown activation 'sigmod'. Did you mean 'sigmoid'? Valid activations: ")
    assert message.endswith(", ".join(activations.names()))
    assert "\n" not in message


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "leaky_relu(slope=0.1)",
            "Invalid parameter 'slope' for activation 'leaky_relu'; valid parameters: negative_slope",
        ),
        ("relu(alpha=1.0)", "Invalid parameter 'alpha' for activation 'relu'; valid parameters: (none)"),
        ("elu(beta=1.0)", "Invalid parameter 'beta' for activation 'elu'; valid parameters: alpha"),
    ],
)
def test_an_unknown_parameter_lists_the_valid_ones(spec, message):
    with pytest.raises(UnknownNameError) as info:
        activations.get(spec)
    assert str(info.value) == message


def test_a_parameter_of_the_wrong_type_is_a_value_error():
    with pytest.raises(ValueError, match="must be a number. Received: negative_slope='0.1'"):
        activations.get("leaky_relu(negative_slope='0.1')")


def test_a_value_the_keras_layer_rejects_is_a_value_error_when_read():
    with pytest.raises(ValueError) as info:
        activations.get("leaky_relu(negative_slope=-0.1)")
    assert str(info.value) == (
        "Parameter 'negative_slope' of activation 'leaky_relu' must be non-negative. Received: negative_slope=-0.1"
    )
    # The check mirrors Keras: it refuses the same value and accepts the boundary.
    with pytest.raises(ValueError):
        keras.layers.LeakyReLU(negative_slope=-0.1)
    assert isinstance(activations.get("leaky_relu(negative_slope=0)").layer("l"), keras.layers.LeakyReLU)


@pytest.mark.parametrize("spec", [*activations.names(), "leaky_relu(negative_slope=0.1)", "elu(alpha=0.5)"])
def test_layer_computes_the_same_function_as_call(spec):
    act = activations.get(spec)
    layer = act.layer("hidden_3_act")
    assert isinstance(layer, keras.layers.Layer)
    assert layer.name == "hidden_3_act"
    x = GRID.reshape(1, -1)
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(act(x)), rtol=1e-5, atol=1e-6)


def test_layers_are_fresh_and_of_the_dedicated_keras_class():
    act = activations.get("relu")
    assert act.layer("a") is not act.layer("a")
    assert isinstance(activations.get("prelu").layer("p"), keras.layers.PReLU)
    leaky = activations.get("leaky_relu").layer("l")
    assert isinstance(leaky, keras.layers.LeakyReLU)
    # Keras' LeakyReLU layer defaults to 0.3; the registry promises 0.2.
    assert leaky.negative_slope == pytest.approx(0.2)
    assert isinstance(activations.get("elu(alpha=0.5)").layer("e"), keras.layers.ELU)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("relu", lambda x: np.maximum(x, 0)),
        ("relu6", lambda x: np.clip(x, 0, 6)),
        ("leaky_relu", lambda x: np.where(x > 0, x, 0.2 * x)),
        ("leaky_relu(negative_slope=0.01)", lambda x: np.where(x > 0, x, 0.01 * x)),
        ("prelu", lambda x: np.where(x > 0, x, activations.PRELU_INITIAL_SLOPE * x)),
        ("elu(alpha=0.5)", lambda x: np.where(x > 0, x, 0.5 * np.expm1(x))),
        ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
        ("hard_sigmoid", lambda x: np.clip(x + 3, 0, 6) / 6),
        ("softsign", lambda x: x / (1 + np.abs(x))),
        ("swish", lambda x: x / (1 + np.exp(-x))),
        ("linear", lambda x: x),
    ],
)
def test_call_matches_the_textbook_formula(spec, expected):
    got = np.asarray(activations.get(spec)(GRID))
    np.testing.assert_allclose(got, expected(GRID.astype("float64")), rtol=1e-5, atol=1e-6)


def test_call_accepts_integer_arrays():
    assert np.asarray(activations.get("tanh")(np.array([0, 1]))).dtype == np.float32


def _autodiff_derivative(act, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = act(x)
    return y, tape.gradient(y, x)


@pytest.mark.parametrize("name", ["sigmoid", "hard_sigmoid", "tanh", "softsign"])
def test_derivative_from_output_matches_autodiff(name):
    act = activations.get(name)
    y, derivative = _autodiff_derivative(act, GRID)
    from_output = act.derivative_from_output(y)
    np.testing.assert_allclose(np.asarray(from_output), np.asarray(derivative), atol=1e-6)
    # The saturated tails are part of the grid: the derivative does vanish.
    assert np.asarray(derivative).min() < 0.05 * act.max_derivative


@pytest.mark.parametrize(
    "name, maximum", [("sigmoid", 0.25), ("hard_sigmoid", 1 / 6), ("tanh", 1.0), ("softsign", 1.0)]
)
def test_max_derivative_is_the_maximum_of_the_derivative(name, maximum):
    act = activations.get(name)
    assert act.max_derivative == pytest.approx(maximum)
    # Every one of them peaks at 0.
    _, derivative = _autodiff_derivative(act, np.append(GRID, np.float32(0.0)))
    assert np.asarray(derivative).max() == pytest.approx(maximum, rel=1e-6)


def test_derivative_from_output_runs_in_a_graph():
    act = activations.get("tanh")
    fn = tf.function(lambda x: act.derivative_from_output(act(x)))
    np.testing.assert_allclose(np.asarray(fn(tf.constant([0.0, 100.0]))), [1.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("name", sorted(set(REQUIRED) - {"sigmoid", "hard_sigmoid", "tanh", "softsign"}))
def test_non_saturating_activations_have_no_output_derivative(name):
    act = activations.get(name)
    assert act.family != "saturating"
    assert act.derivative_from_output is None
    assert act.max_derivative is None


def test_importing_the_package_does_not_import_keras():
    code = (
        "import sys; from vgbench import models; "
        "models.activations.get('leaky_relu(negative_slope=0.1)'); models.initializers.names(); "
        "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", activations.names())
def test_a_layer_can_be_traced_back_to_its_entry(name):
    # Instrumentation identifies a generic Activation layer by its function's
    # name (Keras calls swish "silu"), so that name must resolve.
    layer = activations.get(name).layer("a")
    if isinstance(layer, keras.layers.Activation):
        assert activations.get(layer.activation.__name__).base == name


@pytest.mark.parametrize("name", activations.names())
def test_derivative_at_the_pre_activation_matches_autodiff(name):
    act = activations.get(name)
    z = tf.constant(GRID)
    with tf.GradientTape() as tape:
        tape.watch(z)
        y = act(z)
    expected = tape.gradient(y, z).numpy()
    np.testing.assert_allclose(act.derivative(GRID).numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "spec, slope",
    [(name, None) for name in activations.names()]
    + [("leaky_relu(negative_slope=0.0)", None), ("prelu", 0.0), ("prelu", 0.25), ("prelu", "per-unit")],
)
def test_zero_derivative_is_where_the_derivative_is_zero(spec, slope):
    act = activations.get(spec)
    edges = [0.0, -0.0, 6.0, -3.0, 3.0, 1e3, -1e3, -90.0, 90.0, 20.0, np.inf, -np.inf, np.nan]
    z = np.concatenate([GRID, np.array(edges, dtype="float32")]).reshape(-1, 2)
    if slope == "per-unit":  # a learned slope per unit, one of them 0
        slope = np.array([0.0, 0.3], dtype="float32")
    mask = keras.ops.convert_to_numpy(act.zero_derivative(z, slope=slope))
    expected = keras.ops.convert_to_numpy(act.derivative(z, slope=slope)) == 0
    assert mask.dtype == bool and mask.shape == z.shape
    np.testing.assert_array_equal(mask, expected)


def test_derivative_is_exactly_zero_only_where_no_gradient_flows():
    z = np.array([-1e3, -5.0, -1e-3, 1e-3, 5.0, 7.0, 1e3], dtype="float32")
    zero = lambda spec, **kw: (activations.get(spec).derivative(z, **kw).numpy() == 0).tolist()  # noqa: E731
    assert zero("relu") == [True, True, True, False, False, False, False]
    assert zero("relu6") == [True, True, True, False, False, True, True]
    assert zero("hard_sigmoid") == [True, True, False, False, True, True, True]
    assert not any(zero("leaky_relu")) and not any(zero("prelu", slope=0.1)) and not any(zero("linear"))
    assert zero("leaky_relu(negative_slope=0.0)")[:3] == [True, True, True]
    assert zero("prelu", slope=0.0)[:3] == [True, True, True]
    # Saturating ones only in float32 underflow: sigmoid at z = 1000 (1 - σ(z) rounds to 0), not at 5.
    assert zero("sigmoid") == [True, False, False, False, False, False, True]


@pytest.mark.parametrize("name", activations.names())
def test_every_activation_has_a_meanfield_form_or_says_why_not(name):
    # The theory (bench/theory.py) reads these forms: a new entry is either modelled or says why it is not.
    act = activations.get(name)
    form = act.meanfield
    if form is None:
        assert act.no_meanfield.strip(), f"{name}: no mean-field form and no reason"
        return
    assert not act.no_meanfield
    assert isinstance(form, (activations.PiecewiseLinear, activations.Smooth))
    # That it is the function Keras computes: tests/bench/test_theory.py (test_numpy_activations_are_the_keras_ones).


def test_an_entry_needs_a_meanfield_form_or_a_reason_but_not_both():
    with pytest.raises(ValueError, match="mean-field form or the reason"):
        activations._Entry("smooth")
    with pytest.raises(ValueError, match="mean-field form or the reason"):
        activations._Entry("relu", meanfield=lambda p, np, sp: None, no_meanfield="both")
    assert activations._Entry("smooth", no_meanfield="not derived yet").meanfield is None
