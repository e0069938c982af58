"""Multi-task structure: interference blocks of K between trial groups, and the
alignment of each sub-task's gradient-flow direction with the others'.

Trials are split into groups by an int array ``groups`` [B] of sub-task ids.
For a trajectory-space operator A (K, P K P*, …), the block A_ij maps the
trials of group j to those of group i: A_ij = R_i A R_jᵀ, with R_i the
restriction to the rows of trials in group i (all their steps and units).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..gradient_flow import GradientFlowOperator
from ..operator import KPOperator
from ..trajectory import Trajectory
from ._operators import as_operator, trajectory_shape
from ._probes import SeedLike, basis_columns, check_distribution, draw_probes, make_generator

__all__ = [
    "GroupBlockOperator",
    "group_block",
    "InterferenceResult",
    "interference",
    "GradientFlowAlignment",
    "gradient_flow_alignment",
]

#: ``num_probes=None`` is exact (the basis of each group) up to this trajectory-space size.
EXACT_LIMIT = 2048
DEFAULT_PROBES = 64


def _groups(groups, B: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels [G], group index of each trial [B]) from an int array of ids."""
    if isinstance(groups, Tensor):
        groups = groups.detach().cpu().numpy()
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != B:
        raise ValueError(f"groups: expected an int array of shape [B] = [{B}], got shape {g.shape}")
    if g.dtype.kind not in "iub":
        raise TypeError(f"groups: expected integer sub-task ids, got dtype {g.dtype}")
    labels, index = np.unique(g, return_inverse=True)
    return labels, index


def _shape(A: KPOperator, shape) -> tuple[int, int, int]:
    shp = trajectory_shape(A) if shape is None else tuple(int(s) for s in shape)
    if shp is None:
        raise ValueError("shape: the operator has no trajectory; pass shape=(B, T, S)")
    if math.prod(shp) != A.shape[0]:
        raise ValueError(f"shape: B·T·S = {math.prod(shp)} does not match the operator's size {A.shape[0]}")
    return shp


def _rows(trials: np.ndarray, shape, device) -> Tensor:
    """Flat trajectory-space indices of all (t, s) of the given trials."""
    _, T, S = shape
    per = T * S
    base = torch.as_tensor(trials, dtype=torch.long, device=device)[:, None] * per
    return (base + torch.arange(per, device=device)[None, :]).reshape(-1)


class GroupBlockOperator(KPOperator):
    """The block A_ij = R_i A R_jᵀ of a trajectory-space operator between two trial groups.

    Parameters
    ----------
    op : operator
        Square operator on trajectory space.
    rows, cols : Tensor
        Flat trajectory-space indices of the output (group i) and input
        (group j) coordinates.

    Notes
    -----
    A_ij x = R_i A (R_jᵀ x): the input is zero outside group j's trials,
    the output keeps group i's rows. Each product is one product with A.
    """

    def __init__(self, op: KPOperator, rows: Tensor, cols: Tensor) -> None:
        super().__init__((len(rows), len(cols)), op.torch_dtype, op.device, chunk_size=None)
        self.operator = op
        self.rows, self.cols = rows, cols

    def _mm(self, X: Tensor) -> Tensor:
        full = X.new_zeros(self.operator.shape[1], X.shape[1])
        full[self.cols] = X
        return self.operator.apply(full)[self.rows]

    def _rmm(self, X: Tensor) -> Tensor:
        full = X.new_zeros(self.operator.shape[0], X.shape[1])
        full[self.rows] = X
        return self.operator.apply_adjoint(full)[self.cols]

    def _mv(self, v: Tensor) -> Tensor:
        return self._mm(v[:, None])[:, 0]

    def _rmv(self, v: Tensor) -> Tensor:
        return self._rmm(v[:, None])[:, 0]


def group_block(op, groups, row_group, col_group, *, shape=None) -> GroupBlockOperator:
    """The interference block A_ij between the trials of sub-task ``row_group`` (i) and ``col_group`` (j).

    Parameters
    ----------
    op : operator
        Square trajectory-space operator (K, P K P*, …).
    groups : int array [B]
        Sub-task id of every trial.
    row_group, col_group : int
        Sub-task ids i and j (values that occur in ``groups``).
    shape : (B, T, S), optional
        Needed when the operator carries no trajectory.

    Returns
    -------
    GroupBlockOperator
        (n_i, n_j) with n_i = (#trials of i) · T · S.

    Notes
    -----
    A_ij = R_i A R_jᵀ, where R_i keeps the rows of the trials whose id is i
    (all their steps and units, in C order). For K, A_ij couples the two
    sub-tasks through the shared parameters: a parameter step driven by the
    error on sub-task j's trials moves sub-task i's states by −K_ij e_j.
    """
    A = as_operator(op, square=True)
    shp = _shape(A, shape)
    labels, index = _groups(groups, shp[0])
    pos = {int(l): a for a, l in enumerate(labels)}
    for name, g in (("row_group", row_group), ("col_group", col_group)):
        if int(g) not in pos:
            raise ValueError(f"{name}: sub-task id {g} does not occur in groups (ids {labels.tolist()})")
    rows = _rows(np.nonzero(index == pos[int(row_group)])[0], shp, A.device)
    cols = _rows(np.nonzero(index == pos[int(col_group)])[0], shp, A.device)
    return GroupBlockOperator(A, rows, cols)


@dataclass
class InterferenceResult:
    """Frobenius interference between trial groups.

    Attributes
    ----------
    labels : numpy.ndarray
        [G] sub-task ids, in the order of the matrices' rows and columns.
    norms_squared : numpy.ndarray
        [G, G] ‖A_ij‖_F² (row i = output group, column j = input group).
    std_error : numpy.ndarray
        [G, G] standard errors of ``norms_squared`` (0 when exact).
    alignment : numpy.ndarray
        [G, G] ‖A_ij‖_F² / (‖A_ii‖_F ‖A_jj‖_F) (1 on the diagonal).
    num_matvecs : int
        Products with the operator.
    exact : bool
        Enumerated rather than randomized.

    Notes
    -----
    ‖A_ij‖_F² = Σ over the rows of group i and columns of group j of A²;
    see :func:`interference` for the estimator and the meaning of the
    alignment.
    """

    labels: np.ndarray
    norms_squared: np.ndarray
    std_error: np.ndarray
    alignment: np.ndarray
    num_matvecs: int
    exact: bool

    @property
    def norms(self) -> np.ndarray:
        """[G, G] ‖A_ij‖_F."""
        return np.sqrt(np.clip(self.norms_squared, 0, None))


def interference(
    op,
    groups,
    num_probes: int | None = None,
    *,
    shape=None,
    seed: SeedLike = None,
    distribution: str = "rademacher",
    block_size: int = 64,
) -> InterferenceResult:
    """Interference between sub-tasks: Frobenius norms and alignments of the blocks K_ij.

    Parameters
    ----------
    op : operator
        Square trajectory-space operator, usually K (or P K P*).
    groups : int array [B]
        Sub-task id of every trial.
    num_probes : int, optional
        Probes per group (each one product with ``op``); ``None`` is exact for
        N ≤ 2048 (the basis of every group: N products) and 64 otherwise; a
        count ≥ a group's dimension enumerates that group.
    shape : (B, T, S), optional
        Needed when the operator carries no trajectory.
    seed, distribution, block_size
        Probe randomness and batching.

    Returns
    -------
    InterferenceResult

    Notes
    -----
    ‖A_ij‖_F² = E‖R_i A R_jᵀ z‖² for probes z on group j's coordinates
    (E[z zᵀ] = I), so one product A (R_jᵀ z) gives every row group i at
    once: m probes per group give the whole G × G matrix with G · m products.
    For a Gram operator K = J Jᵀ, with J_i = R_i J and the parameter-space
    Gram matrices M_i = J_iᵀ J_i, ‖K_ij‖_F² = tr(M_i M_j) and
    ‖K_ii‖_F = ‖M_i‖_F, so ``alignment`` is cos(M_i, M_j) ∈ [0, 1]: how much
    the parameter directions that move sub-task i's trajectories overlap
    with those that move sub-task j's (1 on the diagonal; 0 means a step
    for one sub-task does not disturb the other to first order).
    """
    A = as_operator(op, square=True)
    shp = _shape(A, shape)
    labels, index = _groups(groups, shp[0])
    check_distribution(distribution)
    G = len(labels)
    N = A.shape[0]
    if num_probes is None:
        m_req = None if N <= EXACT_LIMIT else DEFAULT_PROBES
    else:
        if isinstance(num_probes, bool) or not isinstance(num_probes, numbers.Integral) or num_probes < 1:
            raise ValueError(f"num_probes: expected a positive int, got {num_probes!r}")
        m_req = int(num_probes)
    rows = [_rows(np.nonzero(index == a)[0], shp, A.device) for a in range(G)]
    gen = None
    sq = np.zeros((G, G))
    se = np.zeros((G, G))
    used = 0
    exact_all = True
    for j in range(G):
        nj = len(rows[j])
        exact = m_req is None or m_req >= nj
        exact_all &= exact
        total = nj if exact else m_req
        samples = []
        for start in range(0, total, block_size):
            stop = min(total, start + block_size)
            if exact:
                Z = basis_columns(nj, start, stop, A.torch_dtype, A.device)
            else:
                if gen is None:
                    gen = make_generator(seed, A.device)
                Z = draw_probes((nj, stop - start), A.torch_dtype, A.device, gen, distribution)
            full = Z.new_zeros(N, Z.shape[1])
            full[rows[j]] = Z
            Y = A.apply(full).to(torch.float64)
            used += Z.shape[1]
            samples.append(torch.stack([(Y[rows[i]] ** 2).sum(0) for i in range(G)], dim=1).cpu().numpy())
        s = np.concatenate(samples)  # [m, G]: ‖A_ij z‖² for every i
        if exact:
            sq[:, j] = s.sum(0)
        else:
            sq[:, j] = s.mean(0)
            se[:, j] = s.std(0, ddof=1) / math.sqrt(len(s)) if len(s) > 1 else np.nan
    d = np.sqrt(np.clip(np.diag(sq), 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        align = sq / np.outer(d, d)
    return InterferenceResult(labels, sq, se, align, used, exact_all)


@dataclass
class GradientFlowAlignment:
    """The gradient-flow directions of the sub-tasks and how they align.

    Attributes
    ----------
    labels : numpy.ndarray
        [G] sub-task ids.
    directions : Tensor
        [G, B, T, S] d_i = −P K P* e_i, the first-order change of the whole
        trajectory under gradient flow on sub-task i's loss alone.
    cosines : numpy.ndarray
        [G, G] cos(d_i, d_j).
    with_others : numpy.ndarray
        [G] cos(d_i, Σ_{j≠i} d_j) (NaN with a single group).
    norms : numpy.ndarray
        [G] ‖d_i‖.
    share : numpy.ndarray
        [G] ⟨d_i, d⟩ / ‖d‖² with d = Σ_j d_j = −P K P* e: the fraction of the
        full gradient-flow step along d that sub-task i contributes (sums
        to 1).

    Notes
    -----
    cos(d_i, d_j) = ⟨d_i, d_j⟩ / (‖d_i‖ ‖d_j‖) in the Euclidean inner product
    of trajectory space.
    """

    labels: np.ndarray
    directions: Tensor
    cosines: np.ndarray
    with_others: np.ndarray
    norms: np.ndarray
    share: np.ndarray


def gradient_flow_alignment(source, error: Tensor, groups, *, normalization: str = "sum") -> GradientFlowAlignment:
    """Alignment of each sub-task's gradient-flow direction −P K P* e_i with the others'.

    Parameters
    ----------
    source : Trajectory or operator
        A trajectory (P K P* is built from it) or the operator P K P* itself.
    error : Tensor
        The error signal e = ∂L/∂Z, [B, T, S] (see :func:`kpflow.error_signal`).
    groups : int array [B]
        Sub-task id of every trial.
    normalization : {"sum", "mean"}
        Normalization of K when built from a trajectory.

    Returns
    -------
    GradientFlowAlignment

    Notes
    -----
    e_i = e restricted to the trials of group i (zero elsewhere), so
    e = Σ_i e_i and the gradient-flow velocity of the trajectory is
    dZ/dτ = −P K P* e = Σ_i d_i with d_i = −P K P* e_i: the sub-task losses
    contribute additively, and d_i moves *every* trial, including those of
    other sub-tasks, through the shared parameters. cos(d_i, d_j) > 0 means
    descending on sub-task i also helps j's direction of motion; < 0 means
    the sub-tasks pull the trajectory apart. All G directions are one
    batched product with P K P* on G columns.
    """
    if isinstance(source, Trajectory):
        Gop = GradientFlowOperator(source, normalization=normalization)
    else:
        Gop = as_operator(source, "source", square=True)
    shp = _shape(Gop, None)
    B = shp[0]
    if not isinstance(error, Tensor):
        raise TypeError(f"error: expected a torch.Tensor [B, T, S], got {type(error).__name__}")
    if tuple(error.shape) != tuple(shp):
        raise ValueError(f"error: expected shape [B, T, S] = {list(shp)}, got {tuple(error.shape)}")
    if error.dtype != Gop.torch_dtype or error.device != Gop.device:
        raise TypeError(
            f"error: expected dtype {Gop.torch_dtype} on {Gop.device} (the operator's), "
            f"got {error.dtype} on {error.device}"
        )
    labels, index = _groups(groups, B)
    G = len(labels)
    mask = torch.as_tensor(index, device=error.device)[None, :] == torch.arange(G, device=error.device)[:, None]
    E = error[None] * mask[:, :, None, None].to(error.dtype)  # [G, B, T, S]
    D = -Gop.apply(E.reshape(G, -1).T.contiguous()).T.reshape(G, *shp)
    flat = D.reshape(G, -1).to(torch.float64)
    gram = (flat @ flat.T).cpu().numpy()
    norms = np.sqrt(np.clip(np.diag(gram), 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = gram / np.outer(norms, norms)
        total = gram.sum(axis=1)  # ⟨d_i, d⟩
        others = total - np.diag(gram)
        other_norm = np.sqrt(np.clip(gram.sum() - 2 * total + np.diag(gram), 0, None))
        with_others = others / (norms * other_norm) if G > 1 else np.full(G, np.nan)
        share = total / gram.sum()
    return GradientFlowAlignment(labels, D, cos, with_others, norms, share)
