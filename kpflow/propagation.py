"""The propagator P of the linearized flow, its adjoint P* and its inverse P⁻¹."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

from .operator import DEFAULT_CHUNK_SIZE, KPOperator
from .parameter import _check_trajectory, by_columns, cell_linearization, parameter_block
from .trajectory import Trajectory

__all__ = ["PropagationOperator", "InversePropagationOperator", "state_jacobians"]

Strategy = Literal["matrix_free", "materialize", "auto"]

#: Memory the "auto" strategy may spend on dense Jacobians [B, T, S, S].
DEFAULT_MEMORY_BUDGET = 256 * 2**20


def state_jacobians(trajectory: Trajectory, chunk_size: int | None = None) -> Tensor:
    """The dense state Jacobians A_t = ∂f/∂z at every (b, t), shape [B, T, S, S].

    Notes
    -----
    Built in one vectorized pass. For torch's built-in cells, from the cached
    cell linearization (:mod:`kpflow.linearization`): the basis directions
    e_j are pushed through the tangent map by broadcasting, in chunks of
    columns. For user cells: S batched jvps over all B·T rows at once (one per
    basis direction e_j, vmapped), each giving column j of every A_t.
    Memory B·T·S² — use only when that fits.
    """
    traj = trajectory
    B, T, S = traj.shape
    lin = cell_linearization(traj)
    if lin is not None:
        return lin.dense_state_jacobians((B, T), S).transpose(0, 1)  # stored time-major
    prev = traj.previous_states

    def column(e: Tensor) -> Tensor:
        return jvp(lambda z: traj.step_all(previous=z), (prev,), (e.expand(B, T, S),))[1]

    eye = torch.eye(S, dtype=traj.dtype, device=traj.device)
    cols = vmap(column, chunk_size=chunk_size)(eye)  # [S(j), B, T, S(i)]
    return cols.permute(1, 2, 3, 0).contiguous()


def _choose(trajectory: Trajectory, jacobians: str, memory_budget: int) -> str:
    if jacobians in ("matrix_free", "materialize"):
        return jacobians
    if jacobians == "auto":
        B, T, S = trajectory.shape
        need = B * T * S * S * trajectory.inputs.element_size()
        return "materialize" if need <= memory_budget else "matrix_free"
    raise ValueError(f"jacobians: expected 'matrix_free', 'materialize' or 'auto', got {jacobians!r}")


class _PropagatorBase(KPOperator):
    """Shared linearization of P, P* and P⁻¹ (all N × N)."""

    def __init__(
        self,
        trajectory: Trajectory,
        jacobians: Strategy = "matrix_free",
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        self.trajectory = _check_trajectory(trajectory)
        self.strategy = _choose(trajectory, jacobians, memory_budget)
        self.memory_budget = memory_budget
        n = trajectory.size
        super().__init__((n, n), trajectory.dtype, trajectory.device, chunk_size)
        self._steps = None
        if self.strategy == "materialize":
            self.jacobians: Tensor | None = trajectory.cached("state_jacobians", lambda: state_jacobians(trajectory))
            # Time-major storage [T, B, S, S]: A_t is one contiguous block (a
            # view, no copy, when the Jacobians were built time-major).
            self._dense = self.jacobians.transpose(0, 1).contiguous()
        else:
            self.jacobians = None
            lin = cell_linearization(trajectory)
            if lin is not None:
                self._lin = lin
                self._steps = lin.steps(trajectory.num_steps)

    def _options(self) -> dict:
        return dict(jacobians=self.strategy, chunk_size=self.chunk_size, memory_budget=self.memory_budget)

    # A_t d for all trials at one step t (0-based: A at index t maps the state
    # before step t, previous_states[:, t], to states[:, t]).
    # With cols=True (the batched paths below), d carries k columns after
    # the batch dimension: [B, k, S] per step, [B, T, k, S] for all steps.
    @property
    def _fast(self) -> bool:
        return self.jacobians is not None or self._steps is not None

    def _A(self, t: int, d: Tensor, cols: bool = False) -> Tensor:
        if self.jacobians is not None:
            if cols:  # d [B, k, S]
                return torch.bmm(d, self._dense[t].transpose(-1, -2))
            # (dᵀ A_tᵀ)ᵀ: a row-vector bmm is far faster than a batched GEMV on CPU
            return torch.bmm(d.unsqueeze(-2), self._dense[t].transpose(-1, -2)).squeeze(-2)
        if self._steps is not None:
            return self._steps[t].state_tangent(d, cols)
        traj = self.trajectory
        x_t, z_prev = traj.inputs[:, t], traj.previous_states[:, t]
        return jvp(lambda z: traj.step(traj.theta, x_t, z), (z_prev,), (d,))[1]

    def _AT(self, t: int, lam: Tensor, cols: bool = False) -> Tensor:
        if self.jacobians is not None:
            if cols:
                return torch.bmm(lam, self._dense[t])
            return torch.bmm(lam.unsqueeze(-2), self._dense[t]).squeeze(-2)
        if self._steps is not None:
            return self._steps[t].state_cotangent(lam, cols)
        traj = self.trajectory
        x_t, z_prev = traj.inputs[:, t], traj.previous_states[:, t]
        return vjp(lambda z: traj.step(traj.theta, x_t, z), z_prev)[1](lam)[0]

    # A_t d_t at every (b, t) at once, with d [B, T, S].
    def _A_all(self, d: Tensor, cols: bool = False) -> Tensor:
        if self.jacobians is not None:
            return self._dense_all(d, cols, adjoint=False)
        if self._steps is not None:
            return self._lin.state_tangent(d, cols)
        traj = self.trajectory
        return jvp(lambda z: traj.step_all(previous=z), (traj.previous_states,), (d,))[1]

    def _dense_all(self, d: Tensor, cols: bool, adjoint: bool) -> Tensor:
        """A_t d_t (or A_tᵀ d_t) at every (b, t) with the time-major dense Jacobians."""
        T, B, S, _ = self._dense.shape
        A = self._dense.reshape(T * B, S, S)
        if adjoint:
            A = A.transpose(-1, -2)
        x = d.transpose(0, 1)  # [T, B, (k,) S]
        k = x.shape[-2] if cols else 1
        y = torch.bmm(x.reshape(T * B, k, S), A.transpose(-1, -2))
        y = y.reshape(T, B, k, S) if cols else y.reshape(T, B, S)
        return y.transpose(0, 1)

    def _state_pullback(self):
        traj = self.trajectory
        return traj.cached(
            "state_vjp", lambda: vjp(lambda z: traj.step_all(previous=z), traj.previous_states)[1]
        )

    def _AT_all(self, lam: Tensor, cols: bool = False) -> Tensor:
        if self.jacobians is not None:
            return self._dense_all(lam, cols, adjoint=True)
        if self._steps is not None:
            return self._lin.state_cotangent(lam, cols)
        return self._state_pullback()(lam)[0]

    # Flat [N] vectors, or [N, k] blocks when cols=True (then the work
    # happens on [B, T, k, S], the k columns riding along in every GEMM).
    def _unflat(self, q: Tensor, cols: bool) -> Tensor:
        if not cols:
            return q.reshape(self.trajectory.shape)
        return q.reshape(*self.trajectory.shape, q.shape[1]).transpose(-1, -2)

    def _flat(self, y: Tensor, cols: bool) -> Tensor:
        if not cols:
            return y.reshape(-1)
        return y.transpose(-1, -2).reshape(self.trajectory.size, y.shape[-2])

    def _forward_scan(self, q: Tensor, cols: bool = False) -> Tensor:
        q = self._unflat(q, cols)
        d = q[:, 0]
        out = [d]
        if self._steps is not None and self.jacobians is None:
            # The hot loop of the cell linearization: A_t d is a fresh tensor,
            # q_t is added in place.
            steps = self._steps
            for t in range(1, q.shape[1]):
                d = steps[t].state_tangent(d, cols).add_(q[:, t])
                out.append(d)
        else:
            for t in range(1, q.shape[1]):
                d = self._A(t, d, cols) + q[:, t]
                out.append(d)
        return self._flat(torch.stack(out, dim=1), cols)

    def _backward_scan(self, q: Tensor, cols: bool = False) -> Tensor:
        q = self._unflat(q, cols)
        T = q.shape[1]
        lam = q[:, T - 1]
        out = [lam]
        if self._steps is not None and self.jacobians is None:
            steps = self._steps
            for t in range(T - 2, -1, -1):
                lam = steps[t + 1].state_cotangent(lam, cols).add_(q[:, t])
                out.append(lam)
        else:
            for t in range(T - 2, -1, -1):
                lam = q[:, t] + self._AT(t + 1, lam, cols)
                out.append(lam)
        return self._flat(torch.stack(out[::-1], dim=1), cols)

    def _difference(self, q: Tensor, cols: bool = False) -> Tensor:
        # (P⁻¹ q)_t = q_t − A_t q_{t-1}, q_{-1} = 0: parallel over time.
        q = self._unflat(q, cols)
        shifted = torch.cat([torch.zeros_like(q[:, :1]), q[:, :-1]], dim=1)
        return self._flat(q - self._A_all(shifted, cols), cols)

    def _difference_adjoint(self, lam: Tensor, cols: bool = False) -> Tensor:
        # (P⁻ᵀ λ)_t = λ_t − A_{t+1}ᵀ λ_{t+1}, λ_T = 0.
        lam = self._unflat(lam, cols)
        if cols:
            lam = lam.contiguous()
        back = self._AT_all(lam, cols)  # back[:, s] = A_sᵀ λ_s; A_0 acts on the fixed z_0
        return self._flat(lam - torch.cat([back[:, 1:], torch.zeros_like(back[:, :1])], dim=1), cols)

    def _mm_cols(self, V: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _rmm_cols(self, V: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _mm(self, V: Tensor) -> Tensor:
        if not self._fast:
            return super()._mm(V)
        return by_columns(self._mm_cols, V, self.chunk_size)

    def _rmm(self, V: Tensor) -> Tensor:
        if not self._fast:
            return super()._rmm(V)
        return by_columns(self._rmm_cols, V, self.chunk_size)


class PropagationOperator(_PropagatorBase):
    """P, the propagator of the linearized flow along the trajectory.

    Parameters
    ----------
    trajectory : Trajectory
        The linearization point.
    jacobians : {"matrix_free", "materialize", "auto"}
        "matrix_free" (default) applies every A_t with a jvp/vjp of the step,
        storing nothing beyond the trajectory. "materialize" builds all
        A_t [B, T, S, S] once (one vectorized pass, see
        :func:`state_jacobians`) and then applies them with batched matrix
        products: faster when many products follow. "auto" materializes when
        the Jacobians fit in ``memory_budget`` bytes.
    chunk_size : int, optional
        Columns per vmapped call in ``matmat``.
    memory_budget : int
        Bytes the "auto" strategy may spend on dense Jacobians.

    Notes
    -----
    P q solves the forward scan δz_t = A_t δz_{t-1} + q_t, δz_0 = 0, so P is
    block lower-triangular with blocks A_t A_{t-1} ⋯ A_{s+1} (t ≥ s).
    ``P.H`` is the backward scan λ_t = q_t + A_{t+1}ᵀ λ_{t+1}, λ_{T+1} = 0,
    exactly BPTT's. ``P.inverse()`` is P⁻¹: (P⁻¹ q)_t = q_t − A_t q_{t-1}.
    The derivative of the whole trajectory with respect to θ is P J_θ.
    """

    def _mv(self, q: Tensor) -> Tensor:
        return self._forward_scan(q)

    def _rmv(self, q: Tensor) -> Tensor:
        return self._backward_scan(q)

    def _mm_cols(self, V: Tensor) -> Tensor:
        return self._forward_scan(V, cols=True)

    def _rmm_cols(self, V: Tensor) -> Tensor:
        return self._backward_scan(V, cols=True)

    def inverse(self) -> "InversePropagationOperator":
        """P⁻¹, with no solve: (P⁻¹ q)_t = q_t − A_t q_{t-1}."""
        return InversePropagationOperator(self.trajectory, **self._options())


class InversePropagationOperator(_PropagatorBase):
    """P⁻¹, the inverse propagator: (P⁻¹ q)_t = q_t − A_t q_{t-1}.

    Parameters are those of :class:`PropagationOperator`.

    Notes
    -----
    P⁻¹ = I − L with L the block sub-diagonal of the A_t; each product is one
    batched jvp over all (b, t) (parallel over time). Its adjoint
    (P⁻ᵀ λ)_t = λ_t − A_{t+1}ᵀ λ_{t+1} is one batched vjp. ``inverse()``
    returns P again.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.jacobians is None and self._steps is None:
            self._state_pullback()  # built outside any vmap, reused by every product

    def _mv(self, q: Tensor) -> Tensor:
        return self._difference(q)

    def _rmv(self, q: Tensor) -> Tensor:
        return self._difference_adjoint(q)

    def _mm_cols(self, V: Tensor) -> Tensor:
        return self._difference(V, cols=True)

    def _rmm_cols(self, V: Tensor) -> Tensor:
        return self._difference_adjoint(V, cols=True)

    # all-rows products: cache-sized blocks of columns (see kpflow.parameter.BLOCK_BYTES)
    def _mm(self, V: Tensor) -> Tensor:
        if not self._fast:
            return super()._mm(V)
        return by_columns(self._mm_cols, V, parameter_block(self.trajectory, self.chunk_size), self._mv)

    def _rmm(self, V: Tensor) -> Tensor:
        if not self._fast:
            return super()._rmm(V)
        return by_columns(self._rmm_cols, V, parameter_block(self.trajectory, self.chunk_size), self._rmv)

    def inverse(self) -> PropagationOperator:
        """P, the inverse of P⁻¹."""
        return PropagationOperator(self.trajectory, **self._options())
