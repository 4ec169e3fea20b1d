"""Argument checks that fail loudly: every error names the parameter, its value and the allowed range."""

import math

__all__ = ["check_positive", "check_range"]


def check_range(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    why: str = "",
) -> None:
    """Raise ``ValueError`` unless ``value`` lies in the interval described by the bounds.

    Args:
        name: Parameter name, as the user spells it.
        value: The value to check; NaN is always refused.
        low: Lower bound, or ``None`` for no bound.
        high: Upper bound, or ``None`` for no bound.
        low_inclusive: Whether ``value == low`` is allowed.
        high_inclusive: Whether ``value == high`` is allowed.
        why: Optional explanation appended to the message (where the bound comes from).
    """
    value = float(value)
    below = low is not None and (value < low if low_inclusive else value <= low)
    above = high is not None and (value > high if high_inclusive else value >= high)
    if math.isnan(value) or below or above:
        left = "-inf" if low is None else f"{low:.6g}"
        right = "inf" if high is None else f"{high:.6g}"
        interval = (
            f"{'[' if low is not None and low_inclusive else '('}{left}, "
            f"{right}{']' if high is not None and high_inclusive else ')'}"
        )
        suffix = f" ({why})" if why else ""
        raise ValueError(f"{name} must be in {interval}, got {value:.6g}{suffix}")


def check_positive(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value > 0``."""
    check_range(name, value, 0.0, None, low_inclusive=False)
