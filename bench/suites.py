"""Suites: named grids of runs, shipped as YAML files in ``bench/suites/``.

A suite file::

    name: smoke
    description: A handful of runs for tests.
    defaults:            # RunConfig fields shared by every run
      depth: 6
      max_steps: 20
    grids:               # each grid is a product over its list-valued fields
      - activation: [sigmoid, relu]
        initializer: [glorot_uniform, he_normal]
      - activation: tanh
        depth: [2, 10]
    protocol: best_lr    # optional: how statements are made (bench.protocol), kept in the manifest

Command-line options override the suite: an option given on the command line
replaces that field in every grid.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vgbench.bench import backend as backend_mod
from vgbench.bench.config import CONFIG_FIELDS, RunConfig
from vgbench.bench.errors import UsageError
from vgbench.bench.protocol import PROTOCOLS
from vgbench.models.registry import shorten

SUITE_DIR = Path(__file__).parent / "suites"

# Grids that make more runs than this are refused before a single RunConfig is
# built: expanding them alone would take minutes and gigabytes.
MAX_RUNS = 1_000_000


@dataclass
class Suite:
    """A named list of grids of runs: `defaults` shared by all, `grids` each a product of its lists."""

    name: str
    description: str = ""
    defaults: dict = field(default_factory=dict)
    grids: list = field(default_factory=lambda: [{}])
    source: str = ""
    # How statements about the suite's configurations are made (`bench.protocol.PROTOCOLS`); "" for none.
    protocol: str = ""


def names() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


class SuiteChoiceWarning(UserWarning):
    """A bare suite name that also names a file or folder in the working directory: the shipped suite is used."""


def is_path(name_or_path: str) -> bool:
    """Whether a `--suite` value is a file's path (it has a folder separator or a .yaml/.yml suffix), not a name."""
    text = str(name_or_path)
    return "/" in text or os.sep in text or Path(text).suffix.lower() in (".yaml", ".yml")


def load_suite(name_or_path: str) -> Suite:
    """Loads a shipped suite by name, or a suite file by path.

    A bare name (``ci``) is a shipped suite, whatever the working directory
    holds; a path (``./ci``, ``suites/my.yaml``, ``my.yml``) is a file. When
    a shipped name also names something in the working directory, a
    `SuiteChoiceWarning` says that the shipped suite was used.
    """
    text = str(name_or_path)
    if is_path(text):
        path = Path(text)
    else:
        path = SUITE_DIR / f"{text}.yaml"
        local = Path(text)
        if not path.is_file():
            hint = f"; for the {'folder' if local.is_dir() else 'file'} here, write ./{text}" if local.exists() else ""
            raise UsageError(
                f"Unknown suite {shorten(repr(text))}. Valid suites: {', '.join(names())} "
                f"(or a path to a YAML file){hint}"
            )
        if local.exists():
            warnings.warn(
                f"using the shipped suite {text!r}, not the {'folder' if local.is_dir() else 'file'} {text!r} in "
                f"the working directory (a path such as ./{text} names that)",
                SuiteChoiceWarning,
                stacklevel=2,
            )
    where = f"Suite file {shorten(repr(str(path)), 200)}"
    if path.is_dir():
        raise UsageError(f"{where} is a folder; expected a YAML suite file.")
    try:
        # Decoded here, not by the YAML reader, so that a file in another
        # encoding is reported as such rather than as a UnicodeDecodeError.
        text = path.read_bytes().decode("utf-8")
        doc = yaml.safe_load(text)
    except FileNotFoundError:
        raise UsageError(f"{where} does not exist.") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{where} is not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start}.") from None
    except (OSError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"Cannot read suite file {shorten(repr(str(path)), 200)}: {shorten(first, 200)}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{where} must hold a mapping with `defaults` and `grids`.")
    unknown = set(doc) - {"name", "description", "protocol", "defaults", "grids"}
    if unknown:
        raise UsageError(
            f"{where}: unknown key {shorten(repr(sorted(map(str, unknown))[0]))}; "
            "valid keys: name, description, protocol, defaults, grids"
        )
    protocol = doc.get("protocol") or ""
    if protocol and (not isinstance(protocol, str) or protocol not in PROTOCOLS):
        raise UsageError(
            f"{where}: unknown protocol {shorten(repr(protocol))}; valid protocols: {', '.join(PROTOCOLS)}"
        )
    defaults = doc.get("defaults") or {}
    # A missing `grids` is one grid of the defaults; an empty list selects
    # nothing, which is a mistake rather than a request for one default run.
    grids = doc.get("grids")
    grids = [{}] if grids is None else grids
    if not isinstance(defaults, dict) or not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise UsageError(f"{where}: `defaults` must be a mapping and `grids` a list of mappings.")
    if not grids:
        raise UsageError(f"{where}: `grids` is an empty list; give at least one grid (a mapping, may be {{}}).")
    for where_in in [defaults, *grids]:
        for key, value in where_in.items():
            if key not in CONFIG_FIELDS:
                raise UsageError(
                    f"{where}: unknown field {shorten(repr(key))}; valid fields: {', '.join(CONFIG_FIELDS)}"
                )
            if key in INVOCATION_FIELDS:
                # Keras takes its backend once per process: a suite names what is trained, an
                # invocation where (one suite, run once per backend, fills one --out with both).
                raise UsageError(
                    f"{where}: field {key!r} is chosen per invocation, not in a suite file; "
                    f"use `vgbench run --backend NAME` (or {backend_mod.ENV})."
                )
            values = value if isinstance(value, list) else [value]
            if not values:
                raise UsageError(f"{where}: field {key!r} is an empty list; give at least one value.")
            for v in values:
                # One value per run: a nested list or a mapping is no field value.
                if v is not None and not isinstance(v, (str, int, float)):
                    raise UsageError(
                        f"{where}: field {key!r} takes a value or a list of values (strings or numbers). "
                        f"Received: {key}={shorten(repr(value))}"
                    )
    return Suite(
        name=str(doc.get("name") or path.stem),
        description=str(doc.get("description") or ""),
        defaults=defaults,
        grids=grids,
        source=str(path),
        protocol=str(protocol),
    )


# Config fields that a suite file may not set: `vgbench run` gives them once for all its runs.
INVOCATION_FIELDS = ("backend",)

# The suite whose defaults an ad-hoc `vgbench run` (no --suite) and
# `vgbench diagnose` start from, so that their runs compare with the shipped report.
DEFAULT_SUITE = "default"


def default_settings() -> dict:
    """The `defaults` of the ``default`` suite: the RunConfig fields an ad-hoc run starts from.

    `RunConfig`'s own dataclass defaults stay as they are (they define the
    run_ids of stored results); the command line reads these instead.
    """
    return dict(shipped_suite(DEFAULT_SUITE).defaults)


def shipped_suite(name: str) -> Suite:
    """A shipped suite by its name (of `names`), whatever the working directory holds."""
    return load_suite(str(SUITE_DIR / f"{name}.yaml"))


def adhoc_suite() -> Suite:
    """The suite of an ad-hoc `vgbench run`: one grid over the ``default`` suite's defaults."""
    return Suite(name="custom", description="ad-hoc run", defaults=default_settings())


def expand(suite: Suite, overrides: dict | None = None, only: dict | None = None) -> list[RunConfig]:
    """The suite's RunConfigs, in a stable order, without duplicates.

    Args:
        suite: the suite.
        overrides: field → list of values (from the command line); replaces
            that field in the defaults and in every grid.
        only: field → allowed values (strings as typed); keeps matching runs.

    Raises:
        UsageError: for an invalid value, naming the field and the value.
    """
    overrides = overrides or {}
    total = grid_size(suite, overrides)
    if total > MAX_RUNS:
        raise UsageError(
            f"The grid makes {total:,} runs, more than the {MAX_RUNS:,} vgbench expands; "
            "split it into smaller suites or use fewer values per option."
        )
    configs, seen = [], set()
    for axes in _grid_axes(suite, overrides):
        keys = list(axes)
        for values in itertools.product(*(axes[k] for k in keys)):
            try:
                config = RunConfig(**dict(zip(keys, values)))
            except (ValueError, TypeError) as e:
                raise UsageError(str(e).splitlines()[0]) from None
            if config.run_id in seen:
                continue
            if only and not _matches(config, only):
                continue
            seen.add(config.run_id)
            configs.append(config)
    return configs


def grid_size(suite: Suite, overrides: dict | None = None) -> int:
    """Number of runs the grids make, counted without building them (duplicates and `only` not dropped)."""
    return sum(math.prod(len(v) for v in axes.values()) for axes in _grid_axes(suite, overrides or {}))


def _grid_axes(suite: Suite, overrides: dict) -> list[dict]:
    """Each grid's field → list of values, with the defaults and the overrides applied."""
    out = []
    for grid in suite.grids:
        axes = {**{k: _as_list(v) for k, v in suite.defaults.items()}, **{k: _as_list(v) for k, v in grid.items()}}
        axes.update({k: _as_list(v) for k, v in overrides.items()})
        out.append(axes)
    return out


def _as_list(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _matches(config: RunConfig, only: dict) -> bool:
    d = config.to_dict()
    for key, allowed in only.items():
        if key not in d:
            raise UsageError(f"Unknown field {shorten(repr(key))} in --only; valid fields: {', '.join(CONFIG_FIELDS)}")
        if str(d[key]) not in {str(a) for a in allowed}:
            return False
    return True
