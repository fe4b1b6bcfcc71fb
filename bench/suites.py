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

Command-line options override the suite: an option given on the command line
replaces that field in every grid.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.config import CONFIG_FIELDS, RunConfig
from bench.errors import UsageError

SUITE_DIR = Path(__file__).parent / "suites"


@dataclass
class Suite:
    name: str
    description: str = ""
    defaults: dict = field(default_factory=dict)
    grids: list = field(default_factory=lambda: [{}])
    source: str = ""


def names() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def load_suite(name_or_path: str) -> Suite:
    """Loads a shipped suite by name, or a suite file by path."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = SUITE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UsageError(f"Unknown suite {name_or_path!r}. Valid suites: {', '.join(names())} (or a path to a YAML file)")
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise UsageError(f"Suite file {str(path)!r} does not exist.") from None
    except (OSError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"Cannot read suite file {str(path)!r}: {first}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"Suite file {str(path)!r} must hold a mapping with `defaults` and `grids`.")
    unknown = set(doc) - {"name", "description", "defaults", "grids"}
    if unknown:
        raise UsageError(f"Suite file {str(path)!r}: unknown key {sorted(unknown)[0]!r}; valid keys: name, description, defaults, grids")
    defaults = doc.get("defaults") or {}
    grids = doc.get("grids") or [{}]
    if not isinstance(defaults, dict) or not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise UsageError(f"Suite file {str(path)!r}: `defaults` must be a mapping and `grids` a list of mappings.")
    for where in [defaults, *grids]:
        for key in where:
            if key not in CONFIG_FIELDS:
                raise UsageError(
                    f"Suite file {str(path)!r}: unknown field {key!r}; valid fields: {', '.join(CONFIG_FIELDS)}"
                )
    return Suite(
        name=str(doc.get("name") or path.stem),
        description=str(doc.get("description") or ""),
        defaults=defaults,
        grids=grids,
        source=str(path),
    )


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
    configs, seen = [], set()
    for grid in suite.grids:
        axes = {**{k: _as_list(v) for k, v in suite.defaults.items()}, **{k: _as_list(v) for k, v in grid.items()}}
        axes.update({k: _as_list(v) for k, v in overrides.items()})
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


def _as_list(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _matches(config: RunConfig, only: dict) -> bool:
    d = config.to_dict()
    for key, allowed in only.items():
        if key not in d:
            raise UsageError(f"Unknown field {key!r} in --only; valid fields: {', '.join(CONFIG_FIELDS)}")
        if str(d[key]) not in {str(a) for a in allowed}:
            return False
    return True
