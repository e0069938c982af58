"""The linear readout from hidden states to task outputs."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import check_float_dtype, check_int
from .initialization import GeneratorLike, as_generator, normal_

__all__ = ["Readout"]


class Readout(nn.Linear):
    """Linear readout ``y = C h + d`` from hidden size to output size.

    Parameters
    ----------
    hidden_size : int
        Size ``H`` of the observed hidden state. For an LSTM this is the
        size of ``h`` only: the trajectory layer passes the readout the
        observed hidden part, never the cell state ``c``.
    output_size : int
        Number of outputs ``O``.
    bias : bool, default True
    generator : torch.Generator, int or None
        Seeds the initialisation (None: torch's global RNG).
    dtype, device : optional

    Notes
    -----
    .. math:: y_t = C h_t + d, \\qquad C_{oj} \\sim N(0, 1)/\\sqrt H,\\ d = 0.

    The readout is not part of θ in kpflow's operators (DESIGN §2); it maps
    states to outputs, and the error signal e = ∂L/∂Z flows back through it.
    It is an ordinary ``nn.Linear``, so it acts on any ``[..., H]`` tensor.

    Examples
    --------
    >>> readout = Readout(16, 3, generator=0)
    >>> readout(torch.zeros(2, 30, 16)).shape
    torch.Size([2, 30, 3])
    """

    def __init__(
        self,
        hidden_size: int,
        output_size: int,
        *,
        bias: bool = True,
        generator: GeneratorLike = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        hidden_size = check_int(hidden_size, "hidden_size")
        output_size = check_int(output_size, "output_size")
        dtype = check_float_dtype(dtype)
        # meta first: nn.Linear's own init would consume the global RNG
        super().__init__(hidden_size, output_size, bias=bias, device="meta", dtype=dtype)
        self.to_empty(device=torch.empty(0).device if device is None else device)
        self.reset_parameters(generator)

    @property
    def hidden_size(self) -> int:
        """``in_features``."""
        return self.in_features

    @property
    def output_size(self) -> int:
        """``out_features``."""
        return self.out_features

    def reset_parameters(self, generator: GeneratorLike = None) -> None:
        """Draw ``C ~ N(0, 1/H)`` and zero ``d``."""
        if self.weight.is_meta:  # called by nn.Linear.__init__ before to_empty
            return
        normal_(self.weight, 1.0 / math.sqrt(self.in_features), as_generator(generator))
        if self.bias is not None:
            with torch.no_grad():
                self.bias.zero_()
