"""Argument checks that fail loudly: every error names the parameter, its value and the allowed range.

Checks on metadata (dtype, shape, ``dim``) always run. Checks on the values inside a tensor
run only where reading a value is free: on CPU, in eager mode (``checks_values``). On CUDA
they would make the host wait for the device on every call, and under ``torch.compile`` they
would break the graph; there, bad values give NaN instead of an error.
"""

import math

import torch
from torch import Tensor

__all__ = [
    "check_dim",
    "check_finite",
    "check_floating",
    "check_positive",
    "check_range",
    "check_shape",
    "check_tensor_finite",
    "check_tensor_range",
    "checks_values",
    "compute_dtype",
]


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


def check_finite(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is finite (neither NaN nor infinite)."""
    check_range(name, value, -math.inf, math.inf, low_inclusive=False, high_inclusive=False)


def check_positive(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value > 0``."""
    check_range(name, value, 0.0, None, low_inclusive=False)


def checks_values(tensor: Tensor) -> bool:
    """Whether checks on the values of ``tensor`` run: on CPU in eager mode only (see module doc)."""
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()


def check_tensor_range(
    name: str,
    tensor: Tensor,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    why: str = "",
) -> None:
    """``check_range`` for every element of ``tensor``, where ``checks_values(tensor)``.

    Reads detached values, so a tensor that requires grad is checked without a warning.
    """
    if not checks_values(tensor) or tensor.numel() == 0:
        return
    values = tensor.detach()
    # NaN propagates through min and max, so two reductions see every element.
    for value in (values.min(), values.max()):
        check_range(
            name,
            float(value),
            low,
            high,
            low_inclusive=low_inclusive,
            high_inclusive=high_inclusive,
            why=why,
        )


def check_tensor_finite(name: str, tensor: Tensor) -> None:
    """``check_finite`` for every element of ``tensor``, where ``checks_values(tensor)``."""
    check_tensor_range(name, tensor, -math.inf, math.inf, low_inclusive=False, high_inclusive=False)


def check_floating(name: str, tensor: Tensor) -> None:
    """Raise ``TypeError`` unless ``tensor`` has a real floating-point dtype.

    Integer and bool inputs would be truncated or saturated by the math, complex ones have no
    order; both are refused rather than cast, so the caller decides the precision.
    """
    if not tensor.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype ERA computes in: float32, or float64 for float64 inputs (half precision is upcast)."""
    return torch.promote_types(tensor.dtype, torch.float32)


def check_dim(name: str, dim: int, ndim: int) -> int:
    """Return ``dim`` as a non-negative index into ``ndim`` dimensions; ``ValueError`` if out of range."""
    if not -ndim <= dim < ndim:
        raise ValueError(
            f"{name} must be in [{-ndim}, {ndim - 1}] for a {ndim}-dim tensor, got {dim}"
        )
    return dim % ndim


def check_shape(name: str, shape: tuple[int, ...], expected: tuple[int, ...], why: str) -> None:
    """Raise ``ValueError`` unless ``shape == expected``; ``why`` says where ``expected`` comes from."""
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({why}), got {tuple(shape)}")
