"""Seeded initialisation: recurrent weights at the connectivity scale g/√H.

All draws are made in float64 on the generator's device (the CPU unless a
CUDA generator is given) and then copied into the parameter, so a seed gives
the same weights for every dtype and device up to rounding.
"""

from __future__ import annotations

import math
from typing import Union

import torch
from torch import nn

from ._checks import check_float, check_int

__all__ = [
    "GeneratorLike",
    "as_generator",
    "normal_",
    "uniform_",
    "recurrent_weights",
    "init_recurrent_",
]

#: A ``generator=`` argument: a torch.Generator, an int seed, or None (torch's global RNG).
GeneratorLike = Union[torch.Generator, int, None]


def as_generator(generator: GeneratorLike, name: str = "generator") -> torch.Generator | None:
    """Return a torch.Generator for ``generator`` (an int seeds a new CPU one)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    seed = check_int(generator, name, minimum=0)
    return torch.Generator().manual_seed(seed)


def _draw(kind: str, shape: torch.Size, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    if kind == "normal":
        return torch.randn(shape, generator=generator, dtype=torch.float64, device=device)
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=device)


@torch.no_grad()
def normal_(tensor: torch.Tensor, std: float, generator: GeneratorLike = None) -> torch.Tensor:
    """Fill ``tensor`` in place with N(0, std²) entries from ``generator``."""
    values = _draw("normal", tensor.shape, as_generator(generator)) * std
    return tensor.copy_(values.to(device=tensor.device, dtype=tensor.dtype))


@torch.no_grad()
def uniform_(tensor: torch.Tensor, bound: float, generator: GeneratorLike = None) -> torch.Tensor:
    """Fill ``tensor`` in place with U(-bound, bound) entries from ``generator``."""
    values = (2.0 * _draw("uniform", tensor.shape, as_generator(generator)) - 1.0) * bound
    return tensor.copy_(values.to(device=tensor.device, dtype=tensor.dtype))


def recurrent_weights(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The hidden-to-hidden weight matrices of a recurrent module, by name.

    Supported: kpflow cells (anything with a ``recurrent_weights()`` method:
    :class:`~kpflow.models.VanillaRNN`, :class:`~kpflow.models.CTRNN`,
    :class:`~kpflow.models.NeuralODECell`, :class:`~kpflow.models.MLPVectorField`),
    torch's ``RNNCell``/``GRUCell``/``LSTMCell`` (``weight_hh``) and
    ``RNN``/``GRU``/``LSTM`` (every ``weight_hh_l{k}[_reverse]``).
    """
    own = getattr(module, "recurrent_weights", None)
    if callable(own):
        return list(own())
    if isinstance(module, (nn.RNNCellBase, nn.RNNBase)):
        return [(n, p) for n, p in module.named_parameters(recurse=False) if n.startswith("weight_hh")]
    raise TypeError(
        f"init_recurrent_ does not know the recurrent weights of {type(module).__name__}; "
        "supported: kpflow cells, torch RNN/GRU/LSTM cells and modules, or any module "
        "with a recurrent_weights() method returning [(name, parameter), ...]"
    )


def init_recurrent_(module: nn.Module, gain: float = 1.0, generator: GeneratorLike = None) -> nn.Module:
    """Re-initialise the recurrent weights of ``module`` in place.

    Parameters
    ----------
    module : torch.nn.Module
        A kpflow cell, a torch RNN/GRU/LSTM cell or module, or any module
        with a ``recurrent_weights()`` method (see :func:`recurrent_weights`).
    gain : float, default 1.0
        Connectivity scale g (>= 0).
    generator : torch.Generator, int or None
        Source of randomness (an int seeds a new CPU generator; None uses
        torch's global RNG).

    Returns
    -------
    torch.nn.Module
        ``module``, for chaining.

    Notes
    -----
    Every recurrent matrix :math:`W` of shape ``[G·H, n]`` (``G`` gate blocks
    of ``H`` rows; ``n`` = H except for a projected LSTM) gets

    .. math:: W_{ij} \\sim \\frac{g}{\\sqrt{n}} \\mathcal N(0, 1)

    i.i.d., so each gate block ``W[kH:(k+1)H]`` has the paper's scale g/√H.
    For a vanilla RNN with tanh, g < 1 gives decaying and g > 1 chaotic
    dynamics at large H (Sompolinsky et al. 1988). Other parameters are left
    untouched.
    """
    gain = check_float(gain, "gain", nonnegative=True)
    generator = as_generator(generator)
    for _, weight in recurrent_weights(module):
        fan_in = weight.shape[1]
        normal_(weight, gain / math.sqrt(fan_in), generator)
    return module
