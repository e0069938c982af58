"""Pointwise nonlinearities φ available to kpflow's cells, by name."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["NONLINEARITIES", "get_nonlinearity"]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


#: name -> pointwise function. ``"identity"``/``"linear"`` give linear models.
NONLINEARITIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "softplus": F.softplus,
    "sigmoid": torch.sigmoid,
    "identity": _identity,
    "linear": _identity,
}


def get_nonlinearity(name: str, argument: str = "nonlinearity") -> Callable[[torch.Tensor], torch.Tensor]:
    """Look up a nonlinearity by name, or raise naming the valid choices."""
    if not isinstance(name, str) or name not in NONLINEARITIES:
        raise ValueError(f"{argument} must be one of {sorted(NONLINEARITIES)}, got {name!r}")
    return NONLINEARITIES[name]
