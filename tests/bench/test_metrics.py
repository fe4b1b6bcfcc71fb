"""Derived per-run statistics on small hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench import metrics


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
