"""The numbers behind a mark: changes on the tolerance's scale, medians, and the significance test on seeds."""

from __future__ import annotations

import math
import warnings

import numpy as np

# Seeds per side from which a difference must also be significant.
MIN_SAMPLES = 3
DEFAULT_ALPHA = 0.05


def worse_scale(kind: str, x) -> np.ndarray:
    """Values on the scale where the tolerance applies and larger is worse.

    Args:
        kind: how a change is measured (`bench.quantities.Quantity.change_kind`):
            ``"drop"`` (higher is better), ``"increase"`` (lower is better),
            ``"decades"`` (1 is best: the distance ``|log10 x|``) or
            ``"factor"`` (lower is better, compared as a ratio).
        x: the values.
    """
    x = np.asarray(x, dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "drop":
            return -x
        if kind == "increase":
            return x
        if kind == "decades":
            return np.abs(np.log10(x))
        if kind == "factor":
            return np.log(x)
    raise ValueError(f"Argument `kind` must be one of drop, increase, decades, factor. Received: kind={kind!r}")


def threshold(kind: str, tolerance: float) -> float:
    """The tolerance on the `worse_scale` of ``kind``."""
    return math.log(tolerance) if kind == "factor" else tolerance


def median(x: np.ndarray) -> float:
    """The median, NaN for no values."""
    return float(np.median(x)) if len(x) else float("nan")


def difference(tb: np.ndarray, tc: np.ndarray) -> float:
    """Median of ``tc`` minus median of ``tb``, with inf - inf counted as no change."""
    mb, mc = median(tb), median(tc)
    if mb == mc:
        return 0.0
    return mc - mb


def significance(tb: np.ndarray, tc: np.ndarray, alpha: float) -> tuple[float, str]:
    """(two-sided p-value, test name) for two samples of at least MIN_SAMPLES each.

    Mann-Whitney U, or Welch's t-test where there are too few samples for
    Mann-Whitney U to reach ``alpha``.
    """
    from scipy import stats

    n1, n2 = len(tb), len(tc)
    # Mann-Whitney U's smallest possible p-value is 2 / C(n1+n2, n1): 0.1 for
    # 3 vs 3 seeds, so it could never reject there. Welch's t-test can.
    if 2 / math.comb(n1 + n2, n1) <= alpha:
        test = "mannwhitneyu"
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(stats.mannwhitneyu(tb, tc, alternative="two-sided").pvalue)
    else:
        test = "welch"
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(stats.ttest_ind(tb, tc, equal_var=False).pvalue)
    if not math.isfinite(p):
        # Welch's test is undefined without spread (deterministic seeds): then
        # equal medians are no difference and unequal ones a certain one.
        p = 1.0 if difference(tb, tc) == 0 else 0.0
    return p, test
