"""Argument checks shared by every public entry point. Each returns the value in the unit the caller
needs, or raises `ConfigError` naming the argument, what it got, and what to pass instead.

Example:
    >>> milliseconds_from_seconds(1.5, "ttl")
    1500
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from labkit.errors import ConfigError

MIN_MS = 1  # the finest duration a server expiry (PEXPIRE) or a lab timeout can express


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(value: Any, what: str, *, minimum: int = 1) -> int:
    """`value` as an int of at least `minimum`; floats such as 2.0 and bools are refused."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{what} must be an integer of at least {minimum}, got {value!r}.")
    return value


def seconds(value: Any, what: str, *, allow_zero: bool = False) -> float:
    """A duration in seconds: a finite number, at least 1 ms (or exactly 0 when `allow_zero`)."""
    if _is_number(value) and (value >= MIN_MS / 1000 or (allow_zero and value == 0)):
        return float(value)
    least = "0 or at least 0.001" if allow_zero else "at least 0.001 (1 ms)"
    raise ConfigError(f"{what} is a number of seconds, {least}; got {value!r}.")


def milliseconds_from_seconds(value: Any, what: str) -> int:
    """A duration given in seconds, as whole milliseconds; refuses one that is not whole milliseconds."""
    ms = seconds(value, what) * 1000
    if abs(ms - round(ms)) > 1e-6:
        raise ConfigError(f"{what} must be a whole number of milliseconds, got {value!r} s.")
    return round(ms)


def milliseconds(value: Any, what: str) -> int:
    """A duration in milliseconds: an integer of at least 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < MIN_MS:
        raise ConfigError(f"{what} is a whole number of milliseconds, at least {MIN_MS}; got {value!r}.")
    return value


def number(value: Any, what: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite number within [low, high] (either end may be open or absent)."""
    ok = _is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        raise ConfigError(f"{what} must be a number {' and '.join(filter(None, (lo, hi)))}; got {value!r}.")
    return float(value)


def name(value: Any, what: str) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string, got {value!r}.")
    return value


def prefix(value: Any, what: str = "prefix") -> str:
    """A key prefix: a non-empty string that does not end with ':' (labkit adds the separator)."""
    if not isinstance(value, str) or not value or value.endswith(":"):
        raise ConfigError(f"{what} must be a non-empty string not ending with ':', got {value!r}.")
    return value


def one_of(value: Any, what: str, options: Collection[Any]) -> Any:
    """`value` if it is one of `options`."""
    if value not in options:
        raise ConfigError(f"{what} must be one of {', '.join(map(str, options))}; got {value!r}.")
    return value
