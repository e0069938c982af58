"""Factories for torch's gated cells (GRU, LSTM) with seeded, gain-scaled
initialisation. They return plain ``nn.GRUCell`` / ``nn.LSTMCell`` objects,
which kpflow's trajectory layer handles natively."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import check_float_dtype, check_int
from .initialization import GeneratorLike, as_generator, init_recurrent_, uniform_

__all__ = ["GRU", "LSTM"]


def _seeded_cell(cls: type, input_size: int, hidden_size: int, bias: bool, gain: float,
                 generator: GeneratorLike, dtype: torch.dtype | None,
                 device: torch.device | str | None) -> nn.Module:
    input_size = check_int(input_size, "input_size")
    hidden_size = check_int(hidden_size, "hidden_size")
    dtype = check_float_dtype(dtype)
    if device is None:
        device = torch.empty(0).device
    # Built on the meta device so torch's own init does not consume the
    # global RNG; every parameter is then drawn from ``generator``.
    cell = cls(input_size, hidden_size, bias=bias, device="meta", dtype=dtype).to_empty(device=device)
    generator = as_generator(generator)
    bound = 1.0 / math.sqrt(hidden_size)
    for name, param in cell.named_parameters():
        if not name.startswith("weight_hh"):
            uniform_(param, bound, generator)
    init_recurrent_(cell, gain, generator)
    return cell


def GRU(
    input_size: int,
    hidden_size: int,
    *,
    bias: bool = True,
    gain: float = 1.0,
    generator: GeneratorLike = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> nn.GRUCell:
    """A ``torch.nn.GRUCell`` with seeded initialisation.

    Parameters
    ----------
    input_size, hidden_size : int
        ``I`` and ``H``.
    bias : bool, default True
    gain : float, default 1.0
        Scale g of the recurrent weights (see Notes).
    generator : torch.Generator, int or None
        Seeds every parameter (None: torch's global RNG).
    dtype, device : optional

    Returns
    -------
    torch.nn.GRUCell

    Notes
    -----
    ``weight_hh`` ``[3H, H]`` (reset, update, new gate blocks) has i.i.d.
    :math:`g/\\sqrt{H}\\,N(0, 1)` entries; ``weight_ih`` and the biases keep
    torch's default law :math:`U(-1/\\sqrt H, 1/\\sqrt H)`, drawn from
    ``generator``. The state is ``h`` (S = H).
    """
    return _seeded_cell(nn.GRUCell, input_size, hidden_size, bias, gain, generator, dtype, device)


def LSTM(
    input_size: int,
    hidden_size: int,
    *,
    bias: bool = True,
    gain: float = 1.0,
    generator: GeneratorLike = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> nn.LSTMCell:
    """A ``torch.nn.LSTMCell`` with seeded initialisation.

    Parameters are those of :func:`GRU`.

    Returns
    -------
    torch.nn.LSTMCell

    Notes
    -----
    ``weight_hh`` ``[4H, H]`` (input, forget, cell, output gate blocks) has
    i.i.d. :math:`g/\\sqrt{H}\\,N(0, 1)` entries; other parameters follow
    torch's default :math:`U(-1/\\sqrt H, 1/\\sqrt H)`, drawn from
    ``generator``. The state is ``(h, c)`` (S = 2H in kpflow's flattening);
    a :class:`~kpflow.models.Readout` acts on ``h`` only.
    """
    return _seeded_cell(nn.LSTMCell, input_size, hidden_size, bias, gain, generator, dtype, device)
