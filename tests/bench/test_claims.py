"""Claims: verdicts recomputed from the tables by each claim's stated rule; the protocol; bias initializers.

The synthetic tables hold the config columns of the claims' own runs with
accuracies and metrics chosen here; the expected verdicts are worked out in
the tests from those numbers, following the rules in words, not by calling
the rules under test. One tiny real results directory (the initialization-only
runs of `sigmoid-derivative-bound`, through the CLI) checks a verdict against
factors fitted here from its layers table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vgbench import models
from vgbench.bench import claims, metrics, protocol, suites, theory
from vgbench.bench.cli import main
from vgbench.bench.config import RunConfig
from vgbench.bench.errors import UsageError
from vgbench.bench.results import HISTORY_COLUMNS, LAYER_COLUMNS, load_results

REPO = Path(__file__).resolve().parents[2]
NO_LAYERS = pd.DataFrame(columns=LAYER_COLUMNS)
NO_HISTORY = pd.DataFrame(columns=HISTORY_COLUMNS)
LRS = claims.LEARNING_RATES["momentum"]


def _table(claim, accuracy, backend="tensorflow", **metric_fns) -> pd.DataFrame:
    """The per-run table of a claim's runs: accuracy(set_name, config) -> (accuracy, status); metrics likewise."""
    rows, seen = [], set()
    for rs in claim.run_sets:
        for c in rs.configs(backend):
            if c.run_id in seen:
                continue
            seen.add(c.run_id)
            acc, status = accuracy(rs.name, c)
            row = {"run_id": c.run_id, **c.to_dict(), "status": status, "test_accuracy": acc}
            row.update({name: fn(rs.name, c) for name, fn in metric_fns.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def _best_median(per_lr: dict) -> float:
    """The protocol by hand: {lr: [(accuracy, status) per seed]} -> median at the best lr."""
    medians = []
    for results in per_lr.values():
        scores = [0.1 if status == "diverged" else acc for acc, status in results if status != "failed"]
        medians.append(float(np.median(scores)))
    return max(medians)


# --------------------------------------------------------------------------- protocol


def _protocol_runs():
    base = RunConfig(depth=3, width=8, optimizer="momentum", max_steps=10)
    outcomes = {
        # lr: per seed (accuracy, status); lr 0.3 diverges in two seeds of three.
        0.003: [(0.60, "ok"), (0.62, "ok"), (0.58, "ok")],
        0.03: [(0.91, "ok"), (0.89, "ok"), (0.93, "ok")],
        0.3: [(0.97, "ok"), (math.nan, "diverged"), (0.95, "diverged")],
    }
    rows = []
    for lr, per_seed in outcomes.items():
        for seed, (acc, status) in enumerate(per_seed):
            c = base.replace(learning_rate=lr, seed=seed)
            rows.append({"run_id": c.run_id, **c.to_dict(), "status": status, "test_accuracy": acc})
    # A second configuration (another depth) in the same table.
    for lr in LRS:
        for seed in range(3):
            c = base.replace(depth=4, learning_rate=lr, seed=seed)
            rows.append({"run_id": c.run_id, **c.to_dict(), "status": "ok", "test_accuracy": 0.5})
    return pd.DataFrame(rows), outcomes


def test_best_learning_rate_is_not_fooled_by_a_diverged_learning_rate():
    runs, outcomes = _protocol_runs()
    table = protocol.best_learning_rate(runs)
    assert len(table) == 2 and "learning_rate" not in table.columns
    row = table[table["depth"] == 3].iloc[0]
    # By hand: medians 0.60, 0.91 and median(0.97, chance, chance) = 0.1 -> 0.03 wins.
    assert row["best_learning_rate"] == 0.03
    assert row["median_accuracy"] == pytest.approx(0.91)
    assert (row["min_accuracy"], row["max_accuracy"]) == (pytest.approx(0.89), pytest.approx(0.93))
    assert row["n_seeds"] == 3
    assert row["diverged_by_lr"] == {0.003: 0, 0.03: 0, 0.3: 2}
    assert row["median_by_lr"][0.3] == pytest.approx(0.1)
    assert sorted(row["run_ids"]) == sorted(runs[(runs["depth"] == 3) & (runs["learning_rate"] == 0.03)]["run_id"])
    # Equal medians everywhere: the smaller learning rate.
    assert table[table["depth"] == 4].iloc[0]["best_learning_rate"] == min(LRS)


def test_best_learning_rate_leaves_failed_runs_out_and_names_missing_columns():
    runs, _ = _protocol_runs()
    runs = runs[runs["depth"] == 3].copy()
    runs.loc[runs["learning_rate"] == 0.03, "status"] = "failed"
    row = protocol.best_learning_rate(runs).iloc[0]
    # 0.03 has no scored run left; of 0.60 and median(0.97, 0.1, 0.1) = 0.1, 0.003 wins.
    assert row["best_learning_rate"] == 0.003
    assert row["failed_by_lr"][0.03] == 3
    with pytest.raises(ValueError, match="test_accuracy"):
        protocol.best_learning_rate(runs.drop(columns=["test_accuracy"]))


# --------------------------------------------------------------------------- registry and suite


def test_the_required_claims_exist_and_state_their_parts():
    required = {
        "sigmoid-derivative-bound",
        "sigmoid-deep-fails",
        "relu-fixes-vanishing",
        "relu-dead-units",
        "leaky-relu-no-dead-units",
        "init-matters",
    }
    assert required <= set(claims.CLAIMS)
    assert len(claims.CLAIMS) >= len(required) + 5  # the papers' claims
    for claim in claims.CLAIMS.values():
        assert claim.statement and claim.source and claim.rule and claim.reports and claim.run_sets
        for rs in claim.run_sets:
            configs = rs.configs()
            assert {c.seed for c in configs} == set(claims.SEEDS) and len(claims.SEEDS) >= 3
            if rs.kind == "train":
                lrs = sorted({c.learning_rate for c in configs})
                assert len(lrs) >= 3 and np.allclose(np.diff(np.log10(lrs)), np.log10(lrs[1] / lrs[0]))
            else:
                assert {c.max_steps for c in configs} == {0}
    with pytest.raises(ValueError, match="Valid claims: sigmoid-derivative-bound"):
        claims.get("sigmoid-derivtive-bound")


def test_the_claims_suite_runs_exactly_the_runs_the_claims_declare():
    suite = suites.load_suite("claims")
    assert suite.protocol == "best_lr"
    shipped = {c.run_id for c in suites.expand(suite)}
    declared = {c.run_id for claim in claims.CLAIMS.values() for c in claim.configs()}
    assert shipped == declared
    # The file is the generated document, so regenerating it changes nothing.
    assert yaml.safe_load(claims.SUITE_PATH.read_text()) == yaml.safe_load(
        yaml.safe_dump(claims.suite_document(), sort_keys=False)
    )


def test_a_suite_with_an_unknown_protocol_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("protocol: best_learnin_rate\ngrids: [{}]\n")
    with pytest.raises(UsageError, match="unknown protocol 'best_learnin_rate'; valid protocols: best_lr"):
        suites.load_suite(str(path))
    path.write_text("protocol: [best_lr]\ngrids: [{}]\n")
    with pytest.raises(UsageError, match="valid protocols"):
        suites.load_suite(str(path))


# --------------------------------------------------------------------------- verdicts from synthetic tables


def test_missing_runs_make_every_claim_inconclusive():
    claim = claims.get("sigmoid-deep-fails")
    runs = _table(claim, lambda name, c: (0.9, "ok"), grad_ratio_init=lambda n, c: 1.0)
    results = claims.evaluate(runs[runs["depth"] != 20], NO_LAYERS, NO_HISTORY)
    assert {r.id for r in results} == set(claims.CLAIMS)
    deep = next(r for r in results if r.id == "sigmoid-deep-fails")
    assert deep.verdict == "inconclusive"
    per_set = len(LRS) * len(claims.SEEDS)
    assert f"{per_set} of {4 * per_set} runs not in this results directory" in deep.summary
    assert all(r.verdict == "inconclusive" for r in results)
    # JSON-safe as a plain dict.
    json.dumps([dataclasses.asdict(r) for r in results], allow_nan=False)
    assert deep.budget["steps"] == claims.BASE["max_steps"] and deep.budget["seeds"] == list(claims.SEEDS)
    assert deep.budget["examples"] == claims.BASE["max_steps"] * claims.BASE["batch_size"]


def test_claims_are_decided_from_the_runs_of_one_backend():
    # A directory of JAX runs decides the claims from them (their run_ids differ from TensorFlow's);
    # with both backends present, the one holding more of the claim's runs decides, and the budget names it.
    claim = claims.get("sigmoid-deep-fails")
    jax_runs = _table(claim, lambda name, c: (0.9, "ok"), backend="jax", grad_ratio_init=lambda n, c: 1.0)
    assert jax_runs["run_id"].str.contains("-jax-").all()
    (result,) = claims.evaluate(jax_runs, NO_LAYERS, NO_HISTORY, claims=[claim])
    assert result.verdict == "fail" and result.budget["backend"] == "jax"  # every depth trains
    assert set(result.run_ids) == set(jax_runs["run_id"])
    tf_runs = _table(claim, lambda name, c: (0.9, "ok"), grad_ratio_init=lambda n, c: 1.0)
    both = pd.concat([jax_runs, tf_runs[tf_runs["depth"] != 20]])
    (result,) = claims.evaluate(both, NO_LAYERS, NO_HISTORY, claims=[claim])
    assert result.budget["backend"] == "jax" and result.verdict == "fail"
    (result,) = claims.evaluate(pd.concat([jax_runs, tf_runs]), NO_LAYERS, NO_HISTORY, claims=[claim])
    assert result.budget["backend"] == "tensorflow"  # a tie: the default backend


# Per depth: accuracies of the three seeds at each learning rate.
_DEEP_CASES = {
    "pass": {2: (0.95, 0.90, 0.20), 5: (0.90, 0.93, 0.30), 10: (0.40, 0.60, 0.50), 20: (0.11, 0.10, 0.12)},
    "fail": {2: (0.95, 0.90, 0.20), 5: (0.90, 0.93, 0.30), 10: (0.85, 0.90, 0.50), 20: (0.82, 0.85, 0.20)},
    "inconclusive": {2: (0.30, 0.50, 0.20), 5: (0.20, 0.30, 0.30), 10: (0.10, 0.10, 0.1), 20: (0.1, 0.1, 0.1)},
}


@pytest.mark.parametrize("case", sorted(_DEEP_CASES))
def test_sigmoid_deep_fails_verdict_follows_its_rule(case):
    claim = claims.get("sigmoid-deep-fails")
    acc = _DEEP_CASES[case]
    seed_offset = (-0.01, 0.0, 0.01, -0.005, 0.005)
    ratio = {2: 0.5, 5: 2e-2, 10: 1e-4, 20: 1e-9}

    def accuracy(name, c):
        diverged = c.learning_rate == LRS[-1] and c.seed == 0
        return acc[c.depth][LRS.index(c.learning_rate)] + seed_offset[c.seed], "diverged" if diverged else "ok"

    runs = _table(claim, accuracy, grad_ratio_init=lambda n, c: ratio[c.depth])
    (result,) = claims.evaluate(runs, NO_LAYERS, NO_HISTORY, claims=[claim])

    # The rule, by hand: 'trains' = best median >= 0.80.
    trains = {}
    for d in acc:
        per_lr = {
            lr: [accuracy("", RunConfig(depth=d, learning_rate=lr, seed=s, optimizer="momentum")) for s in claims.SEEDS]
            for lr in LRS
        }
        trains[d] = _best_median(per_lr) >= 0.80
    depths = sorted(acc)
    if not trains[depths[0]]:
        expected = "inconclusive"
    elif all(trains.values()) or trains[depths[-1]]:
        expected = "fail"
    else:
        expected = "pass"
    assert result.verdict == expected == case
    if expected == "pass":
        assert result.evidence["first_depth_not_training"] == 10
        assert result.evidence["first_depth_gradient_below_fraction"] == 10  # 1e-4 < 1e-3, 2e-2 is not
        assert result.evidence["sigmoid_glorot_d10.best_learning_rate"] == LRS[1]
        assert result.evidence["sigmoid_glorot_d10.diverged_runs"] == 1


@pytest.mark.parametrize(
    "accs, expected",
    [
        ({"tanh_sw1_d10": 0.9, "tanh_sw1_d40": 0.11, "tanh_sw1.76_d40": 0.85}, "pass"),
        ({"tanh_sw1_d10": 0.9, "tanh_sw1_d40": 0.88, "tanh_sw1.76_d40": 0.85}, "fail"),
        ({"tanh_sw1_d10": 0.9, "tanh_sw1_d40": 0.11, "tanh_sw1.76_d40": 0.5}, "inconclusive"),
    ],
)
def test_schoenholz_verdict_follows_its_rule_with_the_theory_depth_scale(accs, expected):
    claim = claims.get("schoenholz2017-depth-scale")
    runs = _table(claim, lambda name, c: (accs[name] if c.learning_rate == LRS[1] else 0.1, "ok"))
    (result,) = claims.evaluate(runs, NO_LAYERS, NO_HISTORY, claims=[claim])
    status = {n: "trains" if a >= 0.8 else "fails" if a <= 0.15 else "partial" for n, a in accs.items()}
    by_hand = (
        "pass"
        if (status["tanh_sw1_d10"], status["tanh_sw1_d40"], status["tanh_sw1.76_d40"]) == ("trains", "fails", "trains")
        else "fail"
        if status["tanh_sw1_d10"] == "fails"
        or status["tanh_sw1_d40"] == "trains"
        or status["tanh_sw1.76_d40"] == "fails"
        else "inconclusive"
    )
    assert result.verdict == by_hand == expected
    # ξ of tanh with σ_w² = 1, σ_b² = 0.05 read from the runs' bias initializer: the paper's ≈ 3.6 (hence 6ξ ≈ 22).
    xi = theory.predict(
        "tanh", "variance_scaling(distribution='untruncated_normal')", depth=10, width=64, sigma_b2=0.05
    ).depth_scale
    assert result.evidence["tanh_sw1_d10.theory_depth_scale"] == pytest.approx(xi)
    assert 3.0 < xi < 4.5
    assert result.evidence["tanh_sw1_d10.theory_sigma_b2"] == pytest.approx(0.05)


def test_he2015_counts_steps_to_accuracy_from_the_history():
    claim = claims.get("he2015-relu-depth30")
    runs = _table(claim, lambda name, c: (0.9 if c.learning_rate == LRS[1] else 0.5, "ok"))
    steps = np.arange(50, 301, 50)
    curves = {"relu_he_d30": [0.5, 0.82, 0.9, 0.9, 0.9, 0.9], "relu_glorot_d30": [0.2, 0.3, 0.5, 0.7, 0.81, 0.9]}
    rows = []
    for rs in claim.run_sets:
        for c in rs.configs():
            late = 1 if c.seed == 2 else 0  # one seed reaches each level one evaluation later
            curve = curves[rs.name]
            for i, s in enumerate(steps):
                rows.append({"run_id": c.run_id, "step": s, "test_accuracy": curve[max(0, i - late)]})
    history = pd.DataFrame(rows)
    (result,) = claims.evaluate(runs, NO_LAYERS, history, claims=[claim])
    # By hand: He reaches 0.80 at step 100 (seeds 0, 1) and 150 (seed 2): median 100; Glorot 250, 250, 300: 250.
    assert result.evidence["relu_he_d30.steps_to_accuracy"] == 100
    assert result.evidence["relu_glorot_d30.steps_to_accuracy"] == 250
    assert result.verdict == ("pass" if 250 >= claims.MARKEDLY_SLOWER * 100 else "fail") == "pass"


@pytest.mark.parametrize("poor_relu_acc, expected", [(0.11, "pass"), (0.92, "fail"), (0.5, "inconclusive")])
def test_init_matters_verdict_follows_its_rule(poor_relu_acc, expected):
    claim = claims.get("init-matters")
    acc = {"relu_he_d10": 0.95, "relu_poor_d10": poor_relu_acc, "tanh_glorot_d10": 0.93, "tanh_poor_d10": 0.1}
    factor = {"relu_he_d10": 1.0, "relu_poor_d10": 0.06, "tanh_glorot_d10": 0.9, "tanh_poor_d10": 0.08}
    runs = _table(claim, lambda n, c: (acc[n], "ok"), backward_factor_init=lambda n, c: factor[n])
    (result,) = claims.evaluate(runs, NO_LAYERS, NO_HISTORY, claims=[claim])
    per_act = []
    for act, matched in (("relu", "relu_he_d10"), ("tanh", "tanh_glorot_d10")):
        poor = f"{act}_poor_d10"
        if acc[poor] <= 0.15 and acc[matched] >= 0.8 and factor[poor] < 0.5:
            per_act.append("pass")
        elif acc[poor] >= 0.8 or acc[matched] <= 0.15 or factor[poor] >= 0.5:
            per_act.append("fail")
        else:
            per_act.append("inconclusive")
    by_hand = "fail" if "fail" in per_act else "inconclusive" if "inconclusive" in per_act else "pass"
    assert result.verdict == by_hand == expected
    assert result.evidence["relu_poor_d10.backward_factor_init.median"] == pytest.approx(0.06)


def test_dead_unit_claims_read_the_layers_table():
    dead_claim, leaky_claim = claims.get("relu-dead-units"), claims.get("leaky-relu-no-dead-units")
    acc = {"relu_narrow": 0.80, "leaky_relu_narrow": 0.90}
    runs = _table(dead_claim, lambda n, c: (acc[n], "ok"))
    rows = []
    for rs in dead_claim.run_sets:
        for c in rs.configs():
            for step in (0, 300):
                for layer in range(c.depth):
                    relu = rs.name == "relu_narrow"
                    # ReLU: 10% dead at init; at the end 20% in the shallow half, 40% in the deep half.
                    dead = (0.1 if step == 0 else 0.2 if layer < c.depth // 2 else 0.4) if relu else 0.0
                    rows.append(
                        {
                            "run_id": c.run_id,
                            "step": step,
                            "layer_index": layer,
                            "layer_name": f"hidden_{layer}",
                            "dead_fraction": dead,
                        }
                    )
    layers = pd.DataFrame(rows)
    dead, leaky = claims.evaluate(runs, layers, NO_HISTORY, claims=[dead_claim, leaky_claim])
    assert dead.evidence["relu_narrow.dead_fraction_init"] == pytest.approx(0.1)
    assert dead.evidence["relu_narrow.dead_fraction_final"] == pytest.approx(0.3)
    assert dead.evidence["relu_narrow.dead_fraction_final_deep_half"] == pytest.approx(0.4)
    # By hand: dead units grow (0.1 -> 0.3) and cost 0.10 >= 0.02 of accuracy; leaky has none and trains better.
    assert dead.verdict == "pass" and leaky.verdict == "pass"
    acc["leaky_relu_narrow"] = 0.805  # no accuracy cost any more: 0.005 < 0.02
    runs = _table(dead_claim, lambda n, c: (acc[n], "ok"))
    dead, leaky = claims.evaluate(runs, layers, NO_HISTORY, claims=[dead_claim, leaky_claim])
    assert dead.verdict == "fail" and leaky.verdict == "pass"


# --------------------------------------------------------------------------- a tiny real results directory


@pytest.mark.mnist
@pytest.mark.slow
def test_derivative_bound_on_real_runs_through_the_cli(tmp_path, mnist_path):
    claim = claims.get("sigmoid-derivative-bound")
    doc = {**claims.suite_document([claim]), "name": "bound"}
    suite_file = tmp_path / "bound.yaml"
    suite_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vgbench",
            "run",
            "--suite",
            str(suite_file),
            "--data",
            str(mnist_path),
            "--out",
            str(out),
            "--jobs",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    res = load_results(out)
    assert res.manifest["protocols"] == {"bound": "best_lr"}
    runs_m = metrics.run_metrics(res.runs, res.layers)
    results = claims.evaluate(runs_m, res.layers, res.history, res.manifest)
    by_id = {r.id: r for r in results}
    bound = by_id["sigmoid-derivative-bound"]

    # By hand: fit log(backward_rms) on the hidden layer index at step 0, per run.
    init = res.layers[(res.layers["step"] == 0) & (res.layers["layer_name"] != "output")]
    largest = {}
    for rid, g in init.groupby("run_id"):
        slope = np.polyfit(g["layer_index"].astype(float), np.log(g["backward_rms"].astype(float)), 1)[0]
        name = res.runs.set_index("run_id").loc[rid, "initializer"]
        largest[name] = max(largest.get(name, 0.0), float(np.exp(-slope)))
    assert bound.evidence["sigmoid_glorot_init.backward_factor_init.max"] == pytest.approx(largest["glorot_uniform"])
    expected = (
        "pass"
        if max(largest["glorot_uniform"], largest["lecun_normal"]) <= 0.25 and largest["he_normal"] < 1
        else "fail"
    )
    assert bound.verdict == expected
    # Theory beside it: He's predicted factor is √2 times Glorot's... and below 1.
    assert bound.evidence["sigmoid_he_init.theory_factor"] < 1
    assert bound.budget["steps"] == 0 and bound.budget["data"]["checksum"]
    assert by_id["sigmoid-deep-fails"].verdict == "inconclusive"
    json.dumps([dataclasses.asdict(r) for r in results], allow_nan=False)


# --------------------------------------------------------------------------- bias initializer


def test_bias_initializer_is_validated_and_canonical():
    assert RunConfig().bias_initializer == "zeros"
    assert RunConfig(bias_initializer="Random_Normal(stddev=0.5)").bias_initializer == "random_normal(stddev=0.5)"
    with pytest.raises(ValueError, match=r"Argument `bias_initializer`.*'zeroes'"):
        RunConfig(bias_initializer="zeroes")
    with pytest.raises(ValueError, match="Argument `bias_initializer` must be a string"):
        RunConfig(bias_initializer=0.0)


def test_bad_bias_initializer_on_the_command_line_is_one_line_exit_2(tmp_path, capsys):
    code = main(["run", "--bias-initializer", "zeroes", "--dry-run", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "zeroes" in err and "Traceback" not in err
    assert main(["run", "--bias-initializer", "random_normal(stddev=0.2)", "--depth", "2", "--dry-run"]) == 0


def test_default_bias_keeps_the_run_ids_of_published_results():
    # Every run of the committed baseline still gets its directory's name.
    run_dirs = sorted((REPO / "reports" / "baseline" / "runs").iterdir())
    assert run_dirs
    for d in run_dirs:
        config = json.loads((d / "config.json").read_text())
        assert config.get("bias_initializer", "zeros") == "zeros"
        assert RunConfig.from_dict(config).run_id == d.name
        # Results written before the field existed have no such key: the same run_id.
        legacy_config = {k: v for k, v in config.items() if k != "bias_initializer"}
        assert RunConfig.from_dict(legacy_config).run_id == d.name
    # A non-default bias is part of the identity.
    c = RunConfig()
    assert c.replace(bias_initializer="random_normal(stddev=0.1)").run_id != c.run_id
    # (Nor do the fields added after it, at their defaults: the backend, jacobian_examples.)
    legacy = json.dumps(
        {k: v for k, v in c.to_dict().items() if k not in ("bias_initializer", "backend", "jacobian_examples")},
        sort_keys=True,
        separators=(",", ":"),
    )
    assert c.run_id.endswith(hashlib.sha256(legacy.encode()).hexdigest()[:10])


def test_bias_initializer_reaches_every_bias_of_the_built_model():
    c = RunConfig(depth=3, width=512, bias_initializer="random_normal(stddev=0.5)", seed=4)
    model = models.build_model(input_shape=(784,), **c.model_kwargs())
    dense = [layer for layer in model.layers if getattr(layer, "bias", None) is not None]
    assert [layer.name for layer in dense] == ["hidden_0", "hidden_1", "hidden_2", "output"]
    for layer in dense[:-1]:
        bias, kernel = layer.bias.numpy(), layer.kernel.numpy()
        assert abs(bias.std() - 0.5) < 0.05 and abs(bias.mean()) < 0.1
        # Drawn apart from the kernel, not a rescaled copy of its first entries.
        assert abs(np.corrcoef(bias, kernel.reshape(-1)[: bias.size])[0, 1]) < 0.2
    assert np.all(dense[-1].bias.numpy() != 0)
    zeros = models.build_model(input_shape=(784,), **RunConfig(depth=2, width=8).model_kwargs())
    assert all(np.all(layer.bias.numpy() == 0) for layer in zeros.layers if getattr(layer, "bias", None) is not None)


def test_theory_reads_the_bias_variance_from_the_config():
    c = RunConfig(activation="tanh", initializer="glorot_uniform", depth=10, width=64)
    with_bias = theory.predict_config(c.replace(bias_initializer=f"random_normal(stddev={math.sqrt(0.05)!r})"), 1.0)
    assert with_bias.sigma_b2 == pytest.approx(0.05)
    direct = theory.predict("tanh", "glorot_uniform", depth=10, width=64, sigma_b2=0.05, input_second_moment=1.0)
    assert with_bias.chi1 == pytest.approx(direct.chi1) and with_bias.q_star == pytest.approx(direct.q_star)
    plain = theory.predict_config(c, 1.0)
    assert plain.sigma_b2 == 0.0 and plain.chi1 != pytest.approx(with_bias.chi1)
    # An explicit σ_b² still wins; a biased-mean bias is outside the theory.
    assert theory.predict_config(c, 1.0, sigma_b2=0.05).chi1 == pytest.approx(direct.chi1)
    shifted = theory.predict_config(c.replace(bias_initializer="random_normal(mean=0.1, stddev=0.1)"), 1.0)
    assert not shifted.applicable and "mean" in shifted.reason


# --------------------------------------------------------------------------- budgets, grids, SELU, figures


def test_per_run_set_budgets_are_in_the_suite_and_stated_with_the_verdict():
    from vgbench.bench.report import verdicts

    suite = yaml.safe_load((REPO / "bench" / "suites" / "claims.yaml").read_text())
    assert suite["defaults"]["seed"] == list(claims.SEEDS) and len(claims.SEEDS) >= 5
    steps = {
        "he2015-relu-depth30": claims.HE2015_STEPS,
        "schoenholz2017-depth-scale": claims.SCHOENHOLZ_STEPS,
        "normalization-residual-fix-deep-sigmoid": claims.FIX_STEPS,
        "clipping-does-not-cure-vanishing": claims.FIX_STEPS,
    }
    # Sets whose budget differs from their claim's other sets.
    own = {"tanh_sw1_d40": claims.SCHOENHOLZ_ORDERED_STEPS}
    for claim_id, n in steps.items():
        claim = claims.get(claim_id)
        for rs in claim.run_sets:
            # In the suite: the set's own grid, with its steps and one test evaluation every 50 steps.
            grid = {**suite["defaults"], **next(g for g in suite["grids"] if _same_set(g, rs, suite["defaults"]))}
            assert grid["max_steps"] == own.get(rs.name, n) and grid["max_steps"] / grid["epochs"] == 50
        (result,) = claims.evaluate(_table(claim, lambda name, c: (0.5, "ok")), NO_LAYERS, NO_HISTORY, claims=[claim])
        most = max([n, *(own[rs.name] for rs in claim.run_sets if rs.name in own)])
        assert result.budget["examples"] == most * claims.BASE["batch_size"]
        assert result.budget["why"].startswith(f"{n:,} steps")
        assert result.budget["why"] in verdicts.budget_text(result.budget)
        if most == n:
            assert result.budget["steps"] == n and f"{n:,} steps × batch 64" in verdicts.budget_text(result.budget)
        else:
            assert result.budget["steps_by_run_set"] == {rs.name: own.get(rs.name, n) for rs in claim.run_sets}
    # The others keep the base budget and say nothing more.
    (result,) = claims.evaluate(
        _table(claims.get("glorot2010-normalized-init"), lambda n, c: (0.9, "ok")),
        NO_LAYERS,
        NO_HISTORY,
        claims=[claims.get("glorot2010-normalized-init")],
    )
    assert result.budget["steps"] == claims.BASE["max_steps"] and "why" not in result.budget


def _same_set(grid: dict, rs, defaults: dict) -> bool:
    full = {**defaults, **grid}
    return all(full.get(k) == v for k, v in rs.fields.items()) and full.get("dataset", "mnist") == rs.fields.get(
        "dataset", "mnist"
    )


def test_he2015_never_reaching_is_markedly_slower_only_when_the_budget_allows():
    claim = claims.get("he2015-relu-depth30")
    runs = _table(claim, lambda name, c: (0.9 if c.learning_rate == LRS[1] else 0.5, "ok"))
    budget = claims.HE2015_STEPS

    def history(he_reaches_at):
        rows = []
        for rs in claim.run_sets:
            for c in rs.configs():
                for s in range(0, budget + 1, 50):
                    reached = rs.name == "relu_he_d30" and s >= he_reaches_at
                    rows.append({"run_id": c.run_id, "step": s, "test_accuracy": 0.9 if reached else 0.3})
        return pd.DataFrame(rows)

    for he_at in (600, 1100):
        (result,) = claims.evaluate(runs, NO_LAYERS, history(he_at), claims=[claim])
        # By hand: Glorot never reaches 0.80 in `budget` steps; that is >= 1.5x He's only if budget >= 1.5 he_at.
        assert result.evidence["relu_glorot_d30.steps_to_accuracy"] is None  # never (JSON has no infinity)
        assert f"He {he_at}, Glorot never" in result.summary
        assert result.verdict == ("pass" if budget >= 1.5 * he_at else "inconclusive")


def test_the_verdict_states_an_extended_grid_and_a_best_still_at_an_edge():
    claim = claims.get("glorot2010-normalized-init")

    def acc(name, c):
        # tanh + standard peaks far below the grid; tanh + Glorot at 0.03.
        peak = 1e-6 if name == "tanh_standard_d5" else 0.03
        return 0.9 - 0.1 * abs(math.log10(c.learning_rate / peak)), "ok"

    base = _table(claim, acc)
    (result,) = claims.evaluate(base, NO_LAYERS, NO_HISTORY, claims=[claim])
    assert result.evidence["tanh_standard_d5.best_at_edge"] == "low"
    assert "tanh_standard_d5 (lr 0.003, smallest)" in result.summary and "extended" not in result.summary
    # The runner's two extensions (0.0003, then 3e-05), tabulated the same way: still at the edge.
    rs = next(r for r in claim.run_sets if r.name == "tanh_standard_d5")
    extra = [c.replace(learning_rate=lr) for lr in (0.0003, 3e-05) for c in rs.configs() if c.learning_rate == LRS[0]]
    runs = pd.concat(
        [base, pd.DataFrame([{"run_id": c.run_id, **c.to_dict(), "status": "ok"} for c in extra])], ignore_index=True
    )
    runs.loc[runs["test_accuracy"].isna(), "test_accuracy"] = [acc("tanh_standard_d5", c)[0] for c in extra]
    (result,) = claims.evaluate(runs, NO_LAYERS, NO_HISTORY, claims=[claim])
    assert result.evidence["tanh_standard_d5.learning_rates"] == [3e-05, 0.0003, 0.003, 0.03, 0.3]
    assert result.evidence["tanh_standard_d5.best_learning_rate"] == 3e-05
    assert "tanh_standard_d5 3e-05/0.0003/0.003/0.03/0.3" in result.summary
    assert "tanh_standard_d5 (lr 3e-05, smallest)" in result.summary
    assert result.evidence["tanh_glorot_d5.best_at_edge"] == "" and "tanh_glorot_d5 (" not in result.summary
    assert set(c.run_id for c in extra) <= set(result.run_ids)


def test_the_selu_tolerance_is_the_bonferroni_bound_of_a_mean_over_width_units():
    from statistics import NormalDist

    # One comparison: the two-sided 95% bound 1.96/√width; K comparisons: z(1 - 0.05/(2K))/√width.
    assert claims.selu_mean_tolerance(64, 1) == pytest.approx(1.959964 / 8, rel=1e-5)
    assert claims.selu_mean_tolerance(64, 160) == pytest.approx(NormalDist().inv_cdf(1 - 0.05 / 320) / 8)
    assert claims.selu_mean_tolerance(256, 160) == pytest.approx(claims.selu_mean_tolerance(64, 160) / 2)
    # Simulated at the fixed point (unit-variance units): every one of K = 160 means of 64 units is inside
    # in at least 95% of networks; a fixed ±0.1 (0.8 sd) would hold almost never.
    rng = np.random.default_rng(0)
    tol = claims.selu_mean_tolerance(64, 160)
    means = rng.standard_normal((2000, 160, 64)).mean(axis=2)
    inside = (np.abs(means) <= tol).all(axis=1).mean()
    # Bonferroni over independent means gives 1 - 0.05 at least in expectation; 2000 networks estimate it
    # to about ±0.005 (one sd).
    assert 0.95 - 3 * math.sqrt(0.05 * 0.95 / 2000) <= inside < 0.99
    assert (np.abs(means) <= 0.1).all(axis=1).mean() < 0.01
    with pytest.raises(ValueError, match="width"):
        claims.selu_mean_tolerance(0, 10)
    # The variance over 64 normal units: χ²(63)/63 quantiles at the same level, skewed upwards.
    low, high = claims.selu_variance_bounds(64, 160)
    assert 0 < low < 1 < high and high - 1 > 1 - low
    variances = rng.standard_normal((2000, 160, 64)).var(axis=2, ddof=1)
    inside = ((variances >= low) & (variances <= high)).all(axis=1).mean()
    assert 0.95 - 3 * math.sqrt(0.05 * 0.95 / 2000) <= inside < 0.99


def _selu_layers(claim, mean_of) -> pd.DataFrame:
    """Step-0 and last-step rows for every SELU run: mean_of(set, seed, layer), std 1."""
    rows = []
    for rs in claim.run_sets:
        for c in rs.configs():
            for step in (0, 300) if rs.kind == "train" else (0,):
                for layer in range(c.depth):
                    rows.append(
                        {
                            "run_id": c.run_id,
                            "step": step,
                            "layer_index": layer,
                            "layer_name": f"dense_{layer}",
                            "act_mean": mean_of(rs.name, c.seed, layer) * (1 if step == 0 else 0.5),
                            "act_std": 1.0,
                        }
                    )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "mnist_worst, gaussian_worst, expected, diagnosis",
    [
        (0.22, 0.2, "pass", "self-normalizes on both"),
        (0.6, 0.2, "fail", "MNIST breaks the assumption"),
        (0.22, 0.6, "fail", "does not self-normalize"),
    ],
)
def test_the_selu_verdict_separates_the_data_from_the_activation(mnist_worst, gaussian_worst, expected, diagnosis):
    claim = claims.get("klambauer2017-selu-self-normalizing")
    assert [rs.fields.get("dataset", "mnist") for rs in claim.run_sets] == ["mnist", "gaussian"]

    def mean_of(name, seed, layer):
        worst = mnist_worst if name == "selu_lecun_d32" else gaussian_worst
        # Scatter of ±0.05 around 0, and one worst layer (7) of seed 3.
        return worst if (seed, layer) == (3, 7) else 0.05 * (-1) ** (seed + layer)

    runs = _table(claim, lambda n, c: (0.9, "ok"))
    (result,) = claims.evaluate(runs, _selu_layers(claim, mean_of), NO_HISTORY, claims=[claim])
    tol = claims.selu_mean_tolerance(64, 32 * len(claims.SEEDS))
    assert result.evidence["act_mean_tolerance"] == pytest.approx(tol)
    assert result.evidence["act_mean_max_abs"] == pytest.approx(mnist_worst)
    assert result.evidence["gaussian.act_mean_max_abs"] == pytest.approx(gaussian_worst)
    assert (result.evidence["act_mean_worst_layer"], result.evidence["act_mean_worst_seed"]) == (7, 3)
    assert result.evidence["act_mean_max_abs_final"] == pytest.approx(mnist_worst / 2)
    by_hand = "pass" if mnist_worst <= tol and gaussian_worst <= tol else "fail"
    assert result.verdict == by_hand == expected and result.evidence["diagnosis"] == diagnosis
    assert f"±{tol:.3f}" in result.summary and "layer 7, seed 3" in result.summary


def test_the_gaussian_dataset_meets_the_papers_assumptions_and_is_the_same_everywhere():
    from vgbench.bench import data

    a, b = data.load_dataset("gaussian"), data.load_dataset("gaussian")
    assert a.checksum == b.checksum and a.image_shape == (28, 28) and a.n_train == claims.BASE["train_samples"]
    x = data.prepare(a, preprocessing="standardize", train_samples=2000, test_samples=100).x_train
    assert x.shape == (2000, 784)
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01
    # Independent components: pixel correlations are sampling noise (MNIST's neighbours correlate strongly).
    corr = np.corrcoef(x[:, :50], rowvar=False)[np.triu_indices(50, 1)]
    assert np.abs(corr).max() < 5 / math.sqrt(2000)
    assert RunConfig(dataset="gaussian").dataset == "gaussian"


def test_each_claim_figure_shows_the_quantity_its_verdict_rests_on(tmp_path):
    import matplotlib.pyplot as plt

    from vgbench.bench.report import figures, verdicts

    # SELU: the activation mean and variance by layer, for both datasets, with the tolerance as bounds.
    claim = claims.get("klambauer2017-selu-self-normalizing")
    runs = _table(claim, lambda n, c: (0.9, "ok"))
    layers = _selu_layers(claim, lambda name, seed, layer: 0.01 * layer if name == "selu_lecun_d32" else 0.0)
    (result,) = claims.evaluate(runs, layers, NO_HISTORY, claims=[claim])
    table = verdicts.evidence_table(claim, runs, layers=layers, history=NO_HISTORY, result=result)
    means = table[table["kind"] == "act_mean"]
    assert set(means["run_set"]) == {"selu_lecun_d32", "selu_lecun_d32_gaussian"}
    mnist = means[means["run_set"] == "selu_lecun_d32"].sort_values("layer")
    assert list(mnist["layer"]) == list(range(32)) and mnist["median"].iloc[-1] == pytest.approx(0.31)
    assert mnist["limit_high"].iloc[0] == pytest.approx(result.evidence["act_mean_tolerance"])
    assert (table["kind"] == "act_variance").sum() == 64
    # he2015: the steps to 0.80 with the budget; dead units: the dead fraction at the end.
    he = claims.get("he2015-relu-depth30")
    he_runs = _table(he, lambda n, c: (0.9, "ok"))
    history = pd.DataFrame(
        [
            {"run_id": c.run_id, "step": s, "test_accuracy": 0.9 if s >= (200 if "he" in rs.name else 1000) else 0.3}
            for rs in he.run_sets
            for c in rs.configs()
            for s in range(0, claims.HE2015_STEPS + 1, 50)
        ]
    )
    he_table = verdicts.evidence_table(he, he_runs, history=history)
    steps = he_table[he_table["kind"] == "steps"].set_index("run_set")
    assert steps.loc["relu_he_d30", "median"] == 200 and steps.loc["relu_glorot_d30", "median"] == 1000
    assert steps.loc["relu_he_d30", "limit_high"] == claims.HE2015_STEPS
    init = claims.get("init-matters")
    init_table = verdicts.evidence_table(
        init, _table(init, lambda n, c: (0.9, "ok"), backward_factor_init=lambda n, c: 0.7)
    )
    assert (init_table["kind"] == "factor").sum() == 4 and set(
        init_table.loc[init_table["kind"] == "factor", "median"]
    ) == {0.7}
    for claim_id, t in (("klambauer", table), ("he2015", he_table), ("init", init_table)):
        fig = figures.claim_evidence(t, claim_id, claims.TRAINS_ACCURACY, claims.FAILS_ACCURACY)
        labels = [ax.get_xlabel() for ax in fig.axes]
        fig.savefig(tmp_path / f"{claim_id}.png", dpi=60)
        plt.close(fig)
        want = {"klambauer": "hidden layer", "he2015": "steps to 0.80", "init": "backward factor at step 0"}[claim_id]
        assert any(want in label for label in labels), labels
        assert (tmp_path / f"{claim_id}.png").stat().st_size > 0
    # schoenholz2017: its sets train for different budgets, and the figure states each set's steps.
    sch = claims.get("schoenholz2017-depth-scale")
    sch_table = verdicts.evidence_table(sch, _table(sch, lambda n, c: (0.9, "ok")))
    budgets = sch_table[sch_table["kind"] == "train"].set_index("run_set")["max_steps"]
    assert dict(budgets) == {rs.name: rs.configs()[0].max_steps for rs in sch.run_sets}
    assert budgets["tanh_sw1_d40"] == claims.SCHOENHOLZ_ORDERED_STEPS != budgets["tanh_sw1_d10"]
    fig = figures.claim_evidence(sch_table, sch.id, claims.TRAINS_ACCURACY, claims.FAILS_ACCURACY)
    notes = [t.get_text() for ax in fig.axes for t in ax.texts]
    plt.close(fig)
    assert any(f"{claims.SCHOENHOLZ_ORDERED_STEPS:,} steps" in n for n in notes), notes
    # he2015's sets share one budget: no per-set steps in its notes.
    fig = figures.claim_evidence(he_table, he.id, claims.TRAINS_ACCURACY, claims.FAILS_ACCURACY)
    assert not any(" steps," in t.get_text() for ax in fig.axes for t in ax.texts)
    plt.close(fig)
