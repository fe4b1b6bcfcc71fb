"""Spec parsing, canonical names and errors shared by the model registries.

A spec names a registry entry and, optionally, its parameters, written the
way the entry would be called in Python::

    "relu"
    "leaky_relu(negative_slope=0.1)"
    "variance_scaling(scale=2.0, mode='fan_in')"

Names are case-insensitive and whitespace is ignored. Parameter values are
read with `ast.literal_eval`, so a spec can hold numbers, strings, booleans,
`None` and tuples but can never run code.

Every configuration has exactly one canonical name: the base name, then the
parameters that differ from their defaults, sorted by name. Result tables key
runs by these names, so two spellings of the same configuration must not
produce two names, and a canonical name must parse back to the same entry.
"""

from __future__ import annotations

import ast
import difflib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

# Re-exported: the registries' messages echo values with it.
from vgbench.bench.utils import ECHO_LIMIT, shorten

__all__ = [
    "ECHO_LIMIT",
    "UnknownNameError",
    "bind_params",
    "canonical",
    "invalid_parameter",
    "parse_spec",
    "resolve_name",
    "shorten",
    "unknown_name",
]

_SPEC = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*", re.DOTALL)
_EXAMPLE = "Expected 'name' or 'name(param=value, ...)'"


class UnknownNameError(ValueError):
    """A registry name or parameter name that does not exist.

    The message is one line that echoes the bad name, suggests the closest
    valid one when there is a close one, and lists the valid choices, so a
    command line can print it as is.

    Attributes:
        kind: What was looked up, e.g. `"activation"`.
        name: The name that was not found.
        choices: The valid names, sorted.
        suggestion: The closest valid name, or `None`.
    """

    # Keyword defaults keep the exception picklable (it is rebuilt from its
    # message alone when sent between processes).
    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        name: str | None = None,
        choices: Iterable[str] = (),
        suggestion: str | None = None,
    ):
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.choices = tuple(choices)
        self.suggestion = suggestion


def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """Splits a spec into its lowercased name and its keyword parameters.

    Args:
        text: A spec such as `"leaky_relu(negative_slope=0.1)"`.

    Returns:
        `(name, kwargs)`, e.g. `("leaky_relu", {"negative_slope": 0.1})`.
        Parameter names are lowercased too.

    Raises:
        ValueError: If `text` is not a string or not of the form
            `name` or `name(param=value, ...)` with literal values.
    """
    if not isinstance(text, str):
        raise ValueError(
            f"A spec must be a string. {_EXAMPLE}. Received: spec={shorten(repr(text))} (of type {type(text).__name__})"
        )
    match = _SPEC.fullmatch(text)
    if match is None:
        raise ValueError(f"Malformed spec. {_EXAMPLE}. Received: spec={shorten(repr(text))}")
    name, args = match.group(1).lower(), match.group(2)
    if args is None or not args.strip():
        return name, {}
    try:
        call = ast.parse(f"_({args})", mode="eval").body
    except SyntaxError:
        call = None
    # "a(x=1)(y=2)" parses too, as a call of a call; only a single call of
    # the placeholder is a spec.
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "_"):
        raise ValueError(f"Malformed spec. {_EXAMPLE}. Received: spec={shorten(repr(text))}")
    if call.args or any(kw.arg is None for kw in call.keywords):
        raise ValueError(
            "Spec parameters must be passed by keyword, e.g. "
            f"'leaky_relu(negative_slope=0.1)'. Received: spec={shorten(repr(text))}"
        )
    kwargs: dict[str, Any] = {}
    for keyword in call.keywords:
        key = keyword.arg.lower()
        if key in kwargs:
            raise ValueError(
                f"Parameter '{shorten(key)}' is given more than once. Received: spec={shorten(repr(text))}"
            )
        try:
            kwargs[key] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(
                f"The value of parameter '{shorten(key)}' must be a literal (a number, "
                f"a quoted string, True, False or None). Received: spec={shorten(repr(text))}"
            ) from None
    return name, kwargs


def canonical(name: str, kwargs: Mapping[str, Any]) -> str:
    """Writes the canonical spec of a name and its (already bound) parameters.

    Args:
        name: The base name, e.g. `"leaky_relu"`.
        kwargs: Parameters that differ from their defaults.

    Returns:
        `name` alone when `kwargs` is empty, otherwise
        `"name(a=1.0, b='x')"` with the parameters sorted by name.
    """
    if not kwargs:
        return name
    args = ", ".join(f"{key}={value!r}" for key, value in sorted(kwargs.items()))
    return f"{name}({args})"


def unknown_name(
    kind: str,
    name: str,
    choices: Iterable[str],
    aliases: Iterable[str] = (),
) -> UnknownNameError:
    """Builds the error for a name that is neither an entry nor an alias.

    Args:
        kind: What was looked up, e.g. `"activation"`.
        name: The name that was not found.
        choices: The valid canonical names; they are listed in the message.
        aliases: Other accepted spellings; they can be suggested but are not
            listed.

    Returns:
        The `UnknownNameError`, to be raised by the caller.
    """
    choices = sorted(choices)
    # A name far longer than any choice is close to none (and slow to compare).
    close = difflib.get_close_matches(name, [*choices, *aliases], n=1, cutoff=0.6) if len(name) <= 100 else []
    suggestion = close[0] if close else None
    hint = f" Did you mean '{suggestion}'?" if suggestion else ""
    return UnknownNameError(
        f"Unknown {kind} '{shorten(name)}'.{hint} Valid {kind}s: {', '.join(choices)}",
        kind=kind,
        name=name,
        choices=choices,
        suggestion=suggestion,
    )


def invalid_parameter(kind: str, base: str, param: str, valid: Iterable[str]) -> UnknownNameError:
    """Builds the error for a parameter that an entry does not take.

    Args:
        kind: What was looked up, e.g. `"activation"`.
        base: The entry, e.g. `"leaky_relu"`.
        param: The parameter that it does not take.
        valid: The parameters it does take.

    Returns:
        The `UnknownNameError`, to be raised by the caller.
    """
    valid = sorted(valid)
    listed = ", ".join(valid) if valid else "(none)"
    return UnknownNameError(
        f"Invalid parameter '{shorten(param)}' for {kind} '{base}'; valid parameters: {listed}",
        kind=kind,
        name=param,
        choices=valid,
    )


def resolve_name(
    kind: str,
    name: str,
    entries: Iterable[str],
    aliases: Mapping[str, str],
) -> str:
    """Maps a parsed (lowercased) name or alias to its canonical base name.

    Raises:
        UnknownNameError: If `name` is neither an entry nor an alias.
    """
    entries = set(entries)
    base = aliases.get(name, name)
    if base not in entries:
        raise unknown_name(kind, name, entries, aliases)
    return base


def bind_params(
    kind: str,
    base: str,
    kwargs: Mapping[str, Any],
    defaults: Mapping[str, Any],
) -> dict[str, Any]:
    """Checks parameters against an entry's defaults and normalizes them.

    A value is converted to the type of its default where that loses
    nothing (an integer where a float is expected), so `gain=2` and
    `gain=2.0` name the same configuration. Values equal to their default are
    dropped for the same reason.

    Args:
        kind: What was looked up, e.g. `"initializer"`.
        base: The canonical base name of the entry.
        kwargs: Parameters as parsed from a spec.
        defaults: Every parameter the entry takes, with its default.

    Returns:
        The parameters that differ from their defaults.

    Raises:
        UnknownNameError: If a parameter is not one of `defaults`.
        ValueError: If a value has the wrong type, or is a float that is
            not finite.
    """
    bound: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key not in defaults:
            raise invalid_parameter(kind, base, key, defaults)
        value = _coerce(kind, base, key, value, defaults[key])
        if type(value) is not type(defaults[key]) or value != defaults[key]:
            bound[key] = value
    return bound


def _coerce(kind: str, base: str, key: str, value: Any, default: Any) -> Any:
    expected = None
    coerced = value
    # bool is a subclass of int: test it first, and never accept True as 1.
    if isinstance(default, bool):
        if not isinstance(value, bool):
            expected = "True or False"
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            expected = "a number"
        elif isinstance(default, float):
            try:
                coerced = float(value)
            except OverflowError:  # an integer beyond the float range
                coerced = math.inf
            # inf and nan would make canonical names ("inf", "nan") that do
            # not parse back as literals.
            if not math.isfinite(coerced):
                expected = "a finite number"
        elif not isinstance(value, int):
            expected = "an integer"
    elif isinstance(default, str) and not isinstance(value, str):
        expected = "a quoted string"
    if expected is not None:
        raise ValueError(
            f"Parameter '{key}' of {kind} '{base}' must be {expected}. Received: {key}={shorten(repr(value))}"
        )
    return coerced
