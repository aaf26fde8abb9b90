"""Argument checks shared by the library: one place, one message format.

Every check raises ``ValueError`` (or ``TypeError`` for a wrong kind of object) whose message
names the argument and the allowed range, so that bad input never surfaces as an ``assert``,
a NaN or a traceback from deep inside a solver.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Literal, overload

__all__ = ["check_int", "check_real", "check_bool", "check_choice"]


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an ``int`` with ``low <= value (<= high)``; bools are refused.

    Example:
        >>> check_int("n_sample", 100, 1)
        100
    """
    if not isinstance(value, bool) and isinstance(value, Integral):
        number = int(value)
        if number >= low and (high is None or number <= high):
            return number
    rng = f">= {low}" if high is None else f"with {low} <= {name} <= {high}"
    raise ValueError(f"{name} must be an integer {rng}, got {value!r}")


@overload
def check_real(
    name: str, value: object, low: float | None = ..., *, strict: bool = ..., none_ok: Literal[False] = ...
) -> float: ...
@overload
def check_real(
    name: str, value: object, low: float | None = ..., *, strict: bool = ..., none_ok: bool
) -> float | None: ...
def check_real(
    name: str,
    value: object,
    low: float | None = None,
    *,
    strict: bool = False,
    none_ok: bool = False,
) -> float | None:
    """``value`` as a finite ``float`` with ``value >= low`` (``> low`` if ``strict``).

    ``None`` passes through when ``none_ok``.
    """
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        ok = False
    else:
        v = float(value)
        ok = low is None or (v > low if strict else v >= low)
    if ok:
        return float(value)  # type: ignore[arg-type]
    rng = "a finite float" if low is None else f"a finite float {'>' if strict else '>='} {low}"
    raise ValueError(f"{name} must be {'None or ' if none_ok else ''}{rng}, got {value!r}")


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a ``bool``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
