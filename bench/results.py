"""Results on disk: versioned long-form tables with their provenance.

Layout of a results directory ``OUT``::

    OUT/manifest.json       schema_version, suite, command line, versions, git sha, data
    OUT/runs.parquet        one row per run (config columns + outcome)
    OUT/layers.parquet      one row per (run, step, layer)
    OUT/history.parquet     one row per (run, evaluation point)
    OUT/runs/<run_id>/      what one run wrote: config.json, result.json,
                            layers.parquet, history.parquet

Each run directory is written to a temporary sibling and renamed into place,
so a run is either complete on disk or absent: an interrupted suite resumes
by skipping the run directories that exist. The three top-level tables are
rebuilt from the run directories after each run (atomically, via
``os.replace``), so they are always readable as one table per suite.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench import quantities
from bench.errors import UsageError

SCHEMA_VERSION = 1

# One row per (run, step, layer): the keys, then every per-layer quantity of the registry.
LAYER_COLUMNS = quantities.layer_columns()

HISTORY_COLUMNS = [
    "run_id",
    "step",
    "epoch",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
]

# Outcome columns of runs.parquet; the RunConfig fields come before them.
RUN_OUTCOME_COLUMNS = [
    "status",  # "ok", "diverged" or "failed"
    "error",  # failure message, "" when none
    "diverged_step",  # first step with a non-finite loss or gradient, -1 when none
    "steps",  # optimizer steps taken
    "test_accuracy",
    "test_loss",
    "train_loss",
    "train_accuracy",
    "wall_time_s",
    "data_checksum",
]

STATUSES = ("ok", "diverged", "failed")


def empty_result(**values) -> dict:
    """A run's outcome before (or without) training: the RUN_OUTCOME_COLUMNS."""
    nan = float("nan")
    result = dict(
        status="ok",
        error="",
        diverged_step=-1,
        steps=0,
        test_accuracy=nan,
        test_loss=nan,
        train_loss=nan,
        train_accuracy=nan,
        wall_time_s=nan,
        data_checksum="",
    )
    result.update(values)
    return result


# --------------------------------------------------------------------------- #
# Atomic writes
# --------------------------------------------------------------------------- #


def write_json_atomic(path, obj, **dump_kwargs):
    """Writes ``obj`` as JSON to ``path`` so that readers never see half a file.

    ``dump_kwargs`` override the `json.dump` options (indent 2, sorted keys,
    numpy scalars and paths converted).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    options = {"indent": 2, "sort_keys": True, "default": _json_default, **dump_kwargs}
    try:
        # UTF-8 whatever the locale, for callers that pass ensure_ascii=False.
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, **options)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        _publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def write_parquet_atomic(path, df):
    """Writes a DataFrame to parquet at ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        _publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path, directory=False):
    """mkstemp/mkdtemp create private files; results are for everyone (umask)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# --------------------------------------------------------------------------- #
# One run
# --------------------------------------------------------------------------- #


@dataclass
class RunRecord:
    """Everything one run produced: its row in runs.parquet and its two tables."""

    run_id: str
    config: dict
    result: dict  # the RUN_OUTCOME_COLUMNS
    layers: pd.DataFrame
    history: pd.DataFrame


def run_dir(out, run_id) -> Path:
    return Path(out) / "runs" / run_id


def is_complete(out, run_id) -> bool:
    """Whether a run's results are on disk (run directories appear atomically)."""
    return (run_dir(out, run_id) / "result.json").is_file()


def write_run(out, record: RunRecord):
    """Writes one run's directory atomically: complete, or not at all."""
    final = run_dir(out, record.run_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{record.run_id}.", suffix=".tmp"))
    try:
        layers = _with_columns(record.layers, LAYER_COLUMNS)
        history = _with_columns(record.history, HISTORY_COLUMNS)
        layers.to_parquet(tmp / "layers.parquet", index=False)
        history.to_parquet(tmp / "history.parquet", index=False)
        with open(tmp / "config.json", "w") as f:
            json.dump(record.config, f, indent=2, sort_keys=True, default=_json_default)
        # result.json last: its presence marks the run complete.
        with open(tmp / "result.json", "w") as f:
            json.dump(record.result, f, indent=2, sort_keys=True, default=_json_default)
        _publish_mode(tmp, directory=True)
        if final.exists():
            # A rerun of a finished run (e.g. `--rerun-failed`): replace it whole.
            old = final.with_name(f".{record.run_id}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_partial(out):
    """Removes temporary directories that a killed run left behind."""
    runs = Path(out) / "runs"
    if not runs.is_dir():
        return 0
    n = 0
    for p in runs.iterdir():
        if p.name.startswith(".") and (p.name.endswith(".tmp") or p.name.endswith(".old")):
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n


def _with_columns(df, columns):
    df = df.copy()
    for c in columns:
        if c not in df.columns:
            df[c] = np.nan
    extra = [c for c in df.columns if c not in columns]
    return df[columns + extra]


# --------------------------------------------------------------------------- #
# Whole directory
# --------------------------------------------------------------------------- #


@dataclass
class Results:
    """A results directory in memory: manifest and the three long-form tables."""

    path: Path
    manifest: dict
    runs: pd.DataFrame
    layers: pd.DataFrame
    history: pd.DataFrame


def read_manifest(out) -> dict | None:
    path = Path(out) / "manifest.json"
    if not path.is_file():
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"Cannot read {path}: {e}") from None
    if not isinstance(manifest, dict):
        raise UsageError(f"{path} is not a vgbench manifest (expected a JSON object).")
    return manifest


def check_schema(manifest: dict, where) -> None:
    """Refuses results written by another schema, as asv refuses newer files."""
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UsageError(
            f"{where} holds results of schema_version={version!r}; this vgbench "
            f"reads schema_version={SCHEMA_VERSION}. Use another --out directory."
        )


def collect(out) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Reads every complete run directory into (runs, layers, history)."""
    root = Path(out) / "runs"
    rows, layers, history = [], [], []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.name.startswith(".") or not (d / "result.json").is_file():
                continue
            with open(d / "config.json") as f:
                config = json.load(f)
            with open(d / "result.json") as f:
                result = json.load(f)
            rows.append({"run_id": d.name, **_flatten_config(config), **result})
            layers.append(pd.read_parquet(d / "layers.parquet"))
            history.append(pd.read_parquet(d / "history.parquet"))
    runs = pd.DataFrame(rows)
    if runs.empty:
        runs = pd.DataFrame(columns=["run_id", *RUN_OUTCOME_COLUMNS])
    return (
        runs,
        _concat(layers, LAYER_COLUMNS),
        _concat(history, HISTORY_COLUMNS),
    )


def _flatten_config(config: dict) -> dict:
    """Config dict → one scalar column per field (tuples become '+'-joined strings)."""
    flat = {}
    for k, v in config.items():
        if isinstance(v, (list, tuple)):
            flat[k] = "+".join(str(x) for x in v)
        elif v is None:
            flat[k] = None
        else:
            flat[k] = v
    return flat


def _concat(frames, columns):
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    return pd.concat(frames, ignore_index=True)


def consolidate(out) -> Results:
    """Rebuilds OUT/{runs,layers,history}.parquet from the run directories."""
    out = Path(out)
    runs, layers, history = collect(out)
    write_parquet_atomic(out / "runs.parquet", runs)
    write_parquet_atomic(out / "layers.parquet", layers)
    write_parquet_atomic(out / "history.parquet", history)
    return Results(out, read_manifest(out) or {}, runs, layers, history)


def require_manifest(out, what="Results directory", hint="create one with `vgbench run --out DIR`") -> dict:
    """The manifest of a results directory, of any schema version.

    Raises:
        UsageError: when ``out`` is missing or holds no manifest.json.
    """
    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"{what} {str(out)!r} does not exist.")
    manifest = read_manifest(out)
    if manifest is None:
        raise UsageError(f"{str(out)!r} is not a vgbench results directory (no manifest.json); {hint}.")
    return manifest


def load_results(out) -> Results:
    """Loads a results directory written by `vgbench run`.

    Raises:
        UsageError: when ``out`` is missing, empty, not a vgbench results
            directory, or of another schema version.
    """
    out = Path(out)
    manifest = require_manifest(out)
    check_schema(manifest, repr(str(out)))
    if not (out / "runs.parquet").is_file():
        consolidate(out)
    runs = pd.read_parquet(out / "runs.parquet")
    if runs.empty:
        raise UsageError(f"{str(out)!r} holds no finished runs.")
    layers = pd.read_parquet(out / "layers.parquet")
    history = pd.read_parquet(out / "history.parquet")
    return Results(out, manifest, runs, layers, history)
