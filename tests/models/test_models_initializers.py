import inspect
import math
import re

import keras
import numpy as np
import pytest

from vgbench.models import UnknownNameError, initializers

REQUIRED = [
    "random_normal",
    "random_uniform",
    "truncated_normal",
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_uniform",
    "lecun_normal",
    "orthogonal",
    "variance_scaling",
    "zeros",
]
SHAPE = (16, 8)


def test_registry_has_every_required_initializer():
    assert set(REQUIRED) <= set(initializers.names())
    assert initializers.names() == sorted(initializers.names())


@pytest.mark.parametrize(
    "alias, base",
    [
        ("xavier_uniform", "glorot_uniform"),
        ("xavier_normal", "glorot_normal"),
        ("kaiming_uniform", "he_uniform"),
        ("kaiming_normal", "he_normal"),
    ],
)
def test_aliases_resolve_to_the_canonical_entry(alias, base):
    assert initializers.get(alias) == initializers.get(base)
    assert initializers.get(alias.upper()).name == base


@pytest.mark.parametrize(
    "spec, name",
    [
        ("random_normal(stddev=0.01)", "random_normal(stddev=0.01)"),
        ("Random_Normal( stddev = 1 )", "random_normal(stddev=1.0)"),
        ("orthogonal(gain=2.0)", "orthogonal(gain=2.0)"),
        ("random_uniform(maxval=0.1, minval=-0.1)", "random_uniform(maxval=0.1, minval=-0.1)"),
        # Parameters equal to their defaults are not part of the name.
        (
            "variance_scaling(scale=2.0, mode='fan_in', distribution='truncated_normal')",
            "variance_scaling(scale=2.0)",
        ),
        (
            "variance_scaling(scale=2.0, mode='fan_avg', distribution='uniform')",
            "variance_scaling(distribution='uniform', mode='fan_avg', scale=2.0)",
        ),
        ("random_normal(stddev=0.05)", "random_normal"),
    ],
)
def test_canonical_names(spec, name):
    init = initializers.get(spec)
    assert init.name == name
    assert initializers.get(init.name) == init
    assert initializers.get(init) is init


@pytest.mark.parametrize("name", initializers.names())
def test_every_entry_round_trips_and_makes_a_keras_initializer(name):
    init = initializers.get(name)
    assert init.name == init.base == name
    made = init.make(seed=1)
    assert isinstance(made, keras.initializers.Initializer)
    values = np.asarray(made(SHAPE))
    assert values.shape == SHAPE and np.isfinite(values).all()


def test_parameters_reach_the_keras_initializer():
    values = np.asarray(initializers.get("random_normal(stddev=1.0)").make(0)((200, 200)))
    assert values.std() == pytest.approx(1.0, rel=0.05)
    values = np.asarray(initializers.get("random_normal(stddev=0.01)").make(0)((200, 200)))
    assert values.std() == pytest.approx(0.01, rel=0.05)
    q = np.asarray(initializers.get("orthogonal(gain=2.0)").make(0)((32, 32)))
    np.testing.assert_allclose(q.T @ q, 4.0 * np.eye(32), atol=1e-4)


@pytest.mark.parametrize("name", sorted(set(initializers.names()) - {"zeros"}))
def test_seeds_make_values_reproducible(name):
    init = initializers.get(name)
    first = np.asarray(init.make(seed=7)(SHAPE))
    again = np.asarray(init.make(seed=7)(SHAPE))
    other = np.asarray(init.make(seed=8)(SHAPE))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_zeros_ignores_the_seed():
    init = initializers.get("zeros")
    np.testing.assert_array_equal(np.asarray(init.make(seed=3)(SHAPE)), np.zeros(SHAPE))


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0", None])
def test_make_rejects_bad_seeds(seed):
    with pytest.raises(ValueError, match=f"Argument `seed` must be a non-negative integer. Received: seed={seed!r}"):
        initializers.get("he_normal").make(seed)


def test_a_typo_names_the_closest_initializer_and_lists_the_valid_ones():
    with pytest.raises(UnknownNameError) as info:
        initializers.get("glorot_unifrom")
    assert str(info.value) == (
        "Unknown initializer 'glorot_unifrom'. Did you mean 'glorot_uniform'? "
        f"Valid initializers: {', '.join(initializers.names())}"
    )


@pytest.mark.parametrize(
    "spec, keras_class",
    [
        ("random_normal(std=1.0)", keras.initializers.RandomNormal),
        ("orthogonal(scale=2.0)", keras.initializers.Orthogonal),
        ("variance_scaling(seed=1)", keras.initializers.VarianceScaling),
        ("he_normal(scale=2.0)", keras.initializers.HeNormal),
        ("zeros(value=1.0)", keras.initializers.Zeros),
    ],
)
def test_an_unknown_parameter_lists_the_keras_constructor_parameters(spec, keras_class):
    skipped = {"self", "seed", "input_axes", "output_axes"}
    valid = sorted(
        name
        for name, p in inspect.signature(keras_class.__init__).parameters.items()
        if name not in skipped and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )
    with pytest.raises(UnknownNameError) as info:
        initializers.get(spec)
    base, param = spec.split("(")[0], spec.split("(")[1].split("=")[0]
    assert str(info.value) == (
        f"Invalid parameter '{param}' for initializer '{base}'; "
        f"valid parameters: {', '.join(valid) if valid else '(none)'}"
    )


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("variance_scaling(mode='fan')", "mode"),
        ("variance_scaling(scale=-1.0)", "scale"),
        ("random_normal(stddev='big')", "must be a number"),
    ],
)
def test_values_that_keras_rejects_fail_at_lookup(spec, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        initializers.get(spec)
    assert not isinstance(info.value, UnknownNameError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("random_normal(stddev=-1)", "stddev > 0. Received: stddev=-1.0"),
        ("truncated_normal(stddev=0.0)", "stddev > 0. Received: stddev=0.0"),
        ("random_uniform(minval=1.0, maxval=0.0)", "minval < maxval. Received: minval=1.0, maxval=0.0"),
        ("random_uniform(minval=0.5)", "minval < maxval. Received: minval=0.5, maxval=0.05"),
    ],
)
def test_parameter_constraints_are_checked_when_read(spec, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        initializers.get(spec)


def test_parameters_inside_the_constraints_are_accepted():
    assert initializers.get("random_uniform(minval=-1.0, maxval=1.0)").params["maxval"] == 1.0
    assert initializers.get("random_normal(stddev=0.01)").name == "random_normal(stddev=0.01)"


@pytest.mark.parametrize("name", initializers.names())
def test_every_initializer_has_a_meanfield_description_or_says_why_not(name):
    described = initializers.meanfield(name)
    if described is None:
        assert initializers.no_meanfield(name).strip(), f"{name}: no mean-field description and no reason"
        return
    assert not initializers.no_meanfield(name)
    # Its defaults are Keras' own (the theory reads them without importing Keras).
    assert dict(described.defaults) == dict(initializers.get(name).params)
    mean, a, n = described.variance(described.defaults, 30, 20)
    assert math.isfinite(mean) and a >= 0 and n >= 1


def test_an_initializer_entry_needs_a_meanfield_description_or_a_reason():
    with pytest.raises(ValueError, match="mean-field description or the reason"):
        initializers._Entry("Identity")
    assert initializers._Entry("Identity", no_meanfield="not random").meanfield is None
