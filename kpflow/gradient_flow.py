"""The gradient-flow operator P K P*, the hidden-state NTK."""

from __future__ import annotations

from torch import Tensor

from .operator import DEFAULT_CHUNK_SIZE, KPOperator
from .parameter import Normalization, ParameterJacobian, _scale, by_columns, parameter_block
from .propagation import DEFAULT_MEMORY_BUDGET, PropagationOperator, Strategy
from .trajectory import Trajectory

__all__ = ["GradientFlowOperator"]


class GradientFlowOperator(KPOperator):
    """P K P*, the operator that moves the trajectory under gradient flow.

    Parameters
    ----------
    trajectory : Trajectory
        The linearization point.
    normalization : {"sum", "mean"}
        As for :class:`~kpflow.ParameterOperator`: "mean" divides K by B·T.
    jacobians : {"matrix_free", "materialize", "auto"}
        Strategy of the propagator, see :class:`~kpflow.PropagationOperator`.
    chunk_size : int, optional
        Columns per vmapped call in ``matmat``.
    memory_budget : int
        Bytes the "auto" strategy may spend on dense state Jacobians.

    Attributes
    ----------
    propagation : PropagationOperator
        P.
    jacobian : ParameterJacobian
        J_θ.

    Notes
    -----
    Under gradient flow dθ/dτ = −∇_θ L = −J_θᵀ P* e, the trajectory moves as
    dZ/dτ = (dZ/dθ) dθ/dτ = −P J_θ J_θᵀ P* e = −P K P* e, where e = ∂L/∂Z is
    the error signal. Since dZ/dθ = P J_θ, P K P* = (dZ/dθ)(dZ/dθ)ᵀ is the
    NTK of the hidden states: symmetric positive semi-definite, rank ≤ p.
    One product is a backward scan, a batched vjp, a batched jvp and a
    forward scan.
    """

    def __init__(
        self,
        trajectory: Trajectory,
        normalization: Normalization = "sum",
        jacobians: Strategy = "matrix_free",
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        self.jacobian = ParameterJacobian(trajectory, chunk_size)
        self.propagation = PropagationOperator(trajectory, jacobians, chunk_size, memory_budget)
        self.trajectory = trajectory
        self.normalization = normalization
        self.scale = _scale(trajectory, normalization)
        n = trajectory.size
        super().__init__((n, n), trajectory.dtype, trajectory.device, chunk_size)

    def _mv(self, q: Tensor) -> Tensor:
        P, J = self.propagation, self.jacobian
        out = P._mv(J._mv(J._rmv(P._rmv(q))))
        return out if self.scale == 1.0 else self.scale * out

    _rmv = _mv

    def _mm(self, Q: Tensor) -> Tensor:
        P, J = self.propagation, self.jacobian
        if J._lin is None or not P._fast:
            return super()._mm(Q)
        # The scans batch all columns of a chunk (they pay per step), the
        # all-rows J Jᵀ part runs in cache-sized blocks.
        block = parameter_block(self.trajectory, self.chunk_size)

        def chunk(C):
            X = P._rmm_cols(C)
            X = by_columns(lambda D: J._mm_cols(J._rmm_cols(D)), X, block, lambda q: J._mv(J._rmv(q)))
            return P._mm_cols(X)

        out = by_columns(chunk, Q, self.chunk_size)
        return out if self.scale == 1.0 else self.scale * out

    _rmm = _mm

    def _adjoint(self) -> "GradientFlowOperator":
        return self
