"""The results sets committed under tests/data are what tests/data/make_results.py writes today.

The fast tier reads those sets instead of training (the report and compare
tests); this check, in the slow tier, trains them again and fails when a
change to what a run records has left them stale: rerun the script and commit
its output.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vgbench.bench.results import load_results

COMMITTED = Path(__file__).resolve().parent / "data" / "results"
# Provenance and timing: expected to differ between the committed run and this one.
VOLATILE = {"git_sha", "wall_time_s", "vgbench_version", "keras_version", "tensorflow_version", "jax_version"}
RTOL = 1e-4

pytestmark = pytest.mark.slow


def _sets(root: Path) -> list[str]:
    return sorted(str(p.parent.relative_to(root)) for p in root.rglob("manifest.json"))


def _assert_tables_close(a: pd.DataFrame, b: pd.DataFrame, keys: list[str], what: str) -> None:
    assert sorted(a.columns) == sorted(b.columns), what
    a = a.sort_values(keys).reset_index(drop=True)
    b = b.sort_values(keys).reset_index(drop=True)[a.columns]
    for col in a.columns:
        if col in VOLATILE:
            continue
        if pd.api.types.is_float_dtype(a[col]):
            np.testing.assert_allclose(a[col], b[col], rtol=RTOL, atol=1e-12, equal_nan=True, err_msg=f"{what}.{col}")
        else:
            assert a[col].astype(str).tolist() == b[col].astype(str).tolist(), f"{what}.{col}"


def test_committed_results_match_a_fresh_run(make_results, tmp_path):
    fresh = make_results.generate(tmp_path / "fresh")
    assert _sets(COMMITTED) == _sets(fresh) != []
    for name in _sets(COMMITTED):
        old, new = load_results(COMMITTED / name), load_results(fresh / name)
        _assert_tables_close(old.runs, new.runs, ["run_id"], f"{name}/runs")
        _assert_tables_close(old.layers, new.layers, ["run_id", "step", "layer_index"], f"{name}/layers")
        _assert_tables_close(old.history, new.history, ["run_id", "step"], f"{name}/history")
        for key in ("schema_version", "suite", "backend"):
            assert old.manifest[key] == new.manifest[key], (name, key)
        assert old.manifest["data"]["checksum"] == new.manifest["data"]["checksum"], name
        # Only the tables and the manifest are kept.
        assert sorted(p.name for p in (COMMITTED / name).iterdir()) == sorted(make_results.KEPT), name
        assert json.loads((COMMITTED / name / "manifest.json").read_text())["git_sha"], name
