"""The leaky continuous-time RNN, discretised with the Euler method."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_float, check_float_dtype, check_int, check_size_match
from .initialization import GeneratorLike, as_generator, init_recurrent_, normal_
from .nonlinearities import get_nonlinearity

__all__ = ["CTRNN"]


class CTRNN(nn.Module):
    """Leaky continuous-time RNN cell (one Euler step per call).

    Parameters
    ----------
    input_size, hidden_size : int
        ``I`` and ``H``.
    tau : float, default 5.0
        Time constant τ (> 0).
    dt : float, default 1.0
        Step size (> 0); α = dt/τ is the leak per step (0.2 by default, as
        in Yang et al. 2019). α > 1 overshoots and is rarely wanted.
    nonlinearity : str, default "tanh"
        φ, see :mod:`kpflow.models.nonlinearities`.
    gain : float, default 1.0
        Connectivity scale g of ``W``.
    bias : bool, default True
    noise_std : float, default 0.0
        Standard deviation σ of the frozen noise (see Notes). 0 disables it.
    noise_seed : int, default 0
        Seed of the frozen noise draw (independent of ``generator``).
    generator : torch.Generator, int or None
        Seeds ``W``, ``U`` (``b`` starts at 0).
    dtype, device : optional

    Notes
    -----
    The state is the pre-activation ``z``; the dynamics

    .. math:: τ \\dot z = -z + W φ(z) + U x + b + η

    are stepped with Euler:

    .. math:: z_t = z_{t-1} + α\\,(-z_{t-1} + W φ(z_{t-1}) + U x_t + b + η),
              \\quad α = dt/τ.

    **Frozen noise.** η is *quenched* noise: a per-unit constant
    :math:`η = σ ξ`, :math:`ξ \\sim N(0, I_H)` drawn once at construction
    from ``noise_seed`` and stored as the buffer ``noise_offset`` (not a
    parameter, so it is not part of θ and is never trained). The one-step
    map therefore stays deterministic, as the operators require; η acts like
    a fixed random bias. It is *not* temporally white process noise: for
    that, put noise in the inputs (the tasks' ``input_noise_std``), where it
    is drawn per step but frozen with the batch.

    Initialisation: :math:`W_{ij} \\sim g/\\sqrt H\\, N(0,1)`,
    :math:`U_{ij} \\sim N(0,1)/\\sqrt I`, :math:`b = 0`. A readout reads
    ``z`` (apply φ first if rates are wanted).

    Examples
    --------
    >>> cell = CTRNN(3, 32, tau=10.0, dt=1.0, gain=1.2, generator=0)
    >>> cell(torch.zeros(5, 3), torch.zeros(5, 32)).shape
    torch.Size([5, 32])
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        tau: float = 5.0,
        dt: float = 1.0,
        nonlinearity: str = "tanh",
        gain: float = 1.0,
        bias: bool = True,
        noise_std: float = 0.0,
        noise_seed: int = 0,
        generator: GeneratorLike = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.input_size = check_int(input_size, "input_size")
        self.hidden_size = check_int(hidden_size, "hidden_size")
        self.tau = check_float(tau, "tau", positive=True)
        self.dt = check_float(dt, "dt", positive=True)
        get_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        self.gain = check_float(gain, "gain", nonnegative=True)
        self.noise_std = check_float(noise_std, "noise_std", nonnegative=True)
        self.noise_seed = check_int(noise_seed, "noise_seed", minimum=0)
        factory = {"dtype": check_float_dtype(dtype), "device": device}
        self.weight_ih = nn.Parameter(torch.empty(self.hidden_size, self.input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(self.hidden_size, self.hidden_size, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.hidden_size, **factory))
        else:
            self.register_parameter("bias", None)
        if self.noise_std > 0:
            noise = torch.empty(self.hidden_size, **factory)
            normal_(noise, self.noise_std, torch.Generator().manual_seed(self.noise_seed))
            self.register_buffer("noise_offset", noise)
        else:
            self.register_buffer("noise_offset", None)
        self.reset_parameters(generator=generator)

    @property
    def alpha(self) -> float:
        """Leak per step, ``dt / tau``."""
        return self.dt / self.tau

    def reset_parameters(self, gain: float | None = None, generator: GeneratorLike = None) -> None:
        """Re-draw ``W``, ``U`` and zero ``b`` (the frozen noise is kept)."""
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
        """One Euler step: ``x [..., I]``, ``z [..., H]`` (zeros if None) -> ``z' [..., H]``."""
        if h is None:
            h = x.new_zeros(x.shape[:-1] + (self.hidden_size,))
        check_size_match(x, h, self.input_size, self.hidden_size, type(self).__name__)
        phi = get_nonlinearity(self.nonlinearity)
        drive = F.linear(phi(h), self.weight_hh) + F.linear(x, self.weight_ih, self.bias)
        if self.noise_offset is not None:
            drive = drive + self.noise_offset
        return h + self.alpha * (drive - h)

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, hidden_size={self.hidden_size}, tau={self.tau}, "
                f"dt={self.dt}, nonlinearity={self.nonlinearity!r}, gain={self.gain}, "
                f"noise_std={self.noise_std}")
