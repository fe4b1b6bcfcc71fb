"""The project guards its own numbers: a fresh `ci` suite against reports/baseline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "reports" / "baseline"

pytestmark = [pytest.mark.mnist, pytest.mark.slow]


def test_ci_suite_matches_the_committed_baseline(mnist_path, tmp_path):
    assert (BASELINE / "manifest.json").is_file(), "no committed baseline: run `make update-baseline`"
    current = tmp_path / "ci-current"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "vgbench",
            "run",
            "--suite",
            "ci",
            "--data",
            str(mnist_path),
            "--out",
            str(current),
            "--jobs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    report, rows = tmp_path / "compare.md", tmp_path / "compare.json"
    cmp = subprocess.run(
        [
            sys.executable,
            "-m",
            "vgbench",
            "compare",
            str(BASELINE),
            str(current),
            "--markdown",
            str(report),
            "--json",
            str(rows),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    text = report.read_text() if report.exists() else cmp.stderr
    assert cmp.returncode == 0, f"training dynamics changed against reports/baseline:\n{text}"
    # Every gating row of every benchmark compared and unchanged, the step-0 gradient rows among them;
    # wall time on a busy machine may differ (it does not gate).
    compared = [r for r in json.loads(rows.read_text())["rows"] if r["gating"] and r["metric"] != "all"]
    assert compared and all(r["mark"] == "unchanged" for r in compared), text
    assert {"backward_factor_init", "forward_factor_init", "theory_deviation_init"} <= {r["metric"] for r in compared}
