"""Adapters: everything the analysis layer accepts becomes a torch-native operator.

Analysis routines accept kpflow operators (used as they are, on their
device), SciPy ``LinearOperator`` objects and sparse matrices (wrapped; their
products go through NumPy on the CPU), and dense NumPy arrays / torch tensors
(wrapped as :class:`~kpflow.analysis.DenseOperator`). They also recognise
the structure of kpflow operators: the trajectory behind them (for the
[B, T, S] layout), positive semi-definiteness, a bound on the rank, and a
Gram factor A = c F Fᵀ.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch
from scipy.sparse.linalg import LinearOperator, aslinearoperator
from torch import Tensor

from ..gradient_flow import GradientFlowOperator
from ..operator import AdjointOperator, KPOperator, ProductOperator, ScaledOperator, SumOperator
from ..parameter import ParameterJacobian, ParameterOperator
from ..trajectory import Trajectory
from .dense import DenseOperator

__all__ = ["as_operator", "find_trajectory", "trajectory_shape", "is_psd", "rank_bound", "gram_factor"]


class ScipyOperator(KPOperator):
    """A SciPy ``LinearOperator`` behind kpflow's torch interface (products via NumPy, CPU)."""

    def __init__(self, operator: LinearOperator) -> None:
        dtype = np.dtype(operator.dtype) if operator.dtype is not None else np.dtype(np.float64)
        if dtype.kind == "c":
            raise TypeError(f"op: complex operators are not supported (dtype {dtype})")
        tdtype = torch.float32 if dtype == np.float32 else torch.float64
        super().__init__(tuple(operator.shape), tdtype, "cpu", chunk_size=None)
        self.operator = operator

    def _call(self, fn, V: Tensor) -> Tensor:
        out = np.asarray(fn(V.detach().cpu().numpy()))
        if out.dtype.kind == "c":
            out = out.real
        return torch.from_numpy(np.ascontiguousarray(out, dtype=self.dtype)).to(self.device)

    def _mv(self, v: Tensor) -> Tensor:
        return self._call(self.operator.matvec, v).reshape(-1)

    def _rmv(self, v: Tensor) -> Tensor:
        return self._call(self.operator.rmatvec, v).reshape(-1)

    def _mm(self, V: Tensor) -> Tensor:
        return self._call(self.operator.matmat, V).reshape(self.shape[0], V.shape[1])

    def _rmm(self, V: Tensor) -> Tensor:
        return self._call(self.operator.rmatmat, V).reshape(self.shape[1], V.shape[1])


def as_operator(op, name: str = "op", square: bool = False) -> KPOperator:
    """Wrap anything the analysis layer accepts as a torch-native :class:`KPOperator`.

    Parameters
    ----------
    op : KPOperator, LinearOperator, scipy sparse matrix, numpy.ndarray or Tensor
        The operator; dense arrays are matrices.
    name : str
        Argument name for error messages.
    square : bool
        Require a square operator.
    """
    if isinstance(op, KPOperator):
        out = op
    elif isinstance(op, (np.ndarray, Tensor)):
        if op.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D matrix, got shape {tuple(op.shape)}")
        out = DenseOperator(op)
    elif isinstance(op, LinearOperator) or scipy.sparse.issparse(op):
        out = ScipyOperator(aslinearoperator(op))
    elif isinstance(op, Trajectory):
        raise TypeError(
            f"{name}: expected an operator, got a Trajectory; build one, e.g. kpflow.ParameterOperator(traj)"
        )
    else:
        raise TypeError(
            f"{name}: expected a kpflow operator, a scipy LinearOperator, a numpy array or a torch tensor, "
            f"got {type(op).__name__}"
        )
    if square and out.shape[0] != out.shape[1]:
        raise ValueError(f"{name}: expected a square operator, got shape {out.shape}")
    return out


def find_trajectory(op) -> Trajectory | None:
    """The trajectory behind a kpflow operator (searching sums, products, adjoints), or None."""
    traj = getattr(op, "trajectory", None)
    if isinstance(traj, Trajectory):
        return traj
    for child in list(getattr(op, "operators", ()) or ()) + [getattr(op, "operator", None)]:
        if isinstance(child, KPOperator):
            found = find_trajectory(child)
            if found is not None:
                return found
    return None


def trajectory_shape(op, n: int | None = None) -> tuple[int, int, int] | None:
    """(B, T, S) when the operator acts on (or maps into) trajectory space of size n."""
    traj = find_trajectory(op)
    if traj is None:
        return None
    n = op.shape[0] if n is None else n
    return traj.shape if traj.size == n else None


def _adjoint_pair(a, b) -> bool:
    """Whether b is (structurally) the adjoint of a."""
    if isinstance(b, AdjointOperator) and b.operator is a:
        return True
    if isinstance(a, AdjointOperator) and a.operator is b:
        return True
    return False


def _palindrome(ops) -> tuple[list, list] | None:
    """For X₁…X_m M X_mᵀ…X₁ᵀ returns ([X₁…X_m], [M] or []), else None."""
    n = len(ops)
    left = []
    for i in range(n // 2):
        if not _adjoint_pair(ops[i], ops[n - 1 - i]):
            return None
        left.append(ops[i])
    middle = [ops[n // 2]] if n % 2 else []
    return left, middle


def is_psd(op) -> bool:
    """Whether kpflow knows, from its structure, that ``op`` is symmetric PSD.

    True for :class:`~kpflow.ParameterOperator`, :class:`~kpflow.GradientFlowOperator`,
    a :class:`DenseOperator` declared ``psd``, non-negative multiples and sums
    of those, and products X M Xᵀ (M PSD or absent), e.g. ``P @ P.H``.
    """
    if isinstance(op, (ParameterOperator, GradientFlowOperator)):
        return True
    if isinstance(op, DenseOperator):
        return op.psd
    if isinstance(op, ScaledOperator):
        return op.alpha >= 0 and is_psd(op.operator)
    if isinstance(op, SumOperator):
        return all(is_psd(o) for o in op.operators)
    if isinstance(op, ProductOperator):
        found = _palindrome(op.operators)
        return found is not None and all(is_psd(m) for m in found[1])
    return False


def rank_bound(op) -> int:
    """An upper bound on the rank of ``op`` known from its structure (p for K and P K P*)."""
    if isinstance(op, (ParameterOperator, GradientFlowOperator)):
        return min(op.shape[0], op.trajectory.num_params)
    if isinstance(op, ParameterJacobian):
        return min(op.shape)
    if isinstance(op, (ScaledOperator, AdjointOperator)):
        return min(min(op.shape), rank_bound(op.operator))
    if isinstance(op, ProductOperator):
        return min(rank_bound(o) for o in op.operators)
    if isinstance(op, SumOperator):
        return min(min(op.shape), sum(rank_bound(o) for o in op.operators))
    return min(op.shape)


def gram_factor(op) -> tuple[KPOperator, float] | None:
    """(F, c) with op = c F Fᵀ when the structure shows it, else None.

    K = J_θ J_θᵀ gives (J_θ, scale), P K P* gives (P J_θ, scale), a product
    X Xᵀ gives (X, 1), and α A (α ≥ 0) scales c.
    """
    if isinstance(op, ParameterOperator):
        return op.jacobian, op.scale
    if isinstance(op, GradientFlowOperator):
        return ProductOperator([op.propagation, op.jacobian]), op.scale
    if isinstance(op, ScaledOperator) and op.alpha >= 0:
        inner = gram_factor(op.operator)
        return None if inner is None else (inner[0], inner[1] * op.alpha)
    if isinstance(op, ProductOperator):
        found = _palindrome(op.operators)
        if found is not None and not found[1] and found[0]:
            left = found[0]
            return (left[0] if len(left) == 1 else ProductOperator(left)), 1.0
    return None
