"""The parameter Jacobian J_θ and the parameter operator K = J_θ J_θᵀ."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.func import jvp, vjp

from .linearization import CellLinearization, linearize, supports
from .operator import DEFAULT_CHUNK_SIZE, KPOperator
from .trajectory import Trajectory

__all__ = ["ParameterJacobian", "ParameterOperator"]

Normalization = Literal["sum", "mean"]


def _check_trajectory(trajectory) -> Trajectory:
    if not isinstance(trajectory, Trajectory):
        raise TypeError(f"trajectory: expected a kpflow.Trajectory, got {type(trajectory).__name__}")
    return trajectory


def cell_linearization(trajectory: Trajectory) -> CellLinearization | None:
    """The hand-derived linearization of a built-in cell at every (b, t), or None.

    Shared by every operator of the trajectory (cached on it). None for user
    cells, or when ``trajectory._cell_linearization`` is set to False (then the
    operators use ``torch.func.jvp``/``vjp`` of the step, the reference path).
    """
    if not getattr(trajectory, "_cell_linearization", True) or not supports(trajectory.model):
        return None
    return trajectory.cached(
        "cell_linearization",
        lambda: linearize(trajectory.model, trajectory.parameters(), trajectory.inputs, trajectory.previous_states),
    )


def by_columns(fn, V: Tensor, chunk_size: int | None, single=None) -> Tensor:
    """``fn`` applied to V [n, k] in blocks of at most ``chunk_size`` columns.

    With blocks of one column and a one-vector kernel ``single`` ([n] -> [m]),
    the columns go through ``single`` (the plain matvec path, cheaper than a
    one-column block), made contiguous first.
    """
    k = V.shape[1]
    if chunk_size == 1 and single is not None:
        # Contiguous columns in (strided ones slow every elementwise kernel);
        # each result copied into row i of a [k, m] buffer at once, so its
        # temporaries are reused by the next column, and the buffer returned
        # as its transposed view (a column-major [m, k], no transposing copy).
        rows = V.T.contiguous()
        first = single(rows[0])
        out = first.new_empty((k, first.shape[0]))
        out[0] = first
        del first
        for i in range(1, k):
            out[i] = single(rows[i])
        return out.T
    if chunk_size is None or k <= chunk_size:
        return fn(V)
    return torch.cat([fn(V[:, i : i + chunk_size]) for i in range(0, k, chunk_size)], dim=1)


#: Bytes one column of the largest all-rows intermediate (the gate
#: pre-activations [B, T, G]) may take in a batched parameter-side product
#: before the columns are processed in smaller blocks. Batching k columns
#: there costs k× the GEMM flops of one column either way (no work is shared
#: between columns); what matters is that the intermediates stay in cache.
BLOCK_BYTES = 2 * 2**20


def parameter_block(trajectory: Trajectory, chunk_size: int | None) -> int | None:
    """Columns per block for the all-rows (parameter-side) products, see :data:`BLOCK_BYTES`."""
    B, T, S = trajectory.shape
    lin = cell_linearization(trajectory)
    width = max([S] + [lay.w_hh.shape[0] for lay in lin.layers]) if lin is not None else 4 * S  # gate width
    per_column = B * T * width * trajectory.inputs.element_size()
    auto = max(1, BLOCK_BYTES // max(1, per_column))
    return auto if chunk_size is None else min(auto, chunk_size)


def _scale(trajectory: Trajectory, normalization: str) -> float:
    if normalization == "sum":
        return 1.0
    if normalization == "mean":
        return 1.0 / (trajectory.batch_size * trajectory.num_steps)
    raise ValueError(f"normalization: expected 'sum' or 'mean', got {normalization!r}")


class ParameterJacobian(KPOperator):
    """J_θ, the partial derivative of the one-step map with respect to θ.

    Parameters
    ----------
    trajectory : Trajectory
        The linearization point.
    chunk_size : int, optional
        Columns per vmapped call in ``matmat``.

    Notes
    -----
    Shape (N, p), N = B·T·S. For a parameter direction v,
    (J_θ v)_{b,t} = B_t v with B_t = ∂f/∂θ (z_{t-1}, x_t; θ): the state is held
    fixed, so every (b, t) is independent and one batched ``jvp`` of the step
    over all B·T rows computes the whole product. Jᵀ q = Σ_{b,t} B_tᵀ q_{b,t}
    is one batched ``vjp``, whose pullback is built once per trajectory and
    reused by every product.
    """

    def __init__(self, trajectory: Trajectory, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> None:
        self.trajectory = _check_trajectory(trajectory)
        if trajectory.num_params == 0:
            raise ValueError("trajectory: the model has no parameters in θ (none require grad or params=[])")
        super().__init__((trajectory.size, trajectory.num_params), trajectory.dtype, trajectory.device, chunk_size)
        # Built here, outside any vmap, so that vmapped products can reuse it.
        self._lin = cell_linearization(trajectory)
        if self._lin is None:
            self._pullback()

    def _pullback(self):
        traj = self.trajectory
        return traj.cached("theta_vjp", lambda: vjp(traj.step_all, traj.theta)[1])

    def _mv(self, v: Tensor) -> Tensor:
        traj = self.trajectory
        if self._lin is not None:
            return self._lin.tangent(None, traj.vector_to_theta(v)).reshape(-1)
        _, out = jvp(traj.step_all, (traj.theta,), (traj.vector_to_theta(v),))
        return out.reshape(-1)

    def _rmv(self, q: Tensor) -> Tensor:
        traj = self.trajectory
        if self._lin is not None:
            grads = self._lin.param_cotangent(q.reshape(traj.shape), traj.theta)
            return torch.cat([grads[n].reshape(-1) for n in traj.theta])
        (grads,) = self._pullback()(q.reshape(traj.shape))
        return traj.theta_to_vector(grads)

    # Batched products with the cell linearization: the k columns ride along
    # in every GEMM ([rows, I] @ [I, k·G] and [k·G, rows] @ [rows, I]) instead
    # of going through vmap. Both take and return 2-D [n, k] tensors.
    def _mm_cols(self, V: Tensor) -> Tensor:
        traj = self.trajectory
        k = V.shape[1]
        dtheta, i = {}, 0
        for n, ref in traj.theta.items():
            dtheta[n] = V[i : i + ref.numel()].T.reshape(k, *ref.shape)
            i += ref.numel()
        out = self._lin.tangent(None, dtheta, cols=True)  # [B, T, k, S]
        return out.transpose(-1, -2).reshape(traj.size, k)

    def _rmm_cols(self, Q: Tensor) -> Tensor:
        traj = self.trajectory
        k = Q.shape[1]
        lam = Q.reshape(*traj.shape, k).transpose(-1, -2).contiguous()  # [B, T, k, S]
        grads = self._lin.param_cotangent(lam, traj.theta, cols=True)
        return torch.cat([grads[n].reshape(k, -1) for n in traj.theta], dim=1).T

    def _mm(self, V: Tensor) -> Tensor:
        if self._lin is None:
            return super()._mm(V)
        return by_columns(self._mm_cols, V, parameter_block(self.trajectory, self.chunk_size), self._mv)

    def _rmm(self, Q: Tensor) -> Tensor:
        if self._lin is None:
            return super()._rmm(Q)
        return by_columns(self._rmm_cols, Q, parameter_block(self.trajectory, self.chunk_size), self._rmv)


class ParameterOperator(KPOperator):
    """K = J_θ J_θᵀ, the parameter operator (an NTK of the one-step map).

    Parameters
    ----------
    trajectory : Trajectory
        The linearization point.
    normalization : {"sum", "mean"}
        "sum" (default) is the Euclidean inner product of trajectory space;
        "mean" divides by B·T, the paper's averaged inner product.
    chunk_size : int, optional
        Columns per vmapped call in ``matmat``.

    Notes
    -----
    Shape (N, N), symmetric positive semi-definite, rank ≤ p.
    K_{(b,t),(b',t')} = B_t B_{t'}ᵀ couples every pair of steps and trials
    through the shared parameters. One product costs one batched vjp (the
    pullback is cached) and one batched jvp, both parallel over time.
    """

    def __init__(
        self,
        trajectory: Trajectory,
        normalization: Normalization = "sum",
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.jacobian = ParameterJacobian(trajectory, chunk_size)
        self.trajectory = trajectory
        self.normalization = normalization
        self.scale = _scale(trajectory, normalization)
        n = trajectory.size
        super().__init__((n, n), trajectory.dtype, trajectory.device, chunk_size)

    def _mv(self, q: Tensor) -> Tensor:
        out = self.jacobian._mv(self.jacobian._rmv(q))
        return out if self.scale == 1.0 else self.scale * out

    _rmv = _mv

    def _mm(self, Q: Tensor) -> Tensor:
        J = self.jacobian
        if J._lin is None:
            return super()._mm(Q)
        out = by_columns(
            lambda C: J._mm_cols(J._rmm_cols(C)), Q, parameter_block(self.trajectory, self.chunk_size),
            lambda q: J._mv(J._rmv(q)),
        )
        return out if self.scale == 1.0 else self.scale * out

    _rmm = _mm

    def _adjoint(self) -> "ParameterOperator":
        return self
