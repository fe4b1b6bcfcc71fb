"""The Jacobian spectrum at initialization (`bench.spectrum`): measured against exact cases, predicted, stored."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from vgbench.bench import spectrum
from vgbench.bench.config import RunConfig


def _model(activation, initializer, depth, width, seed=0):
    from vgbench import models

    return models.build_model(
        "mlp", depth=depth, width=width, activation=activation, initializer=initializer, input_shape=(784,), seed=seed
    )


def _kernel(model, name):
    import keras

    return keras.ops.convert_to_numpy(model.get_layer(name).kernel).astype(np.float64)


def test_one_linear_layer_has_the_singular_values_of_its_kernel():
    model = _model("linear", "he_normal", depth=2, width=24)
    x = np.random.default_rng(0).normal(size=(3, 784))
    s = spectrum.singular_values(spectrum.jacobians(model, x, depth=2))
    assert s.shape == (3, 1, 24)
    expected = np.linalg.svd(_kernel(model, "hidden_1"), compute_uv=False)
    for example in range(3):  # a linear layer's Jacobian does not depend on the example
        np.testing.assert_allclose(s[example, 0], expected, rtol=1e-5)


def test_one_tanh_layer_is_the_kernel_times_the_derivative_at_the_example():
    model = _model("tanh", "glorot_normal", depth=2, width=16)
    x = np.random.default_rng(1).normal(size=(1, 784))
    z0 = x @ _kernel(model, "hidden_0")  # zero biases
    expected = np.linalg.svd(np.diag(1 - np.tanh(z0[0]) ** 2) @ _kernel(model, "hidden_1"), compute_uv=False)
    s = spectrum.singular_values(spectrum.jacobians(model, x, depth=2))[0, 0]
    np.testing.assert_allclose(s, expected, rtol=1e-4)


def test_a_deep_linear_network_with_orthogonal_weights_is_an_exact_isometry():
    gain = 1.2
    model = _model("linear", f"orthogonal(gain={gain})", depth=6, width=32)
    table = spectrum.measure(model, np.random.default_rng(2).normal(size=(2, 784)), depth=6, run_id="r")
    assert list(table.columns) == ["run_id", "example", "layer_index", "index", "singular_value"]
    assert len(table) == 2 * 5 * 32
    expected = gain ** table["layer_index"].to_numpy(dtype=float)
    np.testing.assert_allclose(table["singular_value"], expected, rtol=1e-4)
    per = spectrum.spread(table)
    assert per["spread"].max() < 1e-6
    # With Gaussian weights the same network spreads: its squared singular values follow Fuss–Catalan.
    gaussian = spectrum.spread(
        spectrum.measure(_model("linear", "lecun_normal", depth=6, width=32), np.zeros((1, 784)), depth=6)
    )
    assert gaussian["spread"].iloc[-1] > 1.0


@pytest.mark.slow
def test_the_jax_backend_measures_the_same_kernel_singular_values():
    # A subprocess: Keras keeps the backend it was first imported with.
    code = (
        "import numpy as np, keras\n"
        "from vgbench import models\n"
        "from vgbench.bench import spectrum\n"
        "m = models.build_model('mlp', depth=2, width=12, activation='linear', initializer='he_normal',"
        " input_shape=(784,), seed=0)\n"
        "s = spectrum.singular_values(spectrum.jacobians(m, np.ones((1, 784)), 2))[0, 0]\n"
        "w = np.linalg.svd(np.asarray(m.get_layer('hidden_1').kernel, dtype=float), compute_uv=False)\n"
        "assert keras.backend.backend() == 'jax'\n"
        "print(float(np.max(np.abs(s - w) / w)))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-5


def test_fuss_catalan_moments_and_edge():
    # One Ginibre factor: Marchenko–Pastur of ratio 1, moments 1, 2, 5 (Catalan numbers), edge 4.
    assert [spectrum.fuss_catalan_moment(1, k) for k in (1, 2, 3)] == [1, 2, 5]
    assert spectrum.fuss_catalan_edge(1) == 4
    # Normalized variance m2/m1² - 1 of L factors is L: what `predict` adds per i.i.d. layer.
    for layers in (2, 5, 31):
        assert spectrum.fuss_catalan_moment(layers, 2) - 1 == layers
    assert spectrum.fuss_catalan_edge(31) / 32 == pytest.approx(math.e, rel=0.02)


def _config(**fields):
    base = dict(depth=9, width=64, max_steps=0, preprocessing="standardize")
    return RunConfig(**{**base, **fields})


def test_the_prediction_for_the_exact_cases():
    linear_orth = spectrum.predict(_config(activation="linear", initializer="orthogonal"))
    assert list(linear_orth["layer_index"]) == list(range(1, 9))
    np.testing.assert_allclose(linear_orth["spread"], 0.0, atol=1e-12)
    np.testing.assert_allclose(linear_orth["mean_sq"], 1.0)
    linear_gauss = spectrum.predict(_config(activation="linear", initializer="lecun_normal"))
    np.testing.assert_allclose(linear_gauss["spread"], linear_gauss["layer_index"], rtol=1e-9)
    np.testing.assert_allclose(linear_gauss["edge"], [spectrum.fuss_catalan_edge(k) for k in range(1, 9)])
    # ReLU: φ′² is 0 or 1 with probability ½, one unit of spread per layer, orthogonal weights or not.
    relu_orth = spectrum.predict(_config(activation="relu", initializer="orthogonal(gain=1.4142135623730951)"))
    np.testing.assert_allclose(relu_orth["spread"], relu_orth["layer_index"], rtol=1e-6)
    np.testing.assert_allclose(relu_orth["mean_sq"], 1.0, rtol=1e-6)
    relu_he = spectrum.predict(_config(activation="relu", initializer="he_normal"))
    np.testing.assert_allclose(relu_he["spread"], 2 * relu_he["layer_index"], rtol=1e-6)
    # tanh at σ_w² = 1, σ_b² = 0: q → 0, so the orthogonal spread stays O(1) while the Gaussian one grows like l.
    deep = dict(depth=64, activation="tanh")
    tanh_orth = spectrum.predict(_config(initializer="orthogonal", **deep))["spread"].to_numpy()
    tanh_gauss = spectrum.predict(_config(initializer="lecun_normal", **deep))["spread"].to_numpy()
    assert tanh_orth[-1] < 2.0 and tanh_orth[-1] - tanh_orth[31] < 0.2
    np.testing.assert_allclose(tanh_gauss - tanh_orth, np.arange(1, 64))


def test_the_measured_spread_follows_the_prediction_at_width_256():
    # Free probability is exact at large width; at width 256 and 8 layers the spread is within 25%.
    for activation, initializer in (("relu", "orthogonal(gain=1.4142135623730951)"), ("linear", "lecun_normal")):
        config = _config(activation=activation, initializer=initializer, width=256)
        model = _model(activation, initializer, depth=9, width=256)
        x = np.random.default_rng(3).normal(size=(2, 784))
        measured = spectrum.spread(spectrum.measure(model, x, depth=9)).groupby("layer_index")["spread"].mean()
        predicted = spectrum.predict(config).set_index("layer_index")["spread"]
        np.testing.assert_allclose(measured.loc[[4, 8]], predicted.loc[[4, 8]], rtol=0.25)


def test_spread_of_a_hand_made_table():
    table = pd.DataFrame(
        {
            "run_id": "r",
            "example": 0,
            "layer_index": [1, 1, 2, 2],
            "index": [0, 1, 0, 1],
            "singular_value": [1.0, 1.0, 2.0, 0.0],
        }
    )
    per = spectrum.spread(table)
    assert list(per["spread"]) == [0.0, 1.0]  # s² = (4, 0): mean 2, variance 4
    assert list(per["mean_sq"]) == [1.0, 2.0]
    assert spectrum.run_summary(table) == {"jacobian_mean_sq": 2.0, "jacobian_spread": 1.0, "jacobian_s_max": 2.0}


def test_the_field_is_late_and_checked():
    plain = RunConfig(depth=3, width=8)
    assert RunConfig(depth=3, width=8, jacobian_examples=0).run_id == plain.run_id
    assert RunConfig(depth=3, width=8, jacobian_examples=2).run_id != plain.run_id
    for bad, message in (
        (dict(arch="cnn"), "arch='cnn'"),
        (dict(depth=1), "depth=1"),
        (dict(width=spectrum.MAX_WIDTH + 1), f"width={spectrum.MAX_WIDTH + 1}"),
        (dict(fix="residual"), "'residual'"),
    ):
        with pytest.raises(ValueError, match="jacobian_examples") as info:
            RunConfig(**{"depth": 3, "width": 8, **bad, "jacobian_examples": 1})
        assert message in str(info.value)
    with pytest.raises(ValueError, match="non-negative integer"):
        RunConfig(jacobian_examples=-1)


@pytest.mark.mnist
def test_the_table_round_trips_through_the_results_directory(tmp_path, mnist_path):
    from vgbench.bench import results
    from vgbench.bench.runner import run_suite

    common = dict(
        depth=3, width=8, activation="tanh", initializer="orthogonal", max_steps=0, batch_size=32,
        train_samples=256, test_samples=64,
    )  # fmt: skip
    measured, plain = RunConfig(**common, jacobian_examples=2), RunConfig(**common, seed=1)
    run_suite([measured, plain], tmp_path, data_path=mnist_path, jobs=1, progress=False)
    loaded = results.load_results(tmp_path)
    table = loaded.jacobian
    assert set(table["run_id"]) == {measured.run_id}
    assert len(table) == 2 * 2 * 8 and sorted(table["layer_index"].unique()) == [1, 2]
    stored = pd.read_parquet(results.run_dir(tmp_path, measured.run_id) / results.JACOBIAN_FILE)
    pd.testing.assert_frame_equal(stored, table.reset_index(drop=True), check_dtype=False)
    assert not (results.run_dir(tmp_path, plain.run_id) / results.JACOBIAN_FILE).exists()
    runs = loaded.runs.set_index("run_id")
    summary = spectrum.run_summary(table)
    assert runs.loc[measured.run_id, "jacobian_spread"] == pytest.approx(summary["jacobian_spread"])
    assert math.isnan(runs.loc[plain.run_id, "jacobian_spread"])
    # The same config measures the same spectrum again.
    again = tmp_path / "again"
    run_suite([measured], again, data_path=mnist_path, jobs=1, progress=False)
    pd.testing.assert_frame_equal(results.load_jacobian(again), table.reset_index(drop=True))


# --------------------------------------------------------------------------- the claim


def _isometry_tables(spreads: dict, accuracy=0.9):
    """The claim's runs with a chosen jacobian_spread per run set (seed s adds 0.1·s) and a flat history."""
    from vgbench.bench import claims

    claim = claims.get("pennington2017-dynamical-isometry")
    rows, history = [], []
    for rs in claim.run_sets:
        for c in rs.configs():
            spread_value = spreads[rs.name] + 0.1 * c.seed
            rows.append(
                {
                    "run_id": c.run_id,
                    **c.to_dict(),
                    "status": "ok",
                    "test_accuracy": accuracy,
                    "jacobian_spread": spread_value,
                    "jacobian_mean_sq": 1.0,
                }
            )
            history += [{"run_id": c.run_id, "step": s, "test_accuracy": accuracy * s / 300} for s in (100, 200, 300)]
    return claim, pd.DataFrame(rows), pd.DataFrame(history)


@pytest.mark.parametrize(
    ("orth", "gauss", "relu", "expected"),
    [
        (0.5, 20.0, 25.0, "pass"),  # 40x narrower, ReLU far from isometric
        (6.0, 20.0, 25.0, "fail"),  # orthogonal only ~3.3x narrower
        (0.5, 20.0, 0.5, "fail"),  # ReLU isometric
        (0.5, 20.0, 1.5, "fail"),  # ReLU's spread above 1 but within 4x of tanh orthogonal's
        (math.nan, 20.0, 25.0, "inconclusive"),  # not measured
    ],
)
def test_the_isometry_claim_decides_by_its_rule(orth, gauss, relu, expected):
    from vgbench.bench import claims
    from vgbench.bench.results import LAYER_COLUMNS

    claim, runs, history = _isometry_tables(
        {"tanh_orthogonal_d32": orth, "tanh_gaussian_d32": gauss, "relu_orthogonal_d32": relu}
    )
    (result,) = claims.evaluate(runs, pd.DataFrame(columns=LAYER_COLUMNS), history, claims=[claim])
    assert result.verdict == expected, result.summary
    if expected == "inconclusive":
        return
    # By hand: the median over the claims' seeds adds 0.1 x their median seed to the value the set was given.
    shift = 0.1 * float(np.median(claims.SEEDS))
    medians = {"orth": orth + shift, "gauss": gauss + shift, "relu": relu + shift}
    assert result.evidence["tanh_orthogonal_d32.jacobian_spread.median"] == pytest.approx(medians["orth"])
    assert result.evidence["narrowing"] == pytest.approx(medians["gauss"] / medians["orth"])
    by_hand = medians["orth"] * 4 <= medians["gauss"] and medians["relu"] >= max(1, 4 * medians["orth"])
    assert (result.verdict == "pass") == by_hand
    # The theory is reported beside it: Gaussian tanh grows by one unit of spread per layer over orthogonal.
    gap = result.evidence["tanh_gaussian_d32.theory_spread"] - result.evidence["tanh_orthogonal_d32.theory_spread"]
    assert gap == pytest.approx(claims.ISOMETRY_DEPTH - 1)
    assert result.evidence["tanh_orthogonal_d32.steps_to_accuracy"] == 300  # 0.9·s/300 reaches 0.80 at step 300
    assert "Training (finding" in result.summary


# --------------------------------------------------------------------------- report


def test_the_report_profile_and_figure_of_a_hand_made_table():
    from vgbench.bench.report import figures

    config = _config(depth=3, width=2, activation="linear", initializer="lecun_normal")
    runs = pd.DataFrame([{"run_id": "a", **config.to_dict()}, {"run_id": "b", **config.to_dict(), "seed": 1}])
    # Run a: s = (1, 1) at both layers (spread 0); run b: s = (√2, 0) (spread 1), mean s² 1 for both.
    s = {"a": [1.0, 1.0], "b": [math.sqrt(2), 0.0]}
    table = pd.DataFrame(
        [
            {"run_id": r, "example": 0, "layer_index": layer, "index": i, "singular_value": v}
            for r in s
            for layer in (1, 2)
            for i, v in enumerate(s[r])
        ]
    )
    profile = spectrum.spread_by_depth(table, runs)
    measured = profile[profile["source"] == "measured"].set_index("layer_index")
    assert list(measured["spread_lo"]) == [0.0, 0.0] and list(measured["spread_hi"]) == [1.0, 1.0]
    assert list(measured["spread"]) == [0.5, 0.5] and list(measured["n"]) == [2, 2]
    theory = profile[profile["source"] == "theory"].set_index("layer_index")
    assert list(theory["spread"]) == pytest.approx([1.0, 2.0])  # one unit per i.i.d. linear layer
    fig = figures.jacobian_spectrum(profile)
    assert len(fig.axes) == 2
    assert spectrum.spread_by_depth(table.iloc[:0], runs).empty


def test_theory_states_the_finite_width_scatter(capsys):
    from vgbench.bench import theory
    from vgbench.bench.cli import main

    assert main(["theory", "--activation", "gelu", "--initializer", "he_normal", "--width", "1024"]) == 0
    out = capsys.readouterr().out
    assert theory.finite_width_note(1024) in out and "0.016 (SD)" in out
    assert "0.5/sqrt(width) = 0.031" in theory.finite_width_note(256)
    with pytest.raises(ValueError, match="width"):
        theory.finite_width_note(0)
