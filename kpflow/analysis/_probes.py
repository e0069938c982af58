"""Random probes for the analysis layer: seeds, generators and probe matrices.

Every randomized routine of :mod:`kpflow.analysis` draws its probes here, in
the operator's dtype and on the operator's device, from a single
:class:`torch.Generator` built from the user's ``seed``.
"""

from __future__ import annotations

import numbers
from typing import Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["SeedLike", "make_generator", "draw_probes", "basis_columns"]

#: Everything a ``seed=`` argument of the analysis layer accepts.
SeedLike = Union[None, int, np.random.Generator, torch.Generator]

DISTRIBUTIONS = ("rademacher", "gaussian")


def make_generator(seed: SeedLike, device: torch.device | str, name: str = "seed") -> torch.Generator:
    """A :class:`torch.Generator` on ``device`` from any accepted seed.

    Parameters
    ----------
    seed : None, int, numpy.random.Generator or torch.Generator
        ``None``: fresh OS entropy (not reproducible). ``int >= 0``: a new
        generator seeded with it (reproducible on a given device type; CPU
        and CUDA generators give different streams). A NumPy generator is
        advanced by one draw of a 63-bit word that seeds the torch generator,
        so it is reproducible given its state. A torch generator is used as
        is and must live on ``device``.
    device : torch.device or str
        Where the probes will be drawn (the operator's device).
    name : str
        The argument name used in error messages.
    """
    device = torch.device(device)
    if isinstance(seed, torch.Generator):
        if seed.device.type != device.type:
            raise ValueError(
                f"{name}: the torch.Generator lives on {seed.device}, but the operator is on {device}; "
                f"pass torch.Generator(device='{device}') or an int seed"
            )
        return seed
    if seed is None:
        word = int(np.random.default_rng().integers(0, 2**63 - 1))
    elif isinstance(seed, np.random.Generator):
        word = int(seed.integers(0, 2**63 - 1))
    elif isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        word = int(seed)
        if word < 0:
            raise ValueError(f"{name}: expected a non-negative int, got {seed}")
    else:
        raise TypeError(
            f"{name}: expected None, a non-negative int, a numpy.random.Generator or a "
            f"torch.Generator, got {type(seed).__name__}"
        )
    gen = torch.Generator(device=device)
    gen.manual_seed(word)
    return gen


def check_distribution(distribution: str) -> str:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution: expected one of {DISTRIBUTIONS}, got {distribution!r}")
    return distribution


def draw_probes(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator,
    distribution: str = "rademacher",
) -> Tensor:
    """Probe vectors with E[z zᵀ] = I: Rademacher (±1) or standard Gaussian entries.

    Parameters
    ----------
    shape : tuple of int
        Shape of the probe tensor, e.g. ``(n, m)`` for m probe columns.
    dtype, device
        Those of the operator the probes are for.
    generator : torch.Generator
        From :func:`make_generator`.
    distribution : {"rademacher", "gaussian"}
        Entry distribution.
    """
    check_distribution(distribution)
    if distribution == "gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    bits = torch.randint(0, 2, shape, generator=generator, device=device, dtype=torch.int8)
    return (2 * bits - 1).to(dtype)


def basis_columns(n: int, start: int, stop: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The standard basis vectors e_start … e_{stop-1} of R^n as the columns of an [n, stop − start] tensor."""
    E = torch.zeros(n, stop - start, dtype=dtype, device=device)
    E[torch.arange(start, stop, device=device), torch.arange(stop - start, device=device)] = 1
    return E
