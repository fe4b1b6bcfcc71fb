"""The best-learning-rate protocol's grid extension: edges, one and two extensions, the stop at two, resuming.

Outcomes come from a stated accuracy curve over log10(learning rate) with a
peak at a chosen learning rate; the expected grids are worked out here from
that curve, not by calling the code under test. One tiny real run through
the command line (generated Gaussian data, a two-point grid, whose best is
always at an edge) checks the runner's loop end to end.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from vgbench.bench import protocol, results
from vgbench.bench.cli import main
from vgbench.bench.config import RunConfig
from vgbench.bench.results import load_results

GRID = (0.003, 0.03, 0.3)
SEEDS = (0, 1, 2, 3, 4)


def _base(**fields) -> list[RunConfig]:
    c = RunConfig(depth=3, width=8, optimizer="momentum", max_steps=10, **fields)
    return [c.replace(learning_rate=lr, seed=s) for lr in GRID for s in SEEDS]


def _accuracy(peak: float):
    """0.9 at ``peak``, 0.1 less per decade away from it, seeds 0.002 apart."""

    def acc(c: RunConfig) -> float:
        return 0.9 - 0.1 * abs(math.log10(c.learning_rate / peak)) + 0.002 * (c.seed - 2)

    return acc


def _rows(configs, acc) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": c.run_id, **c.to_dict(), "status": "ok", "test_accuracy": acc(c)} for c in configs])


def _lrs(configs) -> list[float]:
    return sorted({c.learning_rate for c in configs})


def _run_protocol(base, acc) -> list[RunConfig]:
    """Rounds until nothing is added, each round 'training' (tabulating) what is new."""
    done = []
    for _ in range(10):
        current = protocol.extended_configs(base, _rows(done, acc) if done else None)
        new = [c for c in current if c.run_id not in {d.run_id for d in done}]
        if not new:
            return current
        done += new
    raise AssertionError("the protocol did not stop")


def test_the_edge_is_where_the_best_learning_rate_is_the_grids_smallest_or_largest():
    for peak, edge in ((0.03, ""), (1e-4, "low"), (10.0, "high")):
        row = protocol.best_learning_rate(_rows(_base(), _accuracy(peak))).iloc[0]
        assert row["edge"] == edge, peak
    one = [c for c in _base() if c.learning_rate == 0.03]
    assert protocol.best_learning_rate(_rows(one, _accuracy(1e-4))).iloc[0]["edge"] == ""  # one point is no grid


def test_decades_are_rounded_so_run_ids_agree():
    assert protocol.decade(0.003, -1) == 0.0003 and protocol.decade(0.3, 1) == 3.0
    assert protocol.decade(0.003, -2) == protocol.decade(protocol.decade(0.003, -1), -1) == 3e-05
    c = RunConfig(learning_rate=0.003)
    assert c.replace(learning_rate=protocol.decade(0.003, -1)).run_id == RunConfig(learning_rate=0.0003).run_id


def test_a_grid_bracketing_its_best_is_not_extended_nor_one_not_finished():
    base = _base()
    assert protocol.extended_configs(base, None) == base
    assert protocol.extended_configs(base, _rows(base, _accuracy(0.03))) == base
    # Peak far below the grid, but one run of the grid is missing: its best is not known yet.
    assert protocol.extended_configs(base, _rows(base[1:], _accuracy(1e-6))) == base


def test_one_extension_when_the_new_decade_brackets_the_best():
    # Peak at 1e-4: 0.003 wins the first grid (at its low edge); 0.0003 (0.852) then beats 0.003 (0.752)
    # and is the edge again, so 3e-05 is added; 0.0003 beats 3e-05 (0.848): bracketed.
    base = _base()
    first = protocol.extended_configs(base, _rows(base, _accuracy(1e-4)))
    added = first[len(base) :]
    assert _lrs(added) == [0.0003] and sorted(c.seed for c in added) == list(SEEDS)
    final = _run_protocol(base, _accuracy(1e-4))
    assert _lrs(final) == [3e-05, 0.0003, 0.003, 0.03, 0.3]
    row = protocol.best_learning_rate(_rows(final, _accuracy(1e-4))).iloc[0]
    assert row["best_learning_rate"] == 0.0003 and row["edge"] == ""
    # Peak at 0.001: 0.003 wins (edge), 0.0003 (0.848) loses to 0.003 (0.852): one extension only.
    assert _lrs(_run_protocol(base, _accuracy(0.001))) == [0.0003, 0.003, 0.03, 0.3]


def test_upwards_and_at_most_two_extensions():
    base = _base()
    # Peak at 0.5: 0.3 (0.878) wins at the high edge; 3.0 (0.822) loses to it.
    assert _lrs(_run_protocol(base, _accuracy(0.5))) == [0.003, 0.03, 0.3, 3.0]
    # A peak four decades below the grid: two extensions, and the best is still at the edge.
    final = _run_protocol(base, _accuracy(3e-7))
    assert _lrs(final) == [3e-05, 0.0003, 0.003, 0.03, 0.3]
    assert protocol.best_learning_rate(_rows(final, _accuracy(3e-7))).iloc[0]["edge"] == "low"
    assert len(protocol.extended_configs(base, _rows(final, _accuracy(3e-7)))) == len(final)


def test_configurations_extend_independently_and_diverged_runs_score_chance():
    base = _base() + _base(activation="tanh")

    def acc(c):
        return _accuracy(1e-4)(c) if c.activation == "relu" else _accuracy(0.03)(c)

    final = _run_protocol(base, acc)
    assert _lrs([c for c in final if c.activation == "tanh"]) == list(GRID)
    assert _lrs([c for c in final if c.activation == "relu"]) == [3e-05, 0.0003, 0.003, 0.03, 0.3]
    # Every learning rate diverges: all score chance, the tie goes to the smallest, so the grid goes down.
    runs = _rows(_base(), _accuracy(0.03)).assign(status="diverged")
    assert _lrs(protocol.extended_configs(_base(), runs)) == [0.0003, *GRID]


def test_run_extensions_resumes_doing_only_what_is_missing(tmp_path):
    base, acc, trained = _base(), _accuracy(1e-4), []

    def run(configs, stop_after=None):
        # "Trains" a run by writing the JSON files of its folder, which the protocol reads between rounds.
        table = protocol.read_runs(tmp_path)
        have = set() if table is None else set(table["run_id"])
        todo = [c for c in configs if c.run_id not in have]
        if stop_after is not None:
            todo = todo[:stop_after]
        trained.extend(c.run_id for c in todo)
        for c in todo:
            folder = results.run_dir(tmp_path, c.run_id)
            folder.mkdir(parents=True)
            (folder / "config.json").write_text(json.dumps(c.to_dict()))
            result = {"run_id": c.run_id, "status": "ok", "test_accuracy": acc(c)}
            (folder / "result.json").write_text(json.dumps(result))
        if stop_after is not None:
            raise KeyboardInterrupt

    run(base)
    # Interrupted after 2 of the 5 runs of the first extension.
    with pytest.raises(KeyboardInterrupt):
        protocol.run_extensions(base, lambda cs: run(cs, stop_after=2), tmp_path)
    assert len(trained) == len(base) + 2
    rounds = protocol.run_extensions(base, run, tmp_path)
    # The 3 missing runs of 0.0003, then the 5 of 3e-05; nothing twice.
    assert len(rounds) == 2 and len(trained) == len(set(trained)) == len(base) + 10
    final = _run_protocol(base, acc)
    assert _lrs(final) == [3e-05, 0.0003, 0.003, 0.03, 0.3]
    assert set(trained) == {c.run_id for c in final}
    protocol.run_extensions(base, run, tmp_path)  # again, when all is done: nothing is trained
    assert len(trained) == len(base) + 10


@pytest.mark.slow
def test_the_claims_runner_extends_a_grid_on_real_runs_and_resumes(tmp_path, capsys):
    # A two-point grid always has its best at an edge: the runner extends it once, and again if the new
    # decade wins, then stops.
    suite = tmp_path / "tiny.yaml"
    suite.write_text(
        "name: tiny\ndescription: two learning rates\nprotocol: best_lr\n"
        "defaults: {arch: mlp, width: 8, depth: 2, batch_size: 16, max_steps: 2, epochs: 1, train_samples: 64,"
        " test_samples: 64, optimizer: momentum, dataset: gaussian, learning_rate: [0.01, 0.1], seed: [0]}\n"
        "grids: [{activation: relu}]\n"
    )
    out = tmp_path / "r"
    args = ["run", "--suite", str(suite), "--out", str(out), "--backend", "tensorflow", "--jobs", "1", "--yes"]
    assert main([*args, "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "2 runs in the first round" in err and "at most 2 decades" in err
    assert main(args) == 0
    r = load_results(out)
    lrs = sorted(r.runs["learning_rate"])
    # The added rates continue one side or the other, a decade at a time.
    assert lrs in ([0.001, 0.01, 0.1], [0.01, 0.1, 1.0], [0.0001, 0.001, 0.01, 0.1], [0.01, 0.1, 1.0, 10.0])
    expected = protocol.extended_configs(_configs_of(r.runs[r.runs["learning_rate"].isin([0.01, 0.1])]), r.runs)
    assert {c.run_id for c in expected} == set(r.runs["run_id"])
    row = protocol.best_learning_rate(r.runs).iloc[0]
    # Stopped either because the best is bracketed or after two extensions.
    assert row["edge"] == "" or len(lrs) == 4
    capsys.readouterr()
    assert main(args) == 0  # resumed: nothing to do
    assert "0 ran" in capsys.readouterr().out


def _configs_of(runs: pd.DataFrame) -> list[RunConfig]:
    fields = RunConfig.__dataclass_fields__
    return [
        RunConfig(**{k: v for k, v in row.items() if k in fields and not (isinstance(v, float) and math.isnan(v))})
        for row in runs.to_dict("records")
    ]
