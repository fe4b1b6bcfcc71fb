"""A Ray cluster with token authentication, reached without RAY_AUTH_MODE=token: the error names the missing token.

A real local cluster is started in a process of its own with
``RAY_AUTH_MODE=token`` (its token in a private home folder); `vgbench run
--executor ray --address` is then run without the variable and without the
token, as a new user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.mnist]

# The head: a local Ray instance that lives until its stdin closes, its GCS address on stdout.
HEAD = """
import sys, ray
ray.init(address="local", num_cpus=1, include_dashboard=False, _temp_dir=sys.argv[1])
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def token_cluster():
    pytest.importorskip("ray")
    # Ray's socket paths must stay short: not under pytest's tmp_path.
    root = Path(tempfile.mkdtemp(prefix="vgray", dir="/tmp"))
    (root / "home").mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        "HOME": str(root / "home"),
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_raylet_start_wait_time_s": "180",
    }
    head = subprocess.Popen(
        [sys.executable, "-c", HEAD, str(root / "t")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        address = head.stdout.readline().strip()
        if not address:
            pytest.skip("the local Ray head with token authentication did not start")
        yield address, root
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        time.sleep(1)


def test_token_cluster_without_the_token_names_ray_auth_mode(token_cluster, tmp_path, mnist_path):
    address, root = token_cluster
    (root / "client").mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        "HOME": str(root / "client"),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vgbench", "run", "--suite", "smoke", "--executor", "ray", "--address", address]
    cmd += ["--data", str(mnist_path), "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vgbench:")]
    assert len(lines) == 1, proc.stderr
    assert address in lines[0] and "RAY_AUTH_MODE=token" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert not (out / "runs").exists()

    # With the mode but still no token: the same one line, saying the token is missing.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**env, "RAY_AUTH_MODE": "token"})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vgbench:")]
    assert len(lines) == 1 and "no token was found" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
