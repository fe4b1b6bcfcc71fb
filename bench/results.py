"""Results on disk: versioned long-form tables with their provenance.

Layout of a results directory ``OUT``::

    OUT/manifest.json       schema_version, suite, command line, versions, git sha, data
    OUT/runs.parquet        one row per run (config columns + outcome)
    OUT/layers.parquet      one row per (run, step, layer)
    OUT/history.parquet     one row per (run, evaluation point)
    OUT/variables.parquet   one row per (run, step, trainable variable); absent
                            from results written before it existed
    OUT/jacobian.parquet    one row per (run, example, layer, singular value) of
                            the runs that measured their Jacobian spectrum
                            (`RunConfig.jacobian_examples`, `bench.spectrum`)
    OUT/runs/<run_id>/      what one run wrote: config.json, result.json,
                            layers.parquet, history.parquet, variables.parquet,
                            jacobian.parquet (only when the run measured it)
                            (a long run_id's folder name is truncated, see
                            `run_dir_name`)
    OUT/.lock               the writer's lock (`bench.lock`)
    OUT/.tmp/               run folders being written
    OUT/damaged/            damaged run folders, moved aside and redone

Each run directory is built in OUT/.tmp/ and renamed into place, so a run
is either complete on disk or absent; a run counts as finished only when
its folder validates (`check_run`). The three top-level tables are rebuilt
from the run folders (atomically, via ``os.replace``) at the end of each
`vgbench run`; `load_results` rebuilds them in memory when a run folder
changed after them, so readers always see the finished runs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vgbench.bench import lock, quantities
from vgbench.bench.errors import DiskFull, UsageError
from vgbench.bench.utils import first_line, one_line

SCHEMA_VERSION = 1

# One row per (run, example, layer, singular value); see `bench.spectrum`.
JACOBIAN_COLUMNS = ["run_id", "example", "layer_index", "index", "singular_value"]

# One row per (run, step, layer): the keys, then every per-layer quantity of the registry.
LAYER_COLUMNS = quantities.layer_columns()

# One row per (run, step, trainable variable), on the gradient cadence: the
# variable's gradient norm, under the layer (layers.parquet's layer_index and
# layer_name) that holds it. `variable` is its path below that layer's
# ("kernel", "lstm_cell/recurrent_kernel"), `variable_path` its full path.
VARIABLE_COLUMNS = [
    "run_id",
    "step",
    "epoch",
    "layer_index",
    "layer_name",
    "variable",
    "variable_path",
    "size",
    "grad_norm",
]

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


def write_atomic(path, write) -> None:
    """Writes the file at ``path`` so that readers never see half of it: complete, or as it was.

    ``write(tmp)`` fills a temporary file beside ``path``, which then
    replaces ``path`` with the permissions the umask allows. On any error
    the temporary file is removed and the error raised.

    Args:
        path: the file to write; its folder is created.
        write: a function of the temporary file's path that writes the content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        _publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def write_text_atomic(path, text: str) -> None:
    """Writes ``text`` (UTF-8, whatever the locale) to ``path`` atomically (`write_atomic`), synced to disk."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    write_atomic(path, write)


def write_json_atomic(path, obj, **dump_kwargs):
    """Writes ``obj`` as JSON to ``path`` so that readers never see half a file.

    ``dump_kwargs`` override the `json.dump` options (indent 2, sorted keys,
    numpy scalars and paths converted).
    """
    options = {"indent": 2, "sort_keys": True, "default": _json_default, **dump_kwargs}
    text = json.dumps(obj, **options) + "\n"
    with disk_errors(path):
        write_text_atomic(path, text)


def write_parquet_atomic(path, df):
    """Writes a DataFrame to parquet at ``path`` atomically."""
    with disk_errors(path):
        write_atomic(path, lambda tmp: df.to_parquet(tmp, index=False))


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
    """Everything one run produced: its row in runs.parquet and its tables."""

    run_id: str
    config: dict
    result: dict  # the RUN_OUTCOME_COLUMNS
    layers: pd.DataFrame
    history: pd.DataFrame
    variables: pd.DataFrame | None = None  # None: not recorded (an empty table is written)
    jacobian: pd.DataFrame | None = None  # None: not measured (no file is written)


# Longest run folder name. A run_id grows with its config (a long fix name);
# file systems refuse names over 255 bytes, and the temporary names add more.
MAX_DIR_NAME = 100

# Where the lock holder writes run folders before publishing them, and where
# damaged run folders are kept for inspection.
TMP_DIR = ".tmp"
DAMAGED_DIR = "damaged"


class DamagedRun(Exception):
    """A run folder whose files do not parse or do not agree; the message says why."""


class DamagedRunWarning(UserWarning):
    """A damaged run folder was moved aside (the run is redone) or skipped."""


def run_dir_name(run_id: str) -> str:
    """The folder name of a run: its run_id, or for a long one a truncated slug plus its hash."""
    if len(run_id) <= MAX_DIR_NAME:
        return run_id
    # The run_id ends with "-<hash>"; the hash alone identifies the config.
    head, _, digest = run_id.rpartition("-")
    return f"{head[: MAX_DIR_NAME - len(digest) - 1].rstrip('-_.')}-{digest}"


def run_dir(out, run_id) -> Path:
    return Path(out) / "runs" / run_dir_name(run_id)


def is_complete(out, run_id) -> bool:
    """Whether a run's folder is on disk and valid (see `check_run`)."""
    try:
        check_run(run_dir(out, run_id), run_id)
    except DamagedRun:
        return False
    return True


def check_run(path, run_id=None, config=None, tables=False):
    """Reads a finished run folder and checks that its files parse and agree.

    Args:
        path: the run folder.
        run_id: the run_id it must hold (None: any).
        config: the config dict it must hold (None: any).
        tables: also return its layers and history tables (else only their
            run_id columns are read).

    Returns:
        ``(run_id, config, result, layers, history)``; the tables are None
        unless ``tables``.

    Raises:
        DamagedRun: a file is missing, truncated or of the wrong shape, or
            the files disagree on the run.
    """
    path = Path(path)
    own_id, stored_config, result = _check_run_json(path, run_id, config)
    columns = None if tables else ["run_id"]
    frames = {name: _own_rows(path / name, own_id, columns) for name in ("layers.parquet", "history.parquet")}
    # Optional: folders written before the variables table existed lack it, and
    # only runs that measured their Jacobian spectrum hold a jacobian table.
    for name in (VARIABLES_FILE, JACOBIAN_FILE):
        if (path / name).exists():
            _own_rows(path / name, own_id, ["run_id"])
    if not tables:
        return own_id, stored_config, result, None, None
    return own_id, stored_config, result, frames["layers.parquet"], frames["history.parquet"]


def _own_rows(path: Path, own_id: str, columns) -> pd.DataFrame:
    """A run folder's table ``path`` (``columns`` of it; None: all), refused unless every row is run ``own_id``'s."""
    try:
        frame = pd.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise DamagedRun(f"no {path.name}") from None
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DamagedRun(f"{path.name} unreadable ({first_line(e)})") from None
    if "run_id" not in frame.columns or not set(frame["run_id"].dropna().unique()) <= {own_id}:
        raise DamagedRun(f"{path.name} holds rows of another run")
    return frame


def run_folders(out):
    """OUT/runs/'s run folders, in name order (hidden entries, such as folders being written, are not)."""
    root = Path(out) / "runs"
    if not root.is_dir():
        return []
    return [d for d in sorted(root.iterdir()) if not d.name.startswith(".") and d.is_dir()]


def _check_run_json(path: Path, run_id=None, config=None):
    """``(run_id, config, result)`` of a run folder's JSON files, checked as `check_run` does."""
    if not path.is_dir():
        raise DamagedRun("missing")
    parsed = {}
    for name in ("config.json", "result.json"):
        try:
            with open(path / name, encoding="utf-8") as f:
                parsed[name] = json.load(f)
        except FileNotFoundError:
            raise DamagedRun(f"no {name}") from None
        except (OSError, ValueError) as e:
            raise DamagedRun(f"{name} unreadable ({first_line(e)})") from None
        if not isinstance(parsed[name], dict):
            raise DamagedRun(f"{name} is not a JSON object")
    stored_config, result = parsed["config.json"], parsed["result.json"]
    if result.get("status") not in STATUSES:
        raise DamagedRun(f"result.json has no valid status (status={result.get('status')!r})")
    # Folders written before result.json held the run_id are named by it.
    own_id = result.get("run_id", path.name)
    if not isinstance(own_id, str) or run_dir_name(own_id) != path.name:
        raise DamagedRun(f"result.json names run {own_id!r}, not this folder")
    if run_id is not None and own_id != run_id:
        raise DamagedRun(f"holds run {own_id!r}, not {run_id!r}")
    if config is not None and _normalized(stored_config) != _normalized(config):
        raise DamagedRun("config.json does not match the run's config")
    return own_id, stored_config, result


def move_aside(out, path, reason) -> Path:
    """Moves a damaged run folder to OUT/damaged/ (kept, not deleted) and warns in one line."""
    import datetime as _dt
    import warnings

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    target = Path(out) / DAMAGED_DIR / f"{Path(path).name}.{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    warnings.warn(
        f"run folder {Path(path).name} is damaged ({reason}); moved to {target} and will be redone",
        DamagedRunWarning,
        stacklevel=2,
    )
    return target


def write_run(out, record: RunRecord):
    """Writes one run's directory atomically: complete, or not at all.

    The folder is built in OUT/.tmp/ and renamed into OUT/runs/, so readers
    of OUT/runs/ never see a partial run. The caller holds the directory's
    lock (`bench.lock`).

    Raises:
        DiskFull: the device is full; nothing of this run was published.
    """
    out = Path(out)
    final = run_dir(out, record.run_id)
    name = final.name
    with disk_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = out / TMP_DIR
        staging.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=staging, prefix=f"{name}.", suffix=".tmp"))
        try:
            layers = _with_columns(record.layers, LAYER_COLUMNS)
            history = _with_columns(record.history, HISTORY_COLUMNS)
            layers.to_parquet(tmp / "layers.parquet", index=False)
            history.to_parquet(tmp / "history.parquet", index=False)
            variables = record.variables if record.variables is not None else pd.DataFrame()
            _with_columns(variables, VARIABLE_COLUMNS).to_parquet(tmp / VARIABLES_FILE, index=False)
            if record.jacobian is not None:
                _with_columns(record.jacobian, JACOBIAN_COLUMNS).to_parquet(tmp / JACOBIAN_FILE, index=False)
            with open(tmp / "config.json", "w", encoding="utf-8") as f:
                json.dump(record.config, f, indent=2, sort_keys=True, default=_json_default)
            # result.json last; it names the run, since a long run_id's folder does not.
            with open(tmp / "result.json", "w", encoding="utf-8") as f:
                json.dump(
                    {**record.result, "run_id": record.run_id}, f, indent=2, sort_keys=True, default=_json_default
                )
            _publish_mode(tmp, directory=True)
            if final.exists():
                # A rerun of a finished run (e.g. `--retry-failed`): replace it whole.
                old = Path(tempfile.mkdtemp(dir=staging, prefix=f"{name}.", suffix=".old"))
                os.replace(final, old / name)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def clean_partial(out):
    """Removes the temporary folders that an interrupted writer left behind.

    Only the holder of the directory's lock may call it: another writer's
    temporary folders are its work in progress.
    """
    out = Path(out)
    n = 0
    staging = out / TMP_DIR
    if staging.is_dir():
        for p in staging.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else _unlink_quietly(p)
            n += 1
    runs = out / "runs"
    if runs.is_dir():
        # Where earlier versions staged their run folders.
        for p in runs.iterdir():
            if p.name.startswith(".") and (p.name.endswith(".tmp") or p.name.endswith(".old")):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


def _normalized(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))


@contextlib.contextmanager
def disk_errors(path):
    """Turns a full device while writing ``path`` into `DiskFull`."""
    try:
        yield
    except DiskFull:
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(e):
            raise DiskFull(path) from None
        raise


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
    """A results directory in memory: manifest and the long-form tables."""

    path: Path
    manifest: dict
    runs: pd.DataFrame
    layers: pd.DataFrame
    history: pd.DataFrame
    # The variables table is read on first use (it is the largest); so is the Jacobian spectrum.
    _variables: pd.DataFrame | None = field(default=None, repr=False)
    _jacobian: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def variables(self) -> pd.DataFrame:
        """The variables table (see `load_variables`), read on first access."""
        if self._variables is None:
            self._variables = load_variables(self.path)
        return self._variables

    @property
    def jacobian(self) -> pd.DataFrame:
        """The Jacobian spectrum table (see `load_jacobian`), read on first access."""
        if self._jacobian is None:
            self._jacobian = load_jacobian(self.path)
        return self._jacobian


def read_manifest(out) -> dict | None:
    path = Path(out) / "manifest.json"
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except UnicodeDecodeError as e:
        raise UsageError(
            f"Cannot read {path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})"
        ) from None
    except (OSError, ValueError) as e:
        raise UsageError(f"Cannot read {path}: {one_line(e)}") from None
    if not isinstance(manifest, dict):
        raise UsageError(f"{path} is not a vgbench manifest (expected a JSON object).")
    return manifest


def manifest_datasets(manifest) -> dict[str, dict]:
    """Dataset name → its description, from a manifest's ``data``.

    A directory trained on one dataset records its description there; one
    trained on several (the claims suite adds Gaussian inputs to MNIST)
    records one description per name.
    """
    data = (manifest or {}).get("data") or {}
    if not isinstance(data, dict):
        return {}
    if "checksum" in data:
        return {data.get("name", "mnist"): data}
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def check_schema(manifest: dict, where) -> None:
    """Refuses results written by another schema, as asv refuses newer files."""
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UsageError(
            f"{where} holds results of schema_version={version!r}; this vgbench "
            f"reads schema_version={SCHEMA_VERSION}. Use another --out directory."
        )


def collect(out, on_damaged=None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Reads every finished run folder into (runs, layers, history).

    Args:
        out: the results directory.
        on_damaged: called as ``on_damaged(path, reason)`` for a run folder
            that does not validate (`check_run`), which is then left out.
            None: such a folder is a `UsageError`.
    """
    return _collect(out, on_damaged)[:3]


def run_rows(out) -> pd.DataFrame | None:
    """The per-run table (as in runs.parquet) from the run folders' JSON files alone; None when there is none.

    Cheaper than `collect` (no table is read), for a caller that needs each
    run's config and outcome between rounds of training; a folder whose JSON
    files do not validate is left out.
    """
    rows = []
    for d in run_folders(out):
        try:
            run_id, config, result = _check_run_json(d)
        except DamagedRun:
            continue
        rows.append({"run_id": run_id, **_flatten_config(config), **result})
    return pd.DataFrame(rows) if rows else None


def _collect(out, on_damaged=None):
    """`collect`, and the run folders that validated (a set of paths)."""
    rows, layers, history, valid = [], [], [], set()
    folders = run_folders(out)
    for d, checked in zip(folders, _read_each(_checked_run, folders), strict=True):
        if isinstance(checked, DamagedRun):
            if on_damaged is None:
                raise UsageError(
                    f"Run folder {str(d)!r} is damaged ({checked}); rerun `vgbench run` on {str(out)!r} to redo it."
                )
            on_damaged(d, str(checked))
            continue
        run_id, config, result, run_layers, run_history = checked
        rows.append({"run_id": run_id, **_flatten_config(config), **result})
        layers.append(run_layers)
        history.append(run_history)
        valid.add(d)
    runs = pd.DataFrame(rows)
    if runs.empty:
        runs = pd.DataFrame(columns=["run_id", *RUN_OUTCOME_COLUMNS])
    return runs, _concat(layers, LAYER_COLUMNS), _concat(history, HISTORY_COLUMNS), valid


# Threads that read run folders at once: reading parquet releases the GIL,
# and thousands of small files are mostly waiting on their reads.
READ_THREADS = 4


def _read_each(fn, items) -> list:
    """``[fn(item) for item in items]``, read by `READ_THREADS` threads, in order."""
    from concurrent.futures import ThreadPoolExecutor

    if len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="vgbench-read") as pool:
        return list(pool.map(fn, items))


def _checked_run(d):
    """`check_run` of a run folder with its tables, or the `DamagedRun` that refused it."""
    try:
        return check_run(d, tables=True)
    except DamagedRun as e:
        return e


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


TABLES = ("runs.parquet", "layers.parquet", "history.parquet")
VARIABLES_FILE = "variables.parquet"
JACOBIAN_FILE = "jacobian.parquet"


def _collect_optional(out, name, columns, valid=None) -> pd.DataFrame:
    """Reads the table `name` of every valid run folder (runs without one add no rows).

    ``valid``: the run folders already validated (`_collect`), else each is checked here.
    """

    def read(d):
        if not (d / name).is_file() or valid is not None and d not in valid:
            return None
        try:
            if valid is None:
                check_run(d)
            return pd.read_parquet(d / name)
        except DamagedRun:
            return None  # `collect` reports it
        except Exception:  # pyarrow raises several types for a damaged file
            return None

    frames = [f for f in _read_each(read, run_folders(out)) if f is not None]
    return _concat(frames, columns)


def _load_optional(out, name, collect_fn) -> pd.DataFrame:
    """OUT/`name` when newer than every change to OUT/runs/, else rebuilt from the run folders."""
    out = Path(out)
    top = _stamp(out / name)
    changed = _stamp(out / "runs")
    if top is not None and (changed is None or changed[1] < top[1]):
        try:
            return pd.read_parquet(out / name)
        except Exception:  # damaged: rebuilt below
            pass
    return collect_fn(out)


def collect_variables(out) -> pd.DataFrame:
    """Reads the variables tables of every valid run folder (runs without one add no rows)."""
    return _collect_optional(out, VARIABLES_FILE, VARIABLE_COLUMNS)


def load_variables(out) -> pd.DataFrame:
    """The variables table of a results directory: OUT/variables.parquet when up to date, else from the run folders.

    Results written before the table existed give an empty table with its
    columns.
    """
    return _load_optional(out, VARIABLES_FILE, collect_variables)


def collect_jacobian(out) -> pd.DataFrame:
    """Reads the Jacobian spectrum tables of every valid run folder (`bench.spectrum.JACOBIAN_COLUMNS`)."""
    return _collect_optional(out, JACOBIAN_FILE, JACOBIAN_COLUMNS)


def load_jacobian(out) -> pd.DataFrame:
    """The Jacobian spectrum table of a results directory: OUT/jacobian.parquet when up to date, else from the runs.

    Empty, with its columns, when no run measured it.
    """
    return _load_optional(out, JACOBIAN_FILE, collect_jacobian)


def consolidate(out, on_damaged=None) -> Results:
    """Rebuilds OUT/{runs,layers,history}.parquet from the run folders (see `collect`)."""
    out = Path(out)
    runs, layers, history, valid = _collect(out, on_damaged)
    write_parquet_atomic(out / "runs.parquet", runs)
    write_parquet_atomic(out / "layers.parquet", layers)
    write_parquet_atomic(out / "history.parquet", history)
    variables = _collect_optional(out, VARIABLES_FILE, VARIABLE_COLUMNS, valid)
    write_parquet_atomic(out / VARIABLES_FILE, variables)
    jacobian = _collect_optional(out, JACOBIAN_FILE, JACOBIAN_COLUMNS, valid)
    if not jacobian.empty or (out / JACOBIAN_FILE).exists():
        write_parquet_atomic(out / JACOBIAN_FILE, jacobian)
    return Results(out, read_manifest(out) or {}, runs, layers, history, variables)


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

    What it returns always agrees with the finished run folders: the
    top-level tables are used when they are newer than every change to
    OUT/runs/, and otherwise (a writer was killed before rebuilding them,
    or one is rebuilding them now) the tables are rebuilt in memory from
    the run folders. A missing runs.parquet is also written, unless a
    writer holds the directory.

    Raises:
        UsageError: when ``out`` is missing, empty, not a vgbench results
            directory, of another schema version, or holds a damaged run
            folder that the tables do not cover.
    """
    out = Path(out)
    manifest = require_manifest(out)
    check_schema(manifest, repr(str(out)))
    tables = _read_tables(out)
    if tables is None:
        if (out / "runs.parquet").is_file() or not lock.is_free(out):
            tables = collect(out)
        else:
            tables = consolidate(out)
            tables = (tables.runs, tables.layers, tables.history)
    runs, layers, history = tables
    if runs.empty:
        raise UsageError(f"{str(out)!r} holds no finished runs.")
    return Results(out, manifest, runs, layers, history)


def _read_tables(out):
    """The three top-level tables when they are complete and up to date, else None."""
    before = [_stamp(out / name) for name in TABLES]
    if None in before:
        return None
    runs_dir = out / "runs"
    # Publishing, replacing or moving aside a run folder renames an entry of
    # OUT/runs/, which updates its mtime; the tables are rebuilt after that.
    changed = _stamp(runs_dir)
    if changed is not None and changed[1] >= min(mtime for _, mtime in before):
        return None
    try:
        tables = tuple(pd.read_parquet(out / name) for name in TABLES)
    except Exception as e:  # pyarrow raises several types for a damaged file
        import warnings

        warnings.warn(
            f"{out} top-level tables unreadable ({first_line(e)}); rebuilding them from the run folders", stacklevel=3
        )
        return None
    if [_stamp(out / name) for name in TABLES] != before:
        return None  # replaced while being read: the three may not match
    return tables


def _stamp(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns
