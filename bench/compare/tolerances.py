"""The compared metrics and their tolerances: defaults from the quantity registry, overrides validated.

A compared metric is its `bench.quantities.Quantity` entry: it knows its
unit, its direction (hence how a change is measured, `Quantity.change_kind`)
and how its values, changes and tolerances are written.

How the gradient tolerances were derived (`bench.metrics`, in decades per
layer). Measured: the `ci` suite on TensorFlow 2.21 (CPU), seeds 0 to 4
(seed 0: reports/baseline; 1 to 4: `vgbench run --suite ci --seed 1,2,3,4`),
each metric's range (max - min) over the 5 seeds, on the scale a change is
measured on (``|log10 x|`` for a factor, the value itself for the
disagreement with the theory); in parentheses the standard deviation of
``log10 x`` over the seeds, for the relu + he_normal MLP:

==========================  =========  ==================  ==========  =========
metric                      relu + he  largest, ci MLPs    ci CNN      tolerance
==========================  =========  ==================  ==========  =========
backward_factor_init        0.028      0.028 (relu+he)     0.16        0.05
                            (0.011)
forward_factor_init         0.034      0.078 (relu+N(.01)) 0.24        0.1
                            (0.015)
theory_deviation_init       0.024      0.045 (relu+N(.01)) no theory   0.06
backward_factor_final       0.009      0.045 (relu+N(.01)) 0.10        0.06
grad_factor_final           0.008      0.056 (relu+N(.01)) 0.14        0.1
==========================  =========  ==================  ==========  =========

Each tolerance is at least 1.3 times the largest range among the ten-layer
MLPs. ``backward_factor_final`` was 0.1 before, ``grad_factor_final`` stays
0.1. A plausible initialization bug, ``he_normal`` built as Keras'
``LecunNormal`` (half the weight variance), moves the relu + he_normal MLP's
factors at step 0 by log10(√2) = 0.15 decades per layer and its backward
factor at the end by 0.075 decades further from 1: beyond every tolerance
above. The 4-layer, 8-filter CNN scatters more than any tolerance from seed
to seed (a factor fitted over 4 layers of 8 channels); with the same seeds
on both sides, as the ``ci`` suite has them, its numbers repeat exactly,
and with 3 seeds or more per side the significance test comes first.
"""

from __future__ import annotations

import math

from vgbench.bench.errors import UsageError
from vgbench.bench.metrics import METRICS as REGISTERED_METRICS
from vgbench.bench.quantities import Quantity
from vgbench.bench.utils import closest, first_line

# Whether a run finished ok: compared run by run, by `bench.compare.verdicts`.
STATUS = Quantity("status", "run", "status")

# Every registered metric that has a default tolerance, in the registry's order, after the status.
METRICS: dict[str, Quantity] = {
    q.name: q for q in (STATUS, *(q for q in REGISTERED_METRICS.values() if q.tolerance is not None))
}
DEFAULT_TOLERANCES = {name: m.tolerance for name, m in METRICS.items() if m.tolerance is not None}


def check_tolerances(tolerances) -> dict:
    """Defaults overridden by ``tolerances`` ({metric: number}), validated.

    Raises:
        UsageError: an unknown metric, or a tolerance that is not a positive
            number (a factor above 1 for a metric compared as a factor, i.e.
            measured in seconds).
    """
    out = dict(DEFAULT_TOLERANCES)
    for name, value in (tolerances or {}).items():
        if name not in DEFAULT_TOLERANCES:
            raise UsageError(
                f"Unknown metric {name!r} in tolerances.{closest(name, DEFAULT_TOLERANCES)} "
                f"Valid metrics: {', '.join(DEFAULT_TOLERANCES)}"
            )
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float range
            number = float("nan")
        if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
            raise UsageError(f"Tolerance of `{name}` must be a positive number. Received: {name}={value!r}")
        if METRICS[name].change_kind == "factor" and number <= 1:
            raise UsageError(f"Tolerance of `{name}` is a factor and must be above 1. Received: {name}={value!r}")
        out[name] = number
    return out


def parse_tolerances(items=(), path=None) -> dict:
    """Tolerance overrides from ``--tolerances FILE`` and ``--tolerance METRIC=VALUE``.

    The file is YAML or JSON: a mapping of metric to tolerance. Command-line
    items override the file.

    Raises:
        UsageError: an unreadable file, a malformed item or a bad tolerance.
    """
    overrides = {}
    if path is not None:
        import yaml

        try:
            with open(path) as f:
                loaded = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise UsageError(f"Cannot read tolerances file {str(path)!r}: {first_line(e)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UsageError(
                f"Tolerances file {str(path)!r} must hold a mapping of metric to tolerance. "
                f"Received: {type(loaded).__name__}"
            )
        overrides.update(loaded)
    for item in items or ():
        name, sep, value = str(item).partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UsageError(f"Argument `--tolerance` takes METRIC=VALUE. Received: {item!r}")
        overrides[name.strip()] = value.strip()
    check_tolerances(overrides)
    return {k: float(v) for k, v in overrides.items()}
