"""Small helpers shared across vgbench: suggestions, slugs, one-line errors, echoed values, plain JSON values."""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ECHO_LIMIT", "closest", "finite", "first_line", "json_safe", "one_line", "plain", "shorten", "slug"]


def closest(name, choices) -> str:
    """ " Did you mean 'x'?" for the nearest of `choices`, or "" when none is near."""
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" Did you mean {match[0]!r}?" if match else ""


def slug(text: str) -> str:
    """Lowercase letters, digits and dots, other runs of characters as one underscore."""
    return re.sub(r"[^a-z0-9.]+", "_", str(text).lower()).strip("_")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when empty), at most `limit` chars."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return first or type(exc).__name__


def one_line(exc: BaseException) -> str:
    """``"Type: first line"`` of an exception, for a one-line error or a failed run's record."""
    first = first_line(exc)
    return first if first == type(exc).__name__ else f"{type(exc).__name__}: {first}"


# How much of a user-given value an error message echoes.
ECHO_LIMIT = 60


def shorten(text: Any, limit: int = ECHO_LIMIT) -> str:
    """Shortens a user-given value for echoing it in a one-line error message.

    A mistyped 100 kB name must not become a 100 kB message, yet the message
    has to show what was received: the first `limit` characters are kept and
    the length of the whole is said.

    Args:
        text: The value as it is to be echoed (usually its `repr`); other
            types are converted with `str`.
        limit: Characters kept.

    Returns:
        `text` itself when it has at most `limit` characters, otherwise
        `"<first limit chars>…(N chars)"`; line breaks are escaped so the
        message stays one line.
    """
    text = str(text)
    if len(text) > limit:
        text = f"{text[:limit]}…({len(text)} chars)"
    return text.replace("\r", "\\r").replace("\n", "\\n")


def plain(value):
    """A numpy/pandas scalar as a plain Python value; None for missing (NaN, NA, NaT)."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    return value


def json_safe(value):
    """A value made of plain JSON types: NaN/inf become None, numpy values Python ones, paths strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    value = plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        # JSON has no NaN or Infinity; null keeps a file strict.
        return None
    return value


def finite(x) -> bool:
    """Whether `x` is a finite number (False for None, NaN, inf and non-numbers)."""
    try:
        return x is not None and bool(np.isfinite(x))
    except TypeError:
        return False
