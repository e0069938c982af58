"""Neural ODE cells: a vector field integrated over one step by a fixed-step
Runge–Kutta method, so the recorded states are exactly the discrete map's."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_float, check_float_dtype, check_int, check_size_match
from .initialization import GeneratorLike, as_generator, init_recurrent_, normal_, recurrent_weights
from .nonlinearities import get_nonlinearity

__all__ = ["MLPVectorField", "NeuralODECell", "ODE_METHODS", "euler_step", "midpoint_step", "rk4_step"]

VectorField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def euler_step(f: VectorField, z: torch.Tensor, x: torch.Tensor, h: float) -> torch.Tensor:
    """Forward Euler: ``z + h f(z, x)``."""
    return z + h * f(z, x)


def midpoint_step(f: VectorField, z: torch.Tensor, x: torch.Tensor, h: float) -> torch.Tensor:
    """Explicit midpoint: ``z + h f(z + (h/2) f(z, x), x)``."""
    return z + h * f(z + (0.5 * h) * f(z, x), x)


def rk4_step(f: VectorField, z: torch.Tensor, x: torch.Tensor, h: float) -> torch.Tensor:
    """Classical fourth-order Runge–Kutta step."""
    k1 = f(z, x)
    k2 = f(z + (0.5 * h) * k1, x)
    k3 = f(z + (0.5 * h) * k2, x)
    k4 = f(z + h * k3, x)
    return z + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


#: method name -> one-step integrator ``step(f, z, x, h)``.
ODE_METHODS: dict[str, Callable[[VectorField, torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "euler": euler_step,
    "midpoint": midpoint_step,
    "rk4": rk4_step,
}


class MLPVectorField(nn.Module):
    """A one-hidden-layer MLP vector field with a leak.

    Parameters
    ----------
    hidden_size : int
        State size ``H``.
    input_size : int
        Input size ``I``.
    width : int, default 64
        Width ``M`` of the MLP's hidden layer.
    nonlinearity : str, default "tanh"
    leak : float, default 1.0
        Linear decay rate λ >= 0 (0 gives a plain MLP field).
    gain : float, default 1.0
        Scale g of the state-to-hidden block ``weight_z``.
    bias : bool, default True
    generator : torch.Generator, int or None
    dtype, device : optional

    Notes
    -----
    .. math:: F(z, x) = -λ z + W_{out}\\, φ(W_z z + W_x x + b) + b_{out}

    with ``W_z`` ``[M, H]``, ``W_x`` ``[M, I]``, ``W_out`` ``[H, M]``.
    Initialisation: :math:`W_z \\sim g/\\sqrt H\\,N(0,1)` (the recurrent
    block, re-drawn by :func:`~kpflow.models.init_recurrent_`),
    :math:`W_x \\sim N(0,1)/\\sqrt I`, :math:`W_{out} \\sim N(0,1)/\\sqrt M`,
    biases 0. Then :math:`W_{out} W_z` has entries of variance
    :math:`g^2/H`, the same connectivity scale as a vanilla RNN with gain g.
    """

    def __init__(
        self,
        hidden_size: int,
        input_size: int,
        width: int = 64,
        *,
        nonlinearity: str = "tanh",
        leak: float = 1.0,
        gain: float = 1.0,
        bias: bool = True,
        generator: GeneratorLike = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.hidden_size = check_int(hidden_size, "hidden_size")
        self.input_size = check_int(input_size, "input_size")
        self.width = check_int(width, "width")
        get_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        self.leak = check_float(leak, "leak", nonnegative=True)
        self.gain = check_float(gain, "gain", nonnegative=True)
        factory = {"dtype": check_float_dtype(dtype), "device": device}
        self.weight_z = nn.Parameter(torch.empty(self.width, self.hidden_size, **factory))
        self.weight_x = nn.Parameter(torch.empty(self.width, self.input_size, **factory))
        self.weight_out = nn.Parameter(torch.empty(self.hidden_size, self.width, **factory))
        if bias:
            self.bias_hidden = nn.Parameter(torch.empty(self.width, **factory))
            self.bias_out = nn.Parameter(torch.empty(self.hidden_size, **factory))
        else:
            self.register_parameter("bias_hidden", None)
            self.register_parameter("bias_out", None)
        self.reset_parameters(generator=generator)

    def reset_parameters(self, gain: float | None = None, generator: GeneratorLike = None) -> None:
        """Re-draw all parameters (``gain`` defaults to the constructor's)."""
        if gain is not None:
            self.gain = check_float(gain, "gain", nonnegative=True)
        generator = as_generator(generator)
        normal_(self.weight_x, 1.0 / math.sqrt(self.input_size), generator)
        normal_(self.weight_out, 1.0 / math.sqrt(self.width), generator)
        init_recurrent_(self, self.gain, generator)
        with torch.no_grad():
            for b in (self.bias_hidden, self.bias_out):
                if b is not None:
                    b.zero_()

    def recurrent_weights(self) -> list[tuple[str, nn.Parameter]]:
        """``[("weight_z", W_z)]``."""
        return [("weight_z", self.weight_z)]

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``dz/dt = F(z, x)`` for ``z [..., H]``, ``x [..., I]``."""
        phi = get_nonlinearity(self.nonlinearity)
        hidden = phi(F.linear(z, self.weight_z) + F.linear(x, self.weight_x, self.bias_hidden))
        out = F.linear(hidden, self.weight_out, self.bias_out)
        if self.leak != 0.0:
            out = out - self.leak * z
        return out

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, input_size={self.input_size}, width={self.width}, "
                f"nonlinearity={self.nonlinearity!r}, leak={self.leak}, gain={self.gain}")


class NeuralODECell(nn.Module):
    """One step of a neural ODE as a recurrent cell.

    Parameters
    ----------
    vector_field : torch.nn.Module
        ``F(z, x) -> dz/dt`` with ``z [..., H]``, ``x [..., I]``; pure and
        out-of-place (e.g. :class:`MLPVectorField`).
    dt : float, default 0.2
        Length of one step of the recurrence (> 0).
    method : {"euler", "midpoint", "rk4"}, default "rk4"
        Fixed-step integrator.
    n_substeps : int, default 1
        Integrator steps per recurrence step (each of size ``dt/n_substeps``).
    hidden_size, input_size : int, optional
        Required only if ``vector_field`` has no ``hidden_size`` /
        ``input_size`` attributes.

    Notes
    -----
    The input is held constant over the step (zero-order hold):
    :math:`z_t = Φ_{dt}(z_{t-1}; x_t)`, where :math:`Φ` is ``n_substeps``
    steps of size :math:`h = dt/n` of the chosen method:

    * Euler: :math:`z + h F(z, x)`;
    * midpoint: :math:`z + h F(z + \\tfrac h2 F(z, x), x)`;
    * RK4: :math:`z + \\tfrac h6 (k_1 + 2k_2 + 2k_3 + k_4)`.

    For a linear field :math:`F(z) = Az` one RK4 step is exactly
    :math:`(I + hA + (hA)^2/2 + (hA)^3/6 + (hA)^4/24) z` (midpoint and Euler
    truncate after the second and first order term). The discrete map,
    not the exact flow, is what produced the recorded states, so every
    Jacobian kpflow takes is that of the integrator — exact, not an
    approximation of the continuous-time one.

    Examples
    --------
    >>> field = MLPVectorField(16, 3, width=32, generator=0)
    >>> cell = NeuralODECell(field, dt=0.1, method="rk4", n_substeps=2)
    >>> cell(torch.zeros(4, 3), torch.zeros(4, 16)).shape
    torch.Size([4, 16])
    """

    def __init__(
        self,
        vector_field: nn.Module,
        dt: float = 0.2,
        method: str = "rk4",
        n_substeps: int = 1,
        *,
        hidden_size: int | None = None,
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(vector_field, nn.Module):
            raise TypeError(f"vector_field must be a torch.nn.Module, got {type(vector_field).__name__}")
        self.vector_field = vector_field
        self.dt = check_float(dt, "dt", positive=True)
        if method not in ODE_METHODS:
            raise ValueError(f"method must be one of {sorted(ODE_METHODS)}, got {method!r}")
        self.method = method
        self.n_substeps = check_int(n_substeps, "n_substeps")
        self.hidden_size = self._size(hidden_size, "hidden_size")
        self.input_size = self._size(input_size, "input_size")

    def _size(self, given: int | None, name: str) -> int:
        own = getattr(self.vector_field, name, None)
        if given is None:
            if own is None:
                raise ValueError(f"{name} must be given: vector_field has no {name} attribute")
            return check_int(own, f"vector_field.{name}")
        given = check_int(given, name)
        if own is not None and int(own) != given:
            raise ValueError(f"{name}={given} contradicts vector_field.{name}={own}")
        return given

    def recurrent_weights(self) -> list[tuple[str, nn.Parameter]]:
        """The vector field's recurrent weights, prefixed ``vector_field.``."""
        return [(f"vector_field.{n}", p) for n, p in recurrent_weights(self.vector_field)]

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """One recurrence step: ``x [..., I]``, ``z [..., H]`` (zeros if None) -> ``z' [..., H]``."""
        if h is None:
            h = x.new_zeros(x.shape[:-1] + (self.hidden_size,))
        check_size_match(x, h, self.input_size, self.hidden_size, type(self).__name__)
        step = ODE_METHODS[self.method]
        size = self.dt / self.n_substeps
        z = h
        for _ in range(self.n_substeps):
            z = step(self.vector_field, z, x, size)
        return z

    def extra_repr(self) -> str:
        return f"dt={self.dt}, method={self.method!r}, n_substeps={self.n_substeps}"
