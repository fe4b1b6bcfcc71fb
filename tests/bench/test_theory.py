"""Mean-field predictions (bench.theory) against closed forms, Monte Carlo and the papers' numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, optimize, special, stats

from vgbench import models
from vgbench.bench import theory
from vgbench.bench.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------ exact cases


@pytest.mark.parametrize("initializer", ["he_normal", "he_uniform", "variance_scaling(scale=2.0)"])
def test_relu_with_he_init_is_exactly_critical(initializer):
    p = theory.predict("relu", initializer, depth=20, width=128)
    assert p.sigma_w2 == 2.0
    assert p.chi1 == 1.0
    # Between square hidden layers χ = σ_w²/2 exactly, so nothing vanishes.
    assert all(layer.chi == 1.0 for layer in p.layers[:-1])
    assert p.factor == pytest.approx(1.0, abs=1e-12)
    assert p.depth_scale == math.inf
    assert p.phase == "critical"
    # ReLU's map with zero biases is q ↦ q: every q is a fixed point.
    assert math.isnan(p.q_star)


def test_relu_with_glorot_init_halves_chi_per_square_layer():
    width = 128
    p = theory.predict("relu", "glorot_uniform", depth=10, width=width)
    assert p.sigma_w2 == 1.0
    assert p.chi1 == 0.5
    np.testing.assert_array_equal([layer.chi for layer in p.layers[:-1]], 0.5)
    np.testing.assert_allclose(p.layer_factors, math.sqrt(0.5), rtol=1e-15)
    assert p.factor == pytest.approx(math.sqrt(0.5), rel=1e-12)
    assert p.phase == "ordered"
    # The last hidden layer feeds 10 logits: its χ uses the output kernel's
    # fan-out·Var = 10·2/(width + 10), not the hidden σ_w².
    assert p.layers[-1].chi == pytest.approx(0.5 * 10 * 2 / (width + 10), rel=1e-14)
    # The first layer's σ_w² uses the 784 inputs: 784·2/(784 + width).
    assert p.layers[0].sigma_w2 == pytest.approx(784 * 2 / (784 + width), rel=1e-14)
    assert p.layers[0].q == pytest.approx(784 * 2 / (784 + width), rel=1e-14)


def test_selu_with_lecun_init_has_the_self_normalizing_fixed_point():
    # Klambauer et al. (2017) chose SELU's constants so that unit variance is
    # the fixed point with zero-mean, unit-σ_w² weights.
    q_star, chi1 = theory.fixed_point("selu", sigma_w2=1.0)
    assert q_star == pytest.approx(1.0, abs=1e-9)
    p = theory.predict("selu", "lecun_normal", depth=20, width=128)
    assert p.q_star == pytest.approx(1.0, abs=1e-9)
    assert p.chi1 == chi1 and chi1 > 1.0 and p.phase == "chaotic"


def test_tanh_critical_line():
    # Schoenholz et al. (2017), Fig. 1: tanh's order-to-chaos line starts at
    # (σ_w², σ_b²) = (1, 0) and passes σ_w² ≈ 1.76 at σ_b² = 0.05.
    def critical_sigma_w2(sigma_b2):
        return optimize.brentq(lambda w: theory.fixed_point("tanh", w, sigma_b2)[1] - 1.0, 0.5, 4.0, xtol=1e-12)

    assert 1.70 < critical_sigma_w2(0.05) < 1.80
    assert critical_sigma_w2(0.0) == pytest.approx(1.0, abs=1e-6)
    # Below the line gradients vanish, above they explode.
    assert theory.fixed_point("tanh", 1.5, 0.05)[1] < 1 < theory.fixed_point("tanh", 2.0, 0.05)[1]


# ------------------------------------------------------------ integrals


def _quad_moments(name, q):
    """E[φ(√q z)²], E[φ′(√q z)²] by adaptive quadrature, split at φ's kinks and bends."""
    s = math.sqrt(q)
    bends = [0.0, *[sign * c / s for c in (0.3, 1, 3, 6, 10, 30) for sign in (-1, 1)]]
    edges = [-40.0, *sorted(b for b in set(bends) if abs(b) < 40), 40.0]
    out = []
    for g in (lambda x: theory.phi(name, x), lambda x: theory.phi_prime(name, x)):
        total = 0.0
        for a, b in zip(edges[:-1], edges[1:]):
            total += integrate.quad(lambda z, g=g: g(s * z) ** 2 * stats.norm.pdf(z), a, b, epsabs=0, epsrel=1e-13)[0]
        out.append(total)
    return out


@pytest.mark.parametrize("q", [1e-3, 0.25, 1.0, 9.0, 36.0, 400.0])
def test_kinked_integrals_match_closed_forms(q):
    s = math.sqrt(q)
    slope = 0.1
    m2, d2 = theory.moments(f"leaky_relu(negative_slope={slope})", q)
    assert m2 == pytest.approx(q * (1 + slope**2) / 2, rel=1e-14)
    assert d2 == pytest.approx((1 + slope**2) / 2, rel=1e-14)
    # relu6 = min(max(x, 0), 6): ∫_0^6 x² dN(0, q) + 36·P(x > 6), with
    # ∫_0^β z² φ(z) dz = Φ(β) - 1/2 - β·φ(β).
    beta = 6.0 / s
    inner = special.ndtr(beta) - 0.5
    m2, d2 = theory.moments("relu6", q)
    assert m2 == pytest.approx(q * (inner - beta * stats.norm.pdf(beta)) + 36.0 * special.ndtr(-beta), rel=1e-11)
    assert d2 == pytest.approx(inner, rel=1e-11)


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize("name", [*models.activations.names(), "elu(alpha=0.5)"])
def test_every_activation_integral_matches_adaptive_quadrature(name):
    for q in (1e-4, 1.0, 1e3):
        np.testing.assert_allclose(theory.moments(name, q), _quad_moments(name, q), rtol=1e-9, atol=1e-300)


# ------------------------------------------------------------ Monte Carlo


def test_sigmoid_glorot_chi_against_monte_carlo():
    # An independent estimate: iterate q ← E[σ(√q z)²] with sampled z, then
    # average σ′². 20 batches of samples give 20 independent estimates of
    # √χ₁, whose spread gives the standard error.
    rng = np.random.default_rng(0)
    estimates = []
    for _ in range(20):
        z = rng.standard_normal(50_000)
        q = 1.0
        for _ in range(40):
            q = np.mean(special.expit(np.sqrt(q) * z) ** 2)
        y = special.expit(np.sqrt(q) * z)
        estimates.append(math.sqrt(np.mean((y * (1 - y)) ** 2)))
    mc, se = np.mean(estimates), np.std(estimates, ddof=1) / math.sqrt(len(estimates))
    p = theory.predict("sigmoid", "glorot_uniform", depth=20, width=128)
    assert abs(math.sqrt(p.chi1) - mc) < 5 * se
    assert 0.23 < math.sqrt(p.chi1) < 0.24  # The textbook ×0.24 per layer.
    # Deep in the network the per-layer factors settle at √χ₁.
    assert p.layer_factors[-1] == pytest.approx(math.sqrt(p.chi1), rel=1e-6)
    assert p.factor == pytest.approx(math.sqrt(p.chi1), rel=0.01)


def _sample_kernel(initializer, fan_in, fan_out, rng):
    """Kernels drawn like keras.initializers, written out from their definitions."""
    if initializer == "glorot_uniform":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, (fan_in, fan_out))
    if initializer == "he_normal":  # N(0, 2/fan_in) widened by 1/0.8796, redrawn beyond 2 std
        w = rng.standard_normal((fan_in, fan_out))
        while (bad := np.abs(w) > 2).any():
            w[bad] = rng.standard_normal(bad.sum())
        return w * math.sqrt(2.0 / fan_in) / 0.87962566103423978
    raise AssertionError(initializer)


@pytest.mark.parametrize(
    "activation, phi, dphi, initializer",
    [
        ("tanh", np.tanh, lambda x: 1 - np.tanh(x) ** 2, "glorot_uniform"),
        ("relu", lambda x: np.maximum(x, 0), lambda x: (x > 0) * 1.0, "he_normal"),
    ],
)
def test_recursions_match_random_networks(activation, phi, dphi, initializer):
    # Non-square hidden layers: the forward pass uses each layer's fan-in,
    # the backward pass the next layer's fan-out, which a mix-up would put off
    # by a factor of 2 at the 600 → 300 → 600 steps.
    widths, d_in, batch, networks = [500, 250, 500, 400], 200, 64, 6
    p = theory.predict(
        activation, initializer, depth=len(widths), width=widths[0], width_schedule=widths, input_dim=d_in
    )
    rng = np.random.default_rng(1)
    q_mc, back_mc = [], []
    for _ in range(networks):
        x = rng.standard_normal((batch, d_in))  # E[x²] = 1, the default
        kernels = [_sample_kernel(initializer, i, o, rng) for i, o in zip([d_in, *widths], [*widths, 10])]
        h, zs = x, []
        for w in kernels[:-1]:
            zs.append(h @ w)
            h = phi(zs[-1])
        g = rng.standard_normal((batch, 10))  # the gradient wrt the logits, unit RMS
        deltas = [(g @ kernels[-1].T) * dphi(zs[-1])]
        for layer in range(len(widths) - 2, -1, -1):
            deltas.insert(0, (deltas[0] @ kernels[layer + 1].T) * dphi(zs[layer]))
        q_mc.append([np.mean(z**2) / np.mean(x**2) for z in zs])
        back_mc.append([np.sqrt(np.mean(d**2) / np.mean(g**2)) for d in deltas])
    for measured, predicted in ((q_mc, [lay.q for lay in p.layers]), (back_mc, [lay.backward_rms for lay in p.layers])):
        measured = np.array(measured)
        mean, se = measured.mean(axis=0), measured.std(axis=0, ddof=1) / math.sqrt(networks)
        # Five standard errors of the mean over networks, plus 1% for the
        # O(1/width) finite-width bias that averaging does not remove.
        np.testing.assert_array_less(np.abs(mean - predicted), 5 * se + 0.01 * np.abs(predicted))


# ------------------------------------------------------------ Keras agreement


@pytest.mark.parametrize("name", [*models.activations.names(), "leaky_relu(negative_slope=0.05)", "elu(alpha=0.3)"])
def test_numpy_activations_are_the_keras_ones(name):
    x = np.concatenate([np.linspace(-12, 12, 481), [-40.0, -7.5, -3.0, -1e-3, 1e-3, 3.0, 6.0, 7.5, 40.0]])
    keras_y = np.asarray(models.activations.get(name)(x.astype(np.float32)), dtype=np.float64)
    np.testing.assert_allclose(theory.phi(name, x), keras_y, rtol=2e-6, atol=2e-6)
    # φ′ against central differences of φ, away from the kinks.
    smooth = x[np.min(np.abs(x[:, None] - np.array([-3.0, 0.0, 3.0, 6.0])), axis=1) > 1e-2]
    h = 1e-6
    numeric = (theory.phi(name, smooth + h) - theory.phi(name, smooth - h)) / (2 * h)
    np.testing.assert_allclose(theory.phi_prime(name, smooth), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "spec",
    [
        *models.initializers.names(),
        "variance_scaling(scale=2.0, mode='fan_out', distribution='uniform')",
        "variance_scaling(scale=0.5, mode='fan_avg', distribution='untruncated_normal')",
        "truncated_normal(stddev=0.1)",
        "random_uniform(minval=-0.2, maxval=0.1)",
        "orthogonal(gain=2.0)",
    ],
)
def test_weight_variance_is_that_of_keras_kernels(spec):
    fan_in, fan_out = 300, 200
    init = models.initializers.get(spec)
    assert theory._resolve_initializer(spec).params == init.params
    w = np.asarray(init.make(seed=3)(shape=(fan_in, fan_out)), dtype=np.float64).ravel()
    mean, var = theory.weight_variance(spec, fan_in, fan_out)
    # Standard errors of the sample mean and variance of 60,000 draws
    # (orthogonal kernels are exact up to float32 rounding).
    se_var = np.std((w - w.mean()) ** 2) / math.sqrt(w.size)
    assert abs(w.mean() - mean) <= 5 * w.std() / math.sqrt(w.size) + 1e-12
    assert abs(w.var() - var) <= 5 * se_var + 1e-6 * var + 1e-12


def test_every_registered_name_has_a_model():
    # Every shipped entry of the registries in models/ carries its mean-field form.
    preds = theory.predict_grid(models.activations.names(), models.initializers.names(), depth=3, width=16)
    assert all(p.applicable for p in preds), [p.reason for p in preds if not p.applicable]


# ------------------------------------------------------------ applicability


def test_prediction_for_run_configs():
    from vgbench.bench.config import RunConfig

    base = RunConfig(activation="tanh", initializer="glorot_uniform", depth=10, width=64)
    plain = theory.predict_config(base, 0.1)
    assert plain.applicable and plain.input_second_moment == 0.1
    assert plain.layers[0].q == pytest.approx(784 * 2 / (784 + 64) * 0.1, rel=1e-14)
    clipped = theory.predict_config(base.replace(fix="clipnorm(norm=1.0)"), 0.1)
    assert clipped == plain  # clipping rescales the whole gradient only
    for change, word in [
        (dict(arch="cnn"), "arch"),
        (dict(fix="batchnorm"), "batchnorm"),
        (dict(fix="layernorm"), "layernorm"),
        (dict(fix="residual(every=2)"), "residual"),
        (dict(fix="dropout(rate=0.1)"), "dropout"),
        (dict(dataset="tfds:cifar10"), "input size"),
    ]:
        p = theory.predict_config(base.replace(**change), 0.1)
        assert not p.applicable and word in p.reason
        assert math.isnan(p.factor) and p.layers == ()


def test_nonzero_mean_weights_are_not_applicable():
    p = theory.predict("relu", "random_normal(mean=0.1)", depth=5, width=32)
    assert not p.applicable and "non-zero mean" in p.reason
    assert theory.predict("relu", "random_uniform(minval=-0.1, maxval=0.1)", depth=5, width=32).applicable


def test_registered_names_without_a_model_are_not_applicable(monkeypatch):
    # A name added to a registry without a mean-field form must say why; the prediction repeats it.
    entry = models.activations._Entry("smooth", no_meanfield="its integrals are not derived yet")
    monkeypatch.setitem(models.activations._REGISTRY, "hard_swish", entry)
    identity = models.initializers._Entry("Identity", no_meanfield="an identity kernel is not random")
    monkeypatch.setitem(models.initializers._REGISTRY, "identity", identity)
    p = theory.predict("hard_swish", "he_normal", depth=5, width=32)
    assert not p.applicable
    assert "no mean-field model for activation 'hard_swish': its integrals are not derived yet" in p.reason
    with pytest.raises(ValueError, match=r"'hard_swish' \(its integrals are not derived yet\)\. Modelled activations"):
        theory.moments("hard_swish", 1.0)
    p = theory.predict("relu", "identity", depth=5, width=32)
    assert not p.applicable and "no mean-field model for initializer 'identity': an identity kernel" in p.reason
    assert "not applicable, because no mean-field model" in theory.format_table([p])
    with pytest.raises(ValueError, match=r"'identity' \(an identity kernel is not random\)"):
        theory.weight_variance("identity", 4, 4)


def test_bad_names_and_numbers_raise_one_line_errors():
    with pytest.raises(models.UnknownNameError, match="Did you mean 'sigmoid'"):
        theory.predict("sigmod", "he_normal", depth=5, width=32)
    with pytest.raises(models.UnknownNameError, match="Valid initializers: glorot_normal"):
        theory.predict("relu", "he_nromal", depth=5, width=32)
    with pytest.raises(ValueError, match="Received: depth=0"):
        theory.predict("relu", "he_normal", depth=0, width=32)
    with pytest.raises(ValueError, match="Received: sigma_b2=-1"):
        theory.predict("relu", "he_normal", depth=5, width=32, sigma_b2=-1)
    with pytest.raises(ValueError, match="mode"):
        theory.predict("relu", "variance_scaling(mode='fan_x')", depth=5, width=32)


def test_json_values_are_valid_json():
    p = theory.predict("relu", "zeros", depth=4, width=8)
    d = p.to_dict()
    assert d["factor"] is None  # nothing flows back: undefined, as measured
    assert d["chi1"] == 0.0 and d["depth_scale"] == 0.0
    d = theory.predict("relu", "he_normal", depth=4, width=8).to_dict()
    assert d["depth_scale"] == "inf" and d["q_star"] is None
    json.dumps(d, allow_nan=False)


# ------------------------------------------------------------ command line


def test_cli_json_output(capsys):
    code = main(
        ["theory", "--activation", "sigmoid,relu", "--initializer", "glorot_uniform,he_normal"]
        + ["--depth", "6", "--width", "32", "--json"]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert [(o["activation"], o["initializer"]) for o in out] == [
        ("sigmoid", "glorot_uniform"),
        ("sigmoid", "he_normal"),
        ("relu", "glorot_uniform"),
        ("relu", "he_normal"),
    ]
    keys = {"activation", "initializer", "sigma_w2", "sigma_b2", "q_star", "chi1", "factor", "depth_scale", "phase"}
    for o in out:
        assert keys <= set(o)
        assert o["input_second_moment"] == 1.0 and o["sigma_b2"] == 0.0
        assert [lay["layer_index"] for lay in o["layers"]] == list(range(6))
        for lay in o["layers"]:
            assert {"layer_index", "sigma_w2", "sigma_b2", "q", "chi"} <= set(lay)
    relu_he = out[3]
    assert relu_he["chi1"] == 1.0 and relu_he["depth_scale"] == "inf" and relu_he["phase"] == "critical"
    assert out[0]["phase"] == "ordered" and 0.2 < out[0]["factor"] < 0.3


def test_cli_table_and_bias_variance(capsys):
    assert main(["theory", "--activation", "tanh", "--initializer", "glorot_uniform", "--bias-variance", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "bias variance 0.05" in out and "E[x^2] = 1 (default: standardized inputs)" in out
    row = next(line for line in out.splitlines() if line.startswith("tanh"))
    assert row.split()[-1] == "ordered"  # σ_w² = 1 is below the critical 1.76


@pytest.mark.parametrize(
    "args, message",
    [
        (["--activation", "sigmod"], "Did you mean 'sigmoid'?"),
        (["--initializer", "xavier_unifrom"], "Valid initializers:"),
        (["--depth", "0"], "`--depth` must be a positive integer"),
        (["--bias-variance", "-0.1"], "`--bias-variance` must be a non-negative"),
        (["--input-second-moment", "1", "--preprocessing", "scale"], "cannot be combined"),
        (["--preprocessing", "whiten"], "must be one of scale, standardize"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message, capsys):
    assert main(["theory", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_input_second_moment_from_mnist(capsys, mnist_path):
    args = ["theory", "--activation", "relu", "--initializer", "glorot_uniform", "--data", str(mnist_path)]
    assert main([*args, "--train-samples", "2000", "--json"]) == 0
    scaled = json.loads(capsys.readouterr().out)[0]["input_second_moment"]
    assert 0.08 < scaled < 0.13  # pixels in [0, 1], mostly black
    assert main([*args, "--preprocessing", "standardize", "--train-samples", "2000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["input_second_moment"] == pytest.approx(1.0, rel=1e-5)


def test_theory_never_imports_tensorflow():
    code = """
import sys, models
from vgbench.bench import theory
from vgbench.bench.cli import main
theory.predict_grid(models.activations.names(), models.initializers.names(), depth=50, width=128)
assert main(["theory", "--json", "--depth", "3"]) == 0
loaded = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
assert not loaded, loaded
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_per_example_moments_combine_as_the_rms_over_a_batch():
    # Each example runs its own recursions; the batch's RMS averages their second moments.
    moments = [0.3, 1.7]
    one = [theory.predict("gelu", "he_normal", depth=6, width=64, input_second_moment=m) for m in moments]
    both = theory.predict("gelu", "he_normal", depth=6, width=64, input_second_moment=moments)
    for i, layer in enumerate(both.layers):
        assert layer.q == pytest.approx(np.mean([p.layers[i].q for p in one]), rel=1e-12)
        want = math.sqrt(np.mean([p.layers[i].backward_rms ** 2 for p in one]))
        assert layer.backward_rms == pytest.approx(want, rel=1e-9)
    assert both.input_second_moment == pytest.approx(1.0)
    # The spread matters for gelu, whose χ depends on q: not the prediction at the mean.
    at_mean = theory.predict("gelu", "he_normal", depth=6, width=64, input_second_moment=1.0)
    assert abs(both.factor - at_mean.factor) > 1e-3
    # One value in a list is the scalar prediction.
    assert theory.predict("gelu", "he_normal", depth=6, width=64, input_second_moment=[1.0]).factor == at_mean.factor
    x = np.array([[1.0, -1.0, 2.0], [0.0, 0.0, 3.0]])
    assert list(theory.example_second_moments(x)) == [2.0, 3.0]
    for bad in ([], [1.0, -0.5], [float("nan")]):
        with pytest.raises(ValueError, match="input_second_moment"):
            theory.predict("relu", "he_normal", depth=3, width=8, input_second_moment=bad)
