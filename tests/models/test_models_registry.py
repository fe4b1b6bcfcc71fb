import pickle

import pytest

from vgbench.models import registry
from vgbench.models.registry import UnknownNameError


@pytest.mark.parametrize(
    "text, expected",
    [
        ("relu", ("relu", {})),
        ("  ReLU  ", ("relu", {})),
        ("relu()", ("relu", {})),
        ("leaky_relu(negative_slope=0.1)", ("leaky_relu", {"negative_slope": 0.1})),
        (" Leaky_ReLU ( Negative_Slope = -1e-2 ) ", ("leaky_relu", {"negative_slope": -0.01})),
        (
            "variance_scaling(scale=2, mode='fan_in', distribution=\"normal\")",
            ("variance_scaling", {"scale": 2, "mode": "fan_in", "distribution": "normal"}),
        ),
        ("f(a=True, b=None, c=(1, 2))", ("f", {"a": True, "b": None, "c": (1, 2)})),
    ],
)
def test_parse_spec(text, expected):
    assert registry.parse_spec(text) == expected


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "Malformed spec"),
        ("relu)", "Malformed spec"),
        ("relu(", "Malformed spec"),
        ("1relu", "Malformed spec"),
        ("a.b", "Malformed spec"),
        ("relu(a=1)(b=2)", "Malformed spec"),
        ("relu(a=1", "Malformed spec"),
        ("leaky_relu(0.1)", "by keyword"),
        ("relu(**{'a': 1})", "by keyword"),
        ("relu(a=1, A=2)", "more than once"),
        ("relu(a=__import__('os').getcwd())", "must be a literal"),
        ("relu(a=b)", "must be a literal"),
        (3, "must be a string"),
    ],
)
def test_parse_spec_rejects_malformed_text(text, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        registry.parse_spec(text)
    message = str(info.value)
    assert "\n" not in message
    assert f"Received: spec={text!r}" in message


def test_canonical_sorts_parameters_and_omits_empty_parens():
    assert registry.canonical("relu", {}) == "relu"
    assert registry.canonical("x", {"b": 1.0, "a": "fan_in"}) == "x(a='fan_in', b=1.0)"


@pytest.mark.parametrize(
    "kwargs",
    [{"negative_slope": 0.1}, {"scale": 2.0, "mode": "fan_avg"}, {"x": -1e-07, "y": True}],
)
def test_canonical_round_trips_through_parse_spec(kwargs):
    text = registry.canonical("name", kwargs)
    assert registry.parse_spec(text) == ("name", kwargs)


def test_unknown_name_suggests_the_closest_match():
    error = registry.unknown_name("activation", "sigmod", ["tanh", "sigmoid", "elu"])
    assert isinstance(error, ValueError)
    assert str(error) == ("Unknown activation 'sigmod'. Did you mean 'sigmoid'? Valid activations: elu, sigmoid, tanh")
    assert error.suggestion == "sigmoid"
    assert error.choices == ("elu", "sigmoid", "tanh")


def test_unknown_name_can_suggest_an_alias_but_lists_canonical_names():
    error = registry.unknown_name("initializer", "xavier_unifrm", ["glorot_uniform"], ["xavier_uniform"])
    assert error.suggestion == "xavier_uniform"
    assert str(error).endswith("Valid initializers: glorot_uniform")


def test_unknown_name_without_a_close_match_has_no_suggestion():
    error = registry.unknown_name("activation", "zzzzzz", ["relu", "tanh"])
    assert error.suggestion is None
    assert "Did you mean" not in str(error)


def test_unknown_name_error_survives_pickling():
    error = registry.unknown_name("activation", "sigmod", ["sigmoid"])
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, UnknownNameError)
    assert str(copy) == str(error)
    assert copy.suggestion == "sigmoid"


def test_bind_params_rejects_unknown_parameters():
    with pytest.raises(UnknownNameError) as info:
        registry.bind_params("activation", "leaky_relu", {"slope": 0.1}, {"negative_slope": 0.2})
    assert str(info.value) == (
        "Invalid parameter 'slope' for activation 'leaky_relu'; valid parameters: negative_slope"
    )


def test_bind_params_normalizes_numbers_and_drops_defaults():
    defaults = {"gain": 1.0, "mode": "fan_in", "n": 3, "flag": False}
    assert registry.bind_params("x", "y", {"gain": 2}, defaults) == {"gain": 2.0}
    assert type(registry.bind_params("x", "y", {"gain": 2}, defaults)["gain"]) is float
    assert registry.bind_params("x", "y", {"gain": 1, "mode": "fan_in", "n": 3}, defaults) == {}
    assert registry.bind_params("x", "y", {"flag": True}, defaults) == {"flag": True}


@pytest.mark.parametrize(
    "kwargs",
    [{"gain": "2"}, {"gain": True}, {"gain": None}, {"mode": 1}, {"n": 2.5}, {"flag": 1}],
)
def test_bind_params_rejects_wrong_types(kwargs):
    defaults = {"gain": 1.0, "mode": "fan_in", "n": 3, "flag": False}
    ((key, value),) = kwargs.items()
    with pytest.raises(ValueError, match=f"Parameter '{key}' of x 'y' must be") as info:
        registry.bind_params("x", "y", kwargs, defaults)
    assert not isinstance(info.value, UnknownNameError)
    assert str(info.value).endswith(f"Received: {key}={value!r}")


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 10**400])
def test_bind_params_rejects_non_finite_numbers(value):
    # A canonical name holding inf or nan would not parse back.
    with pytest.raises(ValueError, match="Parameter 'gain' of x 'y' must be a finite number") as info:
        registry.bind_params("x", "y", {"gain": value}, {"gain": 1.0})
    assert len(str(info.value).splitlines()) == 1


def test_a_spec_with_an_overflowing_literal_is_rejected():
    # 1e999 is read as inf.
    name, kwargs = registry.parse_spec("leaky_relu(negative_slope=1e999)")
    with pytest.raises(ValueError, match="must be a finite number"):
        registry.bind_params("activation", name, kwargs, {"negative_slope": 0.2})


def test_shorten_keeps_short_values_and_cuts_long_ones():
    assert registry.shorten("'relu'") == "'relu'"
    long = "y" * 1000
    short = registry.shorten(long)
    assert short == "y" * registry.ECHO_LIMIT + "…(1000 chars)"
    assert registry.shorten("a\nb") == "a\\nb"  # one line


def test_unknown_long_name_is_echoed_shortened():
    with pytest.raises(UnknownNameError) as excinfo:
        raise registry.unknown_name("activation", "z" * 50_000, ["relu", "tanh"])
    message = str(excinfo.value)
    assert "…(50000 chars)" in message and "Valid activations: relu, tanh" in message
    assert len(message) < 200
