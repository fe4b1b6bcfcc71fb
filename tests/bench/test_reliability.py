"""`vgbench run` under concurrent writers, kills, signals, damage and full disks.

Real processes, real signals and a real small file system (tmpfs, when this
machine lets the tests mount one); a tiny synthetic dataset and tiny models
keep each run well under a second of training.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from vgbench.bench.cli import main
from vgbench.bench.results import DAMAGED_DIR, check_run, load_results, run_dir_name

REPO_ROOT = Path(__file__).resolve().parents[2]

# Tiny runs: a 2-layer, 8-wide MLP on 256 images.
TINY = [
    "--activation",
    "relu",
    "--initializer",
    "he_normal",
    "--depth",
    "2",
    "--width",
    "8",
    "--train-samples",
    "256",
    "--test-samples",
    "128",
    "--batch-size",
    "32",
]


def _npz(path, seed):
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (512, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, 512, dtype=np.uint8),
        x_test=rng.integers(0, 256, (128, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 128, dtype=np.uint8),
    )
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _npz(tmp_path_factory.mktemp("data") / "tiny.npz", 0)


def _cmd(out, data, *extra, seeds="0-3", steps=2):
    return [
        sys.executable,
        "-m",
        "vgbench",
        "run",
        *TINY,
        "--seeds",
        seeds,
        "--max-steps",
        str(steps),
        "--data",
        str(data),
        "--out",
        str(out),
        *map(str, extra),
    ]


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT)}


def _run(out, data, *extra, timeout=300, **kw):
    return subprocess.run(
        _cmd(out, data, *extra, **kw), capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO_ROOT
    )


def _start(out, data, *extra, **kw):
    return subprocess.Popen(
        _cmd(out, data, *extra, **kw),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO_ROOT,
    )


def _folders(out):
    runs = Path(out) / "runs"
    return sorted(p.name for p in runs.iterdir() if not p.name.startswith(".")) if runs.is_dir() else []


def _wait_for(predicate, timeout=120, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def _one_line(stderr, start="vgbench: "):
    # The synthetic dataset is not MNIST, which the CLI rightly warns about.
    lines = [line for line in stderr.splitlines() if line.strip() and "is not the standard MNIST" not in line]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith(start), stderr
    return lines[0]


def _assert_tables_agree(out):
    """What report and compare read is exactly the finished run folders."""
    res = load_results(out)
    folders = _folders(out)
    assert sorted(run_dir_name(r) for r in res.runs.run_id) == folders
    assert set(res.layers.run_id) <= set(res.runs.run_id)
    for name in folders:
        check_run(Path(out) / "runs" / name)


@pytest.fixture(scope="module")
def done(tmp_path_factory, data):
    """A finished results directory of 4 tiny runs, to copy."""
    out = tmp_path_factory.mktemp("done") / "out"
    proc = _run(out, data)
    assert proc.returncode == 0, proc.stderr
    return out


# --------------------------------------------------------------------------- #
# 1. One writer per directory
# --------------------------------------------------------------------------- #


def test_second_writer_is_refused_at_once(tmp_path, data):
    out = tmp_path / "out"
    first = _start(out, data, "--jobs", 1, seeds="0-2", steps=1000)
    _wait_for(lambda: (out / ".lock").is_file() and str(first.pid) in (out / ".lock").read_text(), proc=first)
    # Another writer's work in progress: the refused process must not touch it.
    sentinel = out / ".tmp" / "other-writer.tmp"
    sentinel.mkdir(parents=True)
    second = _run(out, data, "--jobs", 1, seeds="0-2", steps=1000)
    assert second.returncode == 2
    line = _one_line(second.stderr, "vgbench: error: ")
    assert f"pid {first.pid}" in line and "--wait" in line
    assert first.poll() is None  # refused while the first still runs
    assert sentinel.is_dir()
    assert first.wait(timeout=300) == 0
    _assert_tables_agree(out)


def test_wait_queues_behind_the_holder(tmp_path, done, data):
    from vgbench.bench.lock import DirectoryLock

    out = tmp_path / "out"
    shutil.copytree(done, out)
    holder = DirectoryLock(out).acquire()  # this process is the other writer
    try:
        waiting = _start(out, data, "--wait")
        line = waiting.stderr.readline()
        while "is not the standard MNIST" in line:
            line = waiting.stderr.readline()
        assert line.startswith("vgbench: waiting for the other vgbench run") and f"pid {os.getpid()}" in line, line
        time.sleep(1)
        assert waiting.poll() is None
    finally:
        holder.release()
    stdout, stderr = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, stderr
    assert "4 already done, 0 ran" in stdout


# --------------------------------------------------------------------------- #
# 2. Resume with other data
# --------------------------------------------------------------------------- #


def test_resume_with_other_data_is_refused(tmp_path, done, data):
    from vgbench.bench.data import load_dataset

    out = tmp_path / "out"
    shutil.copytree(done, out)
    other = _npz(tmp_path / "other.npz", 1)
    before = (out / "manifest.json").read_text(), pd.read_parquet(out / "runs.parquet")
    proc = _run(out, other, seeds="0-4")
    assert proc.returncode == 2
    line = _one_line(proc.stderr, "vgbench: error: ")
    old, new = load_dataset("mnist", data).checksum, load_dataset("mnist", other).checksum
    assert old[:16] in line and new[:16] in line
    # Nothing changed: the manifest still states the data the runs were trained on.
    assert (out / "manifest.json").read_text() == before[0]
    assert json.loads(before[0])["data"]["checksum"] == old
    pd.testing.assert_frame_equal(pd.read_parquet(out / "runs.parquet"), before[1])
    assert set(load_results(out).runs.data_checksum) == {old}


# --------------------------------------------------------------------------- #
# 3 and 6. Kills and SIGTERM: tables never stale, workers never orphaned
# --------------------------------------------------------------------------- #


def _children_when_running(proc, out, n_before):
    _wait_for(lambda: len(_folders(out)) > n_before, proc=proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2  # the workers (and multiprocessing's helpers)
    return children


def _assert_all_gone(children, timeout=15):
    _, alive = psutil.wait_procs(children, timeout=timeout)
    assert not alive, [p.cmdline()[:3] for p in alive]


def test_sigkill_leaves_no_worker_and_readers_see_every_finished_run(tmp_path, done, data):
    out = tmp_path / "out"
    shutil.copytree(done, out)  # its tables hold 4 runs
    proc = _start(out, data, "--jobs", 2, seeds="0-3", steps=30)
    children = _children_when_running(proc, out, 4)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _assert_all_gone(children)
    new = len(_folders(out)) - 4
    assert 1 <= new < 4
    assert len(pd.read_parquet(out / "runs.parquet")) == 4  # the writer had no chance to rebuild them
    _assert_tables_agree(out)
    # The lock went with the process: a rerun resumes at once.
    resumed = _run(out, data, "--jobs", 2, seeds="0-3", steps=30)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{new} already done, {4 - new} ran" in resumed.stdout
    assert len(pd.read_parquet(out / "runs.parquet")) == 4 + 4


def test_sigterm_is_like_ctrl_c(tmp_path, data):
    out = tmp_path / "out"
    proc = _start(out, data, "--jobs", 2, seeds="0-5", steps=100)
    children = _children_when_running(proc, out, 0)
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "terminated; finished runs are saved" in _one_line(stderr)
    _assert_all_gone(children)
    finished = _folders(out)
    assert 1 <= len(finished) < 6
    # Rebuilt on the way out: the table on disk has every finished run.
    assert sorted(run_dir_name(r) for r in pd.read_parquet(out / "runs.parquet").run_id) == finished
    assert not (out / ".tmp").is_dir() or not list((out / ".tmp").iterdir())
    _assert_tables_agree(out)


# --------------------------------------------------------------------------- #
# 4. Damaged run folders
# --------------------------------------------------------------------------- #


def _truncate(path, keep=10):
    path.write_bytes(path.read_bytes()[:keep])


DAMAGE = {
    "truncated result.json": lambda d: _truncate(d / "result.json"),
    "truncated config.json": lambda d: _truncate(d / "config.json"),
    "result.json is []": lambda d: (d / "result.json").write_text("[]"),
    "no layers.parquet": lambda d: (d / "layers.parquet").unlink(),
    "truncated layers.parquet": lambda d: _truncate(d / "layers.parquet", 100),
}


def test_damaged_run_folders_are_moved_aside_and_redone(tmp_path, data):
    out = tmp_path / "out"
    assert _run(out, data, seeds="0-5").returncode == 0
    names = _folders(out)
    for name, damage in zip(names, DAMAGE.values()):
        damage(out / "runs" / name)
    (out / "runs.parquet").unlink()
    # Readers refuse a damaged folder that the tables do not cover: one line, exit 2.
    report = subprocess.run(
        [sys.executable, "-m", "vgbench", "report", str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert report.returncode == 2
    assert "is damaged" in _one_line(report.stderr, "vgbench: error: ")
    proc = _run(out, data, seeds="0-5")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "is damaged" in line]
    assert len(warned) == len(DAMAGE)
    assert all(line.startswith("vgbench: warning: run folder ") for line in warned)
    assert f"6 runs in {out}: 1 already done, 5 ran (5 ok)" in proc.stdout
    kept = sorted((out / DAMAGED_DIR).iterdir())
    assert sorted(p.name.rsplit(".", 2)[0] for p in kept) == sorted(names[: len(DAMAGE)])
    _assert_tables_agree(out)
    assert len(load_results(out).runs) == 6


# --------------------------------------------------------------------------- #
# 5, 8, 9. Directories and paths that are not ours or not writable
# --------------------------------------------------------------------------- #


def _main_fails(args, capsys, message):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in _one_line(err, "vgbench: error: "), err


def test_foreign_directory_is_not_touched(tmp_path, data, capsys):
    foreign = tmp_path / "foreign"
    (foreign / "runs" / ".build.tmp").mkdir(parents=True)
    _main_fails(
        ["run", *TINY, "--max-steps", "0", "--data", str(data), "--out", str(foreign)],
        capsys,
        "holds no vgbench results",
    )
    assert (foreign / "runs" / ".build.tmp").is_dir()
    assert sorted(p.name for p in foreign.rglob("*")) == [".build.tmp", "runs"]


def test_bad_output_paths_are_one_line_errors(tmp_path, data, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    run = ["run", *TINY, "--max-steps", "0", "--data", str(data), "--out"]
    _main_fails([*run, str(a_file / "out")], capsys, "is a file")
    _main_fails([*run, str(dangling)], capsys, "does not exist")
    _main_fails([*run, str(tmp_path / ("x" * 300))], capsys, "longer than 255 bytes")
    assert not (tmp_path / "nowhere").exists()


def test_missing_data_leaves_no_directory(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    _main_fails(
        ["run", *TINY, "--max-steps", "0", "--data", str(tmp_path / "nope.npz"), "--out", str(out)], capsys, "nope.npz"
    )
    assert not (tmp_path / "new").exists()


def test_report_and_compare_paths(tmp_path, done, capsys):
    out = tmp_path / "out"
    shutil.copytree(done, out)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _main_fails(["report", str(out), "--out-dir", str(a_file / "report")], capsys, str(a_file))
    # A truncated table is rebuilt from the run folders, with a warning.
    _truncate(out / "runs.parquet", 50)
    with pytest.warns(UserWarning, match="unreadable"):
        _assert_tables_agree(out)
    # Without run folders to rebuild from, it is a one-line error.
    shutil.rmtree(out / "runs")
    _main_fails(["compare", str(done), str(out)], capsys, "holds no finished runs")


def test_ray_options_are_checked_before_anything_runs(tmp_path, data, capsys):
    run = ["run", *TINY, "--max-steps", "0", "--data", str(data), "--executor", "ray", "--out", str(tmp_path / "o")]
    _main_fails([*run, "--ray-cpus-per-task", "0"], capsys, "cpus_per_task=0")
    _main_fails([*run, "--ray-max-retries", "-1"], capsys, "max_retries=-1")
    assert not (tmp_path / "o").exists()


def test_long_run_ids_get_bounded_folder_names(tmp_path, data):
    fix = "residual(every=1" + "0" * 260 + ")"
    out = tmp_path / "out"
    proc = _run(out, data, "--fix", fix, seeds="0")
    assert proc.returncode == 0, proc.stderr
    (name,) = _folders(out)
    run_id = load_results(out).runs.run_id.iloc[0]
    assert len(run_id) > 255 and len(name) <= 100 and name.endswith(run_id[-10:])
    again = _run(out, data, "--fix", fix, seeds="0")
    assert "1 already done, 0 ran" in again.stdout


# --------------------------------------------------------------------------- #
# 7. A full disk
# --------------------------------------------------------------------------- #


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def _fill(path):
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    # The last partial chunk may leave a few bytes: take them too.
    i = 0
    while True:
        try:
            (path.parent / f"{path.name}.{i}").write_bytes(b"\0" * 512)
        except OSError:
            break
        i += 1


def test_full_disk_loses_nothing_and_resumes(small_fs, data):
    out = small_fs / "out"
    proc = _start(out, data, "--jobs", 1, seeds="0-5", steps=300)
    _wait_for(lambda: len(_folders(out)) >= 1, proc=proc)
    _fill(small_fs / "filler")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    line = _one_line(stderr)
    assert line.startswith("vgbench: no space left on device writing ") and line.endswith(
        "; finished runs are kept; free space and rerun"
    )
    finished = _folders(out)
    assert 1 <= len(finished) < 6
    for name in finished:
        check_run(out / "runs" / name)
    for p in small_fs.glob("filler*"):
        p.unlink()
    resumed = _run(out, data, "--jobs", 1, seeds="0-5", steps=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(finished)} already done, {6 - len(finished)} ran" in resumed.stdout
    _assert_tables_agree(out)


def test_read_only_file_system_is_a_usage_error(tmp_path, data, capsys):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        _main_fails(
            ["run", *TINY, "--max-steps", "0", "--data", str(data), "--out", str(mnt / "out")], capsys, "not writable"
        )
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


@pytest.mark.slow
def test_kept_workers_serve_consecutive_suites_and_end_with_it(tmp_path, data):
    # A protocol's rounds are suites run one after the other: within `kept_workers` they share
    # one pool of worker processes, which ends with it; a stopped suite's pool is not reused.
    from vgbench.bench import runner
    from vgbench.bench.config import RunConfig

    def configs(seeds):
        return [
            RunConfig(depth=2, width=8, train_samples=256, test_samples=128, batch_size=32, max_steps=2, seed=s)
            for s in seeds
        ]

    def workers():
        (pool,) = runner._KEPT.values()
        return set(pool._pool._processes)

    out = tmp_path / "out"
    with runner.kept_workers():
        first = runner.run_suite(configs([0, 1]), out, jobs=2, data_path=data, progress=False, tables=False)
        pids = workers()
        second = runner.run_suite(configs([2, 3]), out, jobs=2, data_path=data, progress=False, tables=False)
        assert workers() == pids and pids
    assert first.done == second.done == 2
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
    assert runner._KEPT is None
    # Without it, each suite ends its own workers.
    runner.run_suite(configs([4, 5]), out, jobs=2, data_path=data, progress=False, tables=False)
    assert runner._KEPT is None
