"""Argument checks shared by the model modules (private)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

__all__ = ["check_int", "check_float", "check_float_dtype", "check_size_match"]


def check_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` as an int ``>= minimum`` or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} (type {type(value).__name__})")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def check_float(value: Any, name: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    """Return ``value`` as a finite float (optionally > 0 or >= 0) or raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_float_dtype(dtype: Any, name: str = "dtype") -> torch.dtype | None:
    """Accept None or a floating torch dtype."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating torch.dtype (e.g. torch.float64), got {dtype!r}")
    return dtype


def check_size_match(x: torch.Tensor, h: torch.Tensor, input_size: int, hidden_size: int,
                     owner: str) -> None:
    """Shape checks of a cell call ``cell(x [..., I], h [..., H])``.

    Only shapes are inspected (never values), so the check is safe under
    ``torch.func`` transforms.
    """
    if x.shape[-1:] != (input_size,):
        raise ValueError(f"{owner}: x must have shape [..., input_size={input_size}], got {tuple(x.shape)}")
    if h.shape[-1:] != (hidden_size,):
        raise ValueError(f"{owner}: h must have shape [..., hidden_size={hidden_size}], got {tuple(h.shape)}")
    if x.shape[:-1] != h.shape[:-1]:
        raise ValueError(
            f"{owner}: x and h must share leading (batch) dims, got x {tuple(x.shape)} and h {tuple(h.shape)}"
        )
