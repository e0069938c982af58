"""The discrete-time vanilla RNN cell."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_float, check_float_dtype, check_int, check_size_match
from .initialization import GeneratorLike, as_generator, init_recurrent_, normal_
from .nonlinearities import get_nonlinearity

__all__ = ["VanillaRNN"]


class VanillaRNN(nn.Module):
    """Vanilla (Elman) RNN cell, ``h' = φ(W h + U x + b)``.

    Parameters
    ----------
    input_size : int
        Input size ``I``.
    hidden_size : int
        Hidden size ``H``.
    nonlinearity : str, default "tanh"
        φ: ``"tanh"``, ``"relu"``, ``"softplus"``, ``"sigmoid"`` or
        ``"identity"`` (a linear RNN).
    bias : bool, default True
        Learn the bias ``b`` (zero-initialised).
    gain : float, default 1.0
        Connectivity scale g of ``W`` (see Notes).
    generator : torch.Generator, int or None
        Seeds the initialisation.
    dtype, device : optional
        Of the parameters.

    Notes
    -----
    The map is

    .. math:: h_t = φ(W h_{t-1} + U x_t + b),

    with ``W = weight_hh`` ``[H, H]``, ``U = weight_ih`` ``[H, I]``,
    ``b = bias`` ``[H]``, initialised as :math:`W_{ij} \\sim g/\\sqrt{H}\\,
    N(0,1)`, :math:`U_{ij} \\sim N(0,1)/\\sqrt{I}`, :math:`b = 0`.
    ``forward(x, h)`` accepts any leading batch shape (or none) and is a pure
    out-of-place function of its inputs and parameters, so it works under
    ``torch.func.functional_call``, ``jvp``, ``vjp`` and ``vmap``.

    Examples
    --------
    >>> cell = VanillaRNN(3, 16, gain=1.5, generator=0)
    >>> cell(torch.zeros(4, 3), torch.zeros(4, 16)).shape
    torch.Size([4, 16])
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        nonlinearity: str = "tanh",
        *,
        bias: bool = True,
        gain: float = 1.0,
        generator: GeneratorLike = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.input_size = check_int(input_size, "input_size")
        self.hidden_size = check_int(hidden_size, "hidden_size")
        get_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        self.gain = check_float(gain, "gain", nonnegative=True)
        factory = {"dtype": check_float_dtype(dtype), "device": device}
        self.weight_ih = nn.Parameter(torch.empty(self.hidden_size, self.input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(self.hidden_size, self.hidden_size, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.hidden_size, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters(generator=generator)

    def reset_parameters(self, gain: float | None = None, generator: GeneratorLike = None) -> None:
        """Re-draw all parameters (``gain`` defaults to the constructor's)."""
        if gain is not None:
            self.gain = check_float(gain, "gain", nonnegative=True)
        generator = as_generator(generator)
        normal_(self.weight_ih, 1.0 / math.sqrt(self.input_size), generator)
        init_recurrent_(self, self.gain, generator)
        if self.bias is not None:
            with torch.no_grad():
                self.bias.zero_()

    def recurrent_weights(self) -> list[tuple[str, nn.Parameter]]:
        """``[("weight_hh", W)]``."""
        return [("weight_hh", self.weight_hh)]

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """One step: ``x [..., I]``, ``h [..., H]`` (zeros if None) -> ``h' [..., H]``."""
        if h is None:
            h = x.new_zeros(x.shape[:-1] + (self.hidden_size,))
        check_size_match(x, h, self.input_size, self.hidden_size, type(self).__name__)
        phi = get_nonlinearity(self.nonlinearity)
        return phi(F.linear(h, self.weight_hh) + F.linear(x, self.weight_ih, self.bias))

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"nonlinearity={self.nonlinearity!r}, bias={self.bias is not None}, gain={self.gain}")
