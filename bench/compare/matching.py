"""Pairing runs into benchmarks: which runs of the two sides repeat the same training, and under which name.

A benchmark is identified by `bench.config.benchmark_fields` (the config
without the seed and the measurement settings), the same identity the report
groups its pairs by. Its seeds are its samples; its runs are paired across
the sides by seed (and by measurement settings where one seed was measured
several ways).
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd

from vgbench.bench.compare.records import Note, Reason
from vgbench.bench.config import (
    CONFIG_FIELDS,
    LATE_FIELD_DEFAULTS,
    MEASUREMENT_FIELDS,
    SAMPLE_FIELDS,
    benchmark_fields,
    stable_identity,
)
from vgbench.bench.utils import plain, slug

# The sample field (of SAMPLE_FIELDS) that orders a benchmark's runs.
SEED = "seed"

# The config field of the Keras backend; a comparison across backends pairs runs without it.
BACKEND = "backend"

# Columns whose values must agree for a metric to be comparable, besides its
# measurement settings: runs on other data measure something else.
DATA_COLUMN = "data_checksum"


def identity_value(value):
    """A config value in a form that is equal on both sides whatever the column's dtype."""
    value = plain(value)
    # A column with a missing value is float on one side and int on the other.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def fill_backend(base: pd.DataFrame, cur: pd.DataFrame) -> tuple[str, str] | None:
    """Gives both sides a backend column (older results lack it: TensorFlow); (baseline's, current's) when they differ.

    A comparison across backends is one with a single backend on each side,
    a different one: its runs pair by the rest of their identity. Where a
    side holds both backends, the backend stays part of a benchmark's
    identity and each backend is compared with itself.
    """
    for runs in (base, cur):
        if BACKEND in runs.columns:
            runs[BACKEND] = runs[BACKEND].fillna(LATE_FIELD_DEFAULTS[BACKEND]).astype(str)
        else:
            runs[BACKEND] = LATE_FIELD_DEFAULTS[BACKEND]
    b, c = set(base[BACKEND]), set(cur[BACKEND])
    if len(b) == 1 and len(c) == 1 and b != c:
        return next(iter(b)), next(iter(c))
    return None


def key_fields(base_runs: pd.DataFrame, cur_runs: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(fields that identify a benchmark on both sides, config fields present on one side only)."""
    present_b = {c for c in CONFIG_FIELDS if c in base_runs.columns}
    present_c = {c for c in CONFIG_FIELDS if c in cur_runs.columns}

    # A late field at its default where it exists is what results written before it existed meant.
    one_side = sorted(c for c in present_b ^ present_c if not _late_at_default(c, base_runs, cur_runs))
    return benchmark_fields(present_b & present_c), one_side


def benchmark_name(config: dict) -> str:
    """A readable, stable name: ``arch-dDEPTH-wWIDTH-activation-initializer-fix-HASH`` of the identifying config."""
    blob = json.dumps(stable_identity(config), sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
    parts = [config.get("arch")]
    for f, prefix in (("depth", "d"), ("width", "w")):
        if config.get(f) is not None:
            parts.append(f"{prefix}{config[f]}")
    parts += [config.get("activation"), config.get("initializer"), config.get("fix")]
    if config.get(BACKEND, LATE_FIELD_DEFAULTS[BACKEND]) != LATE_FIELD_DEFAULTS[BACKEND]:
        parts.append(config[BACKEND])
    readable = "-".join(slug(str(p)) for p in parts if p is not None)
    return f"{readable}-{digest}" if readable else digest


def name_benchmarks(runs: pd.DataFrame, keys: list[str]) -> tuple[pd.Series, dict]:
    """The benchmark of each run, and {benchmark: its identifying config}."""
    names, configs = [], {}
    for _, row in runs.iterrows():
        if not keys:
            # Tables without config columns: each run is its own benchmark.
            name, config = str(row["run_id"]), {}
        else:
            config = {k: identity_value(row[k]) for k in keys}
            name = benchmark_name(config)
        names.append(name)
        configs[name] = config
    return pd.Series(names, index=runs.index, dtype="object"), configs


def runs_of(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    """The runs of one benchmark, by seed."""
    mine = runs[runs["benchmark"] == name]
    return mine.sort_values(SEED if SEED in mine.columns else "run_id")


def seeds(runs: pd.DataFrame) -> list[int]:
    """The seeds of a benchmark's runs, in their order ([] without a seed column)."""
    return [int(s) for s in runs[SEED]] if SEED in runs.columns else []


def pairing_fields(base: pd.DataFrame, cur: pd.DataFrame) -> tuple[str, ...]:
    """The fields that pair a baseline run with a current run of one benchmark.

    The seed alone pairs them, also across a change of a measurement setting
    (which does not change whether a run fails). A suite may run one seed
    with several measurement settings, though: those runs share the
    benchmark, and keyed by seed alone one of them would hide the other.
    """
    # A late field at its default everywhere tells no runs apart (and older results lack it).
    measurement = tuple(f for f in MEASUREMENT_FIELDS if not _late_at_default(f, base, cur))
    for fields in (SAMPLE_FIELDS, (*SAMPLE_FIELDS, *measurement)):
        present = [f for f in fields if f in base.columns and f in cur.columns]
        if not present or not (base.duplicated(subset=present).any() or cur.duplicated(subset=present).any()):
            return fields
    return fields


def _late_at_default(field: str, *tables: pd.DataFrame) -> bool:
    """Whether `field` is a late field (`LATE_FIELD_DEFAULTS`) that holds its default wherever the tables have it."""
    if field not in LATE_FIELD_DEFAULTS:
        return False
    default = LATE_FIELD_DEFAULTS[field]
    return all(bool((t[field].dropna() == default).all()) for t in tables if field in t.columns)


def pairing_key(run: dict, fields: tuple[str, ...]) -> tuple:
    """The key of one run (a record of the runs table) under `pairing_fields`; samples are integers."""
    key = []
    for f in fields:
        value = run.get(f)
        if f in SAMPLE_FIELDS:
            key.append(0 if value is None or pd.isna(value) else int(value))
        else:
            key.append(identity_value(value))
    return tuple(key)


def sort_keys(keys) -> list[tuple]:
    """Pairing keys in order; unset settings (None) sort last, so that keys of mixed values still sort."""
    return sorted(keys, key=lambda k: [(v is None, v if v is not None else 0) for v in k])


def definition_differences(b: pd.DataFrame, c: pd.DataFrame) -> dict[str, Note]:
    """{column: note} for the measurement settings and the data whose values differ between the sides."""
    out = {}
    for column in (*MEASUREMENT_FIELDS, DATA_COLUMN):
        if column not in b.columns or column not in c.columns:
            continue
        vb = sorted({str(identity_value(v)) for v in b[column] if identity_value(v) not in (None, "")})
        vc = sorted({str(identity_value(v)) for v in c[column] if identity_value(v) not in (None, "")})
        if vb and vc and vb != vc:
            if column == DATA_COLUMN:
                out[column] = Note(Reason.DATA_CHECKSUM, {"baseline": vb, "current": vc})
            else:
                out[column] = Note(Reason.MEASUREMENT, {"field": column, "baseline": vb, "current": vc})
    return out
