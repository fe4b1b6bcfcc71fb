"""Derived per-run statistics on small hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vgbench.bench import metrics


def _layers(run_id, norms_by_step, kernel_sizes=None, dead=None):
    rows = []
    for step, norms in norms_by_step.items():
        depth = len(norms) - 1
        for i, n in enumerate(norms):
            rows.append(
                dict(
                    run_id=run_id,
                    step=step,
                    epoch=0 if step == 0 else 1,
                    layer_index=i,
                    layer_name="output" if i == depth else f"hidden_{i}",
                    kernel_grad_norm=n,
                    bias_grad_norm=n / 10,
                    dead_fraction=np.nan if dead is None else dead[step][i],
                    saturated_fraction=np.nan,
                )
            )
    df = pd.DataFrame(rows)
    if kernel_sizes is not None:
        df["kernel_size"] = df["layer_index"].map(dict(enumerate(kernel_sizes)))
        df["bias_size"] = 16
    return df


def test_ratio_and_factor_per_weight():
    # 4 hidden layers: the first has 4x the weights of the others, and the
    # per-weight gradient shrinks ×0.4 at each layer towards the input.
    sizes = [64, 16, 16, 16, 10]
    rms = np.array([0.064, 0.16, 0.4, 1.0, 3.0])
    norms = rms * np.sqrt(sizes)
    layers = _layers("a", {0: norms, 1: norms * 2}, kernel_sizes=sizes)
    runs = pd.DataFrame({"run_id": ["a"], "status": ["ok"]})
    m = metrics.run_metrics(runs, layers).iloc[0]
    assert m.grad_ratio_init == pytest.approx(0.064)
    assert m.grad_factor_init == pytest.approx(0.4)
    # 'final' is the geometric mean over the last logged steps: step 1 only.
    assert m.grad_ratio_final == pytest.approx(0.064)
    assert "vanishing@init" in metrics.flags(m.to_dict())
    # Without the sizes the raw norms are compared (and the first layer looks 2x stronger).
    raw = metrics.run_metrics(runs, layers.drop(columns=["kernel_size", "bias_size"])).iloc[0]
    assert raw.grad_ratio_init == pytest.approx(0.128)


def test_final_window_and_fractions():
    steps = {s: np.array([1.0, 1.0, 1.0]) * (10.0 if s > 5 else 1.0) for s in range(0, 16)}
    steps[15] = np.array([4.0, 1.0, 1.0])  # last step: first layer 4x
    dead = {s: [0.0, 0.5, np.nan] if s == 0 else [0.25, 0.75, np.nan] for s in steps}
    layers = _layers("b", steps, dead=dead)
    runs = pd.DataFrame({"run_id": ["b"], "status": ["ok"]})
    m = metrics.run_metrics(runs, layers).iloc[0]
    # Geometric mean over the last 10 steps (6..15): ratio 1 for nine, 4 for one.
    assert m.grad_ratio_final == pytest.approx(4 ** (1 / 10))
    assert m.dead_fraction_init == pytest.approx(0.25)
    assert m.dead_fraction_final == pytest.approx(0.5)
    assert np.isnan(m.saturated_fraction_final)


def test_flags():
    assert metrics.flags({"status": "diverged"}) == ["diverged"]
    assert metrics.flags({"status": "ok", "grad_factor_init": 3.0}) == ["exploding@init"]
    assert metrics.flags({"status": "ok", "grad_ratio_final": 1e-5}) == ["vanishing@final"]
    assert metrics.flags({"status": "ok", "dead_fraction_final": 0.6}) == ["dead units"]
    assert metrics.flags({"status": "ok", "grad_factor_init": 1.0, "grad_ratio_init": 1.2}) == []


def _signal_layers(run_id, kernel_rms, backward, forward, step=0):
    """One step of a run with per-layer kernel gradients (per weight), backward and forward signals."""
    depth = len(kernel_rms) - 1
    return pd.DataFrame(
        dict(
            run_id=run_id,
            step=step,
            epoch=0,
            layer_index=range(depth + 1),
            layer_name=[f"hidden_{i}" for i in range(depth)] + ["output"],
            kernel_grad_norm=np.asarray(kernel_rms, dtype="float64") * 4.0,
            kernel_size=16,
            bias_grad_norm=np.nan,
            bias_size=4,
            backward_rms=backward,
            preact_rms=forward,
            dead_fraction=0.0,
            saturated_fraction=np.nan,
        )
    )


def test_fit_factor_ignores_underflowed_layers_and_they_are_counted():
    # 6 hidden layers: the gradient grows ×2 per layer towards the output, and the
    # first two underflowed to exactly 0 (one of them measured as -inf on the log scale).
    kernel = [0.0, 0.0, 0.25, 0.5, 1.0, 2.0, 7.0]
    backward = [np.nan, 0.0, 1 / 8, 1 / 4, 1 / 2, 1.0, 3.0]  # layer 0: not finite (NaN at a measured step)
    layers = _signal_layers("u", kernel, backward, [1.0] * 7)
    runs = pd.DataFrame({"run_id": ["u"], "status": ["ok"], "depth": [6]})
    m = metrics.run_metrics(runs, layers).iloc[0]
    assert m.grad_factor_init == pytest.approx(0.5)  # from layers 2..5, not from a zero
    assert m.backward_factor_init == pytest.approx(0.5)
    assert m.forward_factor_init == pytest.approx(1.0)
    assert m.grad_ratio_init == 0.0  # first/last ratio, as before: the first layer underflowed
    assert m.underflow_layers_init == 2 and m.deepest_underflow_layer_init == 1
    flags = metrics.flags(m.to_dict())
    assert "underflow@init" in flags and "vanishing@init" in flags
    under = flags[flags.index("underflow@init")]
    assert under.kind == "underflow" and under.numbers["layers"] == 2
    assert under.describe() == "underflow below layer 2 (2 hidden layers with exactly zero gradient)"
    # Only zeros and non-finite values are left out: a noisy profile is fitted by least squares.
    noisy = pd.Series([1.0, 3.0, 2.0, 6.0], index=[0, 1, 2, 3])
    slope = np.polyfit([0, 1, 2, 3], np.log(noisy), 1)[0]
    assert metrics.fit_factor(noisy) == pytest.approx(np.exp(-slope))
    assert metrics.fit_factor(noisy, "forward") == pytest.approx(np.exp(slope))
    assert np.isnan(metrics.fit_factor(pd.Series([0.0, 0.0, 1.0])))  # one usable layer: no factor


def test_flags_name_forward_collapse_when_the_kernel_gradient_looks_flat():
    # 10 hidden layers: δ shrinks ×0.45 per layer towards the input while the
    # forward signal shrinks ×0.45 per layer towards the output; the kernel
    # gradient δ_l ⊗ a_(l-1) is flat.
    n = 10
    backward = 0.45 ** np.arange(n, -1, -1.0)
    forward = 0.45 ** np.arange(0, n + 1.0)
    layers = _signal_layers("g", [1.0] * (n + 1), backward, forward)
    runs = pd.DataFrame({"run_id": ["g"], "status": ["ok"], "depth": [n]})
    m = metrics.run_metrics(runs, layers).iloc[0]
    assert m.grad_factor_init == pytest.approx(1.0)
    assert m.backward_factor_init == pytest.approx(0.45) and m.forward_factor_init == pytest.approx(0.45)
    flags = metrics.flags(m.to_dict())
    assert flags == ["vanishing@init", "forward collapse@init"]
    assert all(isinstance(f, str) for f in flags) and "; ".join(flags) == "vanishing@init; forward collapse@init"
    vanishing, collapse = flags
    assert (collapse.kind, collapse.when) == ("forward collapse", "init")
    assert collapse.numbers["forward_factor"] == pytest.approx(0.45)
    assert collapse.describe() == (
        "forward signal collapses ×0.45 per layer (the kernel gradient looks flat because the two cancel)"
    )
    assert vanishing.describe() == "backward signal vanishes ×0.45 per layer"
    # A factor above the per-layer threshold still compounds over 20 layers: 0.6 ** 19 < 1e-3.
    slow = 0.6 ** np.arange(0, 21.0)
    deep = pd.DataFrame({"run_id": ["g"], "status": ["ok"], "depth": [20]})
    m = metrics.run_metrics(deep, _signal_layers("g", [1.0] * 21, [1.0] * 21, slow)).iloc[0]
    assert m.forward_factor_init == pytest.approx(0.6)
    assert metrics.flags(m.to_dict()) == ["forward collapse@init"]
    assert metrics.flags(m.to_dict() | {"depth": 5}) == []  # 0.6 ** 4 is no collapse
    # A healthy forward signal with a vanishing backward one: vanishing only.
    m = metrics.run_metrics(runs, _signal_layers("g", backward, backward, [1.0] * (n + 1))).iloc[0]
    assert metrics.flags(m.to_dict()) == ["vanishing@init"]


def test_flags_are_registered_kinds():
    assert set(metrics.FLAG_KINDS) == {
        "vanishing",
        "collapse",
        "forward collapse",
        "exploding",
        "dead units",
        "underflow",
        "diverged",
        "failed",
    }
    d = metrics.flags({"status": "ok", "dead_fraction_init": 0.75})[0]
    assert (d, d.kind, d.when, d.describe()) == ("dead units", "dead units", None, "dead units (75% of hidden units)")
    e = metrics.flags({"status": "ok", "grad_factor_final": 3.0})[0]
    assert e == "exploding@final" and e.describe() == "exploding ×3.00 per layer"
    assert metrics.flags({"status": "diverged", "diverged_step": 12})[0].describe() == "diverged at step 12"
    with pytest.raises(ValueError, match="kind"):
        metrics.Flag("shrinking", "init")
    import pickle

    assert pickle.loads(pickle.dumps(e)).numbers == e.numbers


def test_a_gradient_that_training_drove_to_zero_is_a_collapse_not_vanishing():
    # Every hidden layer's gradient exactly 0 at the end of a 10-layer run.
    dead_end = {"status": "ok", "depth": 10, "underflow_layers_final": 10.0, "deepest_underflow_layer_final": 9.0}
    healthy_start = {"backward_factor_init": 0.98, "grad_factor_init": 1.01, "underflow_layers_init": 0.0}
    flags = metrics.flags(dead_end | healthy_start)
    assert flags == ["collapse@final", "underflow@final"]
    assert flags[0].describe() == (
        "training collapsed: every hidden layer's gradient is exactly 0, though it did not vanish at step 0"
    )
    # Vanishing at step 0 already: the zero at the end is where the vanishing gradient led.
    vanishing_start = {"backward_factor_init": 0.25, "grad_factor_init": 0.25, "underflow_layers_init": 0.0}
    assert metrics.flags(dead_end | vanishing_start)[:2] == ["vanishing@init", "vanishing@final"]
    assert metrics.flags(dead_end | vanishing_start)[1].numbers["all_zero"]
    # Step 0 not measured: nothing says it started healthy.
    assert metrics.flags(dead_end)[0] == "vanishing@final"
