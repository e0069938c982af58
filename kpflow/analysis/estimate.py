"""The result of a randomized estimator: a value with its standard error."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Estimate"]


@dataclass(frozen=True)
class Estimate:
    """A scalar estimate with its standard error and its cost.

    Attributes
    ----------
    value : float
        The estimate.
    std_error : float
        Its standard error: 0 when the value is exact (budget ≥ dimension),
        NaN when it cannot be estimated (a single probe).
    num_matvecs : int
        Products of one column with the operator (see each function for what
        is counted).
    method : str
        The estimator actually used ("exact", "hutchinson", "hutch++", …).
    num_probes : int
        Random probes behind the standard error (0 when exact).
    samples : numpy.ndarray or None
        The per-probe samples whose mean gave the value, when meaningful.

    Notes
    -----
    For a mean of m independent samples s_i, std_error = sd(s)/√m with the
    ddof = 1 standard deviation; for ratios of means (effective rank,
    alignment) it is the delta-method SE, √(gᵀ Σ g / m), g the gradient of
    the ratio and Σ the sample covariance of the moments.
    """

    value: float
    std_error: float
    num_matvecs: int
    method: str
    num_probes: int = 0
    samples: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Plain Python numbers, whatever NumPy scalar type the estimator produced.
        object.__setattr__(self, "value", float(self.value))
        object.__setattr__(self, "std_error", float(self.std_error))
        object.__setattr__(self, "num_matvecs", int(self.num_matvecs))

    @property
    def exact(self) -> bool:
        """Whether the value is exact (up to rounding)."""
        return self.method.startswith("exact")

    def interval(self, z: float = 2.0) -> tuple[float, float]:
        """value ± z · std_error."""
        return (self.value - z * self.std_error, self.value + z * self.std_error)

    def __float__(self) -> float:
        return float(self.value)

    def __format__(self, spec: str) -> str:
        if self.exact or not math.isfinite(self.std_error):
            return format(self.value, spec)
        return f"{format(self.value, spec)} ± {format(self.std_error, spec)}"


def mean_and_se(samples: np.ndarray) -> tuple[float, float]:
    """Sample mean and its standard error sd/√m (ddof = 1); NaN SE for m < 2."""
    samples = np.asarray(samples, dtype=np.float64)
    m = len(samples)
    if m == 0:
        return 0.0, 0.0
    mean = float(samples.mean())
    if m < 2:
        return mean, math.nan
    return mean, float(samples.std(ddof=1) / math.sqrt(m))


def delta_se(gradient: np.ndarray, samples: np.ndarray) -> float:
    """Delta-method standard error of f(mean of samples).

    ``samples`` is [m, d] (m probes, d moments), ``gradient`` the gradient of
    f at the means; SE² = gᵀ Cov g / m with the sample covariance (ddof = 1).
    """
    samples = np.asarray(samples, dtype=np.float64)
    m = samples.shape[0]
    if m == 0:
        return 0.0
    if m < 2:
        return math.nan
    cov = np.atleast_2d(np.cov(samples, rowvar=False, ddof=1))
    g = np.asarray(gradient, dtype=np.float64)
    var = float(g @ cov @ g) / m
    return math.sqrt(max(var, 0.0))
