"""The error signal e = ∂L/∂Z and the BPTT gradient it drives."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.func import grad

from .trajectory import Trajectory

__all__ = ["error_signal", "trajectory_loss", "bptt_gradient"]

Readout = Callable[[Tensor], Tensor]
Loss = Callable[[Tensor, Tensor], Tensor]


def _check(trajectory, readout, loss_fn) -> None:
    if not isinstance(trajectory, Trajectory):
        raise TypeError(f"trajectory: expected a kpflow.Trajectory, got {type(trajectory).__name__}")
    if not callable(readout):
        raise TypeError(f"readout: expected a callable mapping hidden outputs [B, T, H] to outputs, got {type(readout).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable loss_fn(outputs, targets) -> scalar, got {type(loss_fn).__name__}")


def trajectory_loss(trajectory: Trajectory, states: Tensor, readout: Readout, loss_fn: Loss, targets: Tensor) -> Tensor:
    """L(Z) = loss_fn(readout(observe(Z)), targets), checked to be a scalar."""
    loss = loss_fn(readout(trajectory.observe(states)), targets)
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn: expected a scalar loss, got {shape}; use reduction='mean' or 'sum'")
    return loss


def error_signal(trajectory: Trajectory, readout: Readout, loss_fn: Loss, targets: Tensor) -> Tensor:
    """The error signal e = ∂L/∂Z through the readout only.

    Parameters
    ----------
    trajectory : Trajectory
        The trajectory Z at which the loss is differentiated.
    readout : callable
        Maps the hidden outputs [B, T, H] (``trajectory.observe()``: the
        top-layer h, not an LSTM's cell state) to model outputs, e.g. an
        ``nn.Linear``. Its parameters are held fixed.
    loss_fn : callable
        ``loss_fn(outputs, targets) -> scalar``, e.g. ``nn.MSELoss()``.
    targets : Tensor
        Passed to ``loss_fn`` as is.

    Returns
    -------
    Tensor
        e, shape [B, T, S], on the trajectory's device and dtype.

    Notes
    -----
    With L(Z) = ℓ(readout(Z), targets), e = ∂L/∂Z treats every z_t as an
    independent variable (no propagation through the dynamics). The BPTT
    gradient is then ∇_θ L = J_θᵀ P* e, and one gradient-descent step of size
    η moves the trajectory by −η P K P* e + O(η²) (DESIGN.md §2).
    """
    _check(trajectory, readout, loss_fn)
    e = grad(lambda Z: trajectory_loss(trajectory, Z, readout, loss_fn, targets))(trajectory.states)
    return e.detach()


def bptt_gradient(trajectory: Trajectory, readout: Readout, loss_fn: Loss, targets: Tensor) -> Tensor:
    """∇_θ L by backpropagation through time, as a flat vector [p].

    Differentiates L(θ) = ℓ(readout(Z(θ)), targets) through the whole
    rollout; the reference that ``J.H @ (P.H @ e)`` must reproduce.
    """
    _check(trajectory, readout, loss_fn)

    def loss(theta):
        return trajectory_loss(trajectory, trajectory.rollout(theta), readout, loss_fn, targets)

    return trajectory.theta_to_vector(grad(loss)(trajectory.theta)).detach()
