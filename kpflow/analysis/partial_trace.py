"""Partial traces and partial averages of trajectory-space operators over named axes.

Trajectory space is the tensor product of the axes batch (B), time (T) and
hidden (S), flattened in C order [B, T, S]. Split them into kept axes (index
i) and traced axes (index r); the partial trace of A over the traced axes is
the operator on the kept axes

    (Tr_R A)_{i j} = Σ_r A_{(i, r), (j, r)}.

This is not the compression (I ⊗ 1)ᵀ A (I ⊗ 1) onto inputs constant along
the traced axes, which adds the off-diagonal terms r ≠ r′.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from .._progress import progress_bar
from ..operator import KPOperator
from ._operators import as_operator, trajectory_shape
from ._probes import SeedLike, basis_columns, check_distribution, draw_probes, make_generator
from .estimate import Estimate

__all__ = ["AXES", "PartialTraceOperator", "partial_trace", "effective_dimensions"]

#: Names of the axes of trajectory space, in C order.
AXES = ("batch", "time", "hidden")

#: ``num_probes=None`` enumerates the traced axes up to this size, else draws DEFAULT_PROBES.
EXACT_TRACED = 256
DEFAULT_PROBES = 64
#: Kept dimensions up to this size give a dense result (else matrix-free).
DENSE_LIMIT = 4096


def _check_axes(keep, shape) -> tuple[list[int], list[int]]:
    if isinstance(keep, str):
        keep = (keep,)
    keep = tuple(keep)
    unknown = [a for a in keep if a not in AXES]
    if unknown:
        raise ValueError(f"keep: unknown axis name(s) {unknown}; expected names from {AXES}")
    if len(set(keep)) != len(keep):
        raise ValueError(f"keep: repeated axis names in {keep}")
    if not keep:
        raise ValueError("keep: keep at least one axis (the full trace is kpflow.trace)")
    kept = [i for i, a in enumerate(AXES) if a in keep]
    traced = [i for i in range(3) if i not in kept]
    if not traced:
        raise ValueError(f"keep: {keep} keeps every axis, nothing is traced")
    return kept, traced


def _resolve_shape(A: KPOperator, shape) -> tuple[int, int, int]:
    if shape is None:
        shp = trajectory_shape(A)
        if shp is None:
            raise ValueError(
                "shape: the operator has no trajectory; pass shape=(B, T, S) with B·T·S equal to its size "
                f"{A.shape[0]}"
            )
        return shp
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ValueError(f"shape: expected (B, T, S) of positive ints, got {shape}")
    if math.prod(shape) != A.shape[0]:
        raise ValueError(f"shape: B·T·S = {math.prod(shape)} does not match the operator's size {A.shape[0]}")
    return shape


class _Layout:
    """Index bookkeeping between [B, T, S] (C order) and (kept, traced)."""

    def __init__(self, shape, kept, traced) -> None:
        self.shape = tuple(shape)
        self.kept, self.traced = kept, traced
        self.kept_sizes = [shape[i] for i in kept]
        self.traced_sizes = [shape[i] for i in traced]
        self.nK = math.prod(self.kept_sizes)
        self.nR = math.prod(self.traced_sizes)
        self.perm = kept + traced  # canonical -> (kept, traced)
        self.inv = [self.perm.index(i) for i in range(3)]

    def embed(self, X: Tensor, Z: Tensor) -> Tensor:
        """Columns x_c ⊗ z_p for X [nK, c], Z [nR, p]: returns [N, p·c] (probe-major)."""
        V = torch.einsum("kc,rp->krpc", X, Z)
        p, c = Z.shape[1], X.shape[1]
        V = V.reshape(*self.kept_sizes, *self.traced_sizes, p * c).permute(*self.inv, 3)
        return V.reshape(-1, p * c)

    def contract(self, Y: Tensor, Z: Tensor, c: int) -> Tensor:
        """(I ⊗ z_p)ᵀ y for each probe block: Y [N, p·c] → [p, nK, c]."""
        p = Z.shape[1]
        Y = Y.reshape(*self.shape, p * c).permute(*self.perm, 3).reshape(self.nK, self.nR, p, c)
        return torch.einsum("krpc,rp->pkc", Y, Z)


def _probe_blocks(layout: _Layout, exact: bool, num_probes: int, gen, distribution, dtype, device, per_block: int):
    """Yield probe blocks Z [nR, p]: the basis e_r (exact) or random probes."""
    total = layout.nR if exact else num_probes
    for start in range(0, total, per_block):
        stop = min(total, start + per_block)
        if exact:
            Z = basis_columns(layout.nR, start, stop, dtype, device)
        else:
            Z = draw_probes((layout.nR, stop - start), dtype, device, gen, distribution)
        yield Z


def _partial_products(
    A: KPOperator, layout: _Layout, X: Tensor, probes, adjoint: bool, column_block: int, per_probe: bool = False
):
    """(I ⊗ z)ᵀ A (X ⊗ z) for every probe z, summed (or stacked [m, nK, c]), and the products used."""
    apply = A.apply_adjoint if adjoint else A.apply
    parts = []
    used = 0
    for Z in probes:
        p = Z.shape[1]
        step = max(1, column_block // p)
        block = X.new_zeros(p, layout.nK, X.shape[1])
        for c0 in range(0, X.shape[1], step):
            Xc = X[:, c0 : c0 + step]
            V = layout.embed(Xc, Z)
            used += V.shape[1]
            block[:, :, c0 : c0 + step] = layout.contract(apply(V), Z, Xc.shape[1])
        parts.append(block if per_probe else block.sum(0))
    if per_probe:
        return torch.cat(parts, dim=0), used
    out = X.new_zeros(layout.nK, X.shape[1])
    for part in parts:
        out += part
    return out, used


class PartialTraceOperator(KPOperator):
    """The partial trace (or partial average) of an operator over some axes of trajectory space.

    Built by :func:`partial_trace`; an (n_K, n_K) kpflow operator on the kept
    axes, indexed in C order of the kept axes (batch, time, hidden order).

    Attributes
    ----------
    axes : tuple of str
        The kept axes.
    axis_sizes : tuple of int
        Their sizes.
    traced_axes : tuple of str
        The axes summed (or averaged) over.
    matrix : Tensor or None
        The dense result (``None`` for a matrix-free one).
    std_error : Tensor or None
        Elementwise standard error of ``matrix`` (zeros when exact; ``None``
        when matrix-free).
    num_matvecs : int
        Products with the underlying operator used to build ``matrix``
        (matrix-free: used per column applied, see ``matvecs_per_column``).
    num_probes : int
        Random probes (0 when exact).
    exact : bool
        Enumerated (exact) rather than randomized.
    mean : bool
        Average (divided by the traced size) rather than sum.
    samples : Tensor or None
        Per-probe matrices [m, n_K, n_K] of a randomized dense result, kept
        when small (for jackknife errors).

    Notes
    -----
    (Tr_R A)_{ij} = Σ_r A_{(i,r),(j,r)}; randomized, the mean over probes z
    of (I ⊗ z)ᵀ A (I ⊗ z). Matrix-free, a product is
    M x = s Σ_z (I ⊗ z)ᵀ A (x ⊗ z) over the fixed probes (the basis e_r when
    exact), with s = 1/m (randomized) times 1/n_R (``mean``).
    """

    def __init__(
        self, A, layout, matrix, std_error, probes, exact, mean, num_matvecs, num_probes, samples, column_block
    ):
        super().__init__((layout.nK, layout.nK), A.torch_dtype, A.device, chunk_size=None)
        self.base = A
        self.layout = layout
        self.axes = tuple(AXES[i] for i in layout.kept)
        self.axis_sizes = tuple(layout.kept_sizes)
        self.traced_axes = tuple(AXES[i] for i in layout.traced)
        self.matrix = matrix
        self.std_error = std_error
        self.exact = exact
        self.mean = mean
        self.num_matvecs = num_matvecs
        self.num_probes = num_probes
        self.samples = samples
        self._probes = probes
        self._column_block = column_block
        self._scale = (1.0 / layout.nR if mean else 1.0) / (1.0 if exact else max(num_probes, 1))

    @property
    def matvecs_per_column(self) -> int:
        """Products with the underlying operator per column applied (matrix-free)."""
        return self.layout.nR if self.exact else self.num_probes

    def _lazy(self, X: Tensor, adjoint: bool) -> Tensor:
        probes = self._probes() if callable(self._probes) else self._probes
        out, _ = _partial_products(self.base, self.layout, X, probes, adjoint, self._column_block)
        return out * self._scale

    def _mm(self, V: Tensor) -> Tensor:
        if self.matrix is not None:
            return self.matrix @ V
        return self._lazy(V, adjoint=False)

    def _rmm(self, V: Tensor) -> Tensor:
        if self.matrix is not None:
            return self.matrix.T @ V
        return self._lazy(V, adjoint=True)

    def _mv(self, v: Tensor) -> Tensor:
        return self._mm(v[:, None])[:, 0]

    def _rmv(self, v: Tensor) -> Tensor:
        return self._rmm(v[:, None])[:, 0]

    def to_dense(self) -> Tensor:
        if self.matrix is not None:
            return self.matrix
        return super().to_dense()

    def __repr__(self) -> str:
        kind = "exact" if self.exact else f"{self.num_probes} probes"
        mode = "dense" if self.matrix is not None else "matrix-free"
        op = "mean" if self.mean else "trace"
        return f"<partial {op} over {self.traced_axes} keeping {self.axes} {self.axis_sizes}: {mode}, {kind}>"


def partial_trace(
    op,
    keep: Iterable[str] | str = ("hidden",),
    num_probes: int | None = None,
    *,
    mean: bool = False,
    shape: tuple[int, int, int] | None = None,
    dense: bool | None = None,
    seed: SeedLike = None,
    distribution: str = "rademacher",
    column_block: int = 64,
    keep_samples: bool | None = None,
    progress: bool = False,
) -> PartialTraceOperator:
    """Partial trace (or average) of a trajectory-space operator, keeping some named axes.

    Parameters
    ----------
    op : KPOperator, LinearOperator, numpy.ndarray or Tensor
        A square operator on trajectory space, N = B·T·S.
    keep : str or tuple of str
        Kept axes among ("batch", "time", "hidden"); the others are traced.
        The result is indexed in C order of the kept axes, whatever the
        order given.
    num_probes : int, optional
        Random probes on the traced axes. ``None``: enumerate the traced
        axes exactly when their size n_R ≤ 256, else 64 probes. A count
        ≥ n_R enumerates (exact).
    mean : bool
        Partial average (1/n_R) Σ_r instead of the sum.
    shape : (B, T, S), optional
        Needed when the operator carries no trajectory.
    dense : bool, optional
        Build the (n_K, n_K) matrix (default when n_K ≤ 4096) or return a
        matrix-free operator whose every column costs n_R (exact) or m
        (randomized, fixed probes) products with ``op``.
    seed : None, int, numpy.random.Generator or torch.Generator
        Probe randomness (drawn in op's dtype, on its device).
    distribution : {"rademacher", "gaussian"}
        Probe entries.
    column_block : int
        Columns per batched product with ``op`` (bounds memory: N ×
        column_block).
    keep_samples : bool, optional
        Keep the per-probe matrices (default when m·n_K² ≤ 2²⁴).
    progress : bool
        tqdm bar over probe blocks (dense build).

    Returns
    -------
    PartialTraceOperator
        An (n_K, n_K) kpflow operator with ``matrix``, ``std_error``,
        ``num_matvecs``, ``exact``.

    Notes
    -----
    (Tr_R A)_{ij} = Σ_r A_{(i,r),(j,r)}, r over the traced axes. Exact: the
    basis vectors e_r of the traced space give
    (Tr_R A)_{ij} = Σ_r (e_i ⊗ e_r)ᵀ A (e_j ⊗ e_r), i.e. n_K · n_R = N
    products. Randomized: for probes z on the traced axes with E[z zᵀ] = I
    (Rademacher), E[(I ⊗ z)ᵀ A (I ⊗ z)]_{ij} = Σ_{r,r′} A_{(i,r),(j,r′)} E[z_r z_r′]
    = (Tr_R A)_{ij}, so the mean of m such matrices is unbiased, with an
    elementwise SE sd/√m; each costs n_K products. The partial trace of a
    symmetric (PSD) operator is symmetric (PSD); its trace is tr(A).
    """
    A = as_operator(op, square=True)
    shp = _resolve_shape(A, shape)
    kept, traced = _check_axes(keep, shp)
    layout = _Layout(shp, kept, traced)
    check_distribution(distribution)
    if isinstance(column_block, bool) or not isinstance(column_block, numbers.Integral) or column_block < 1:
        raise ValueError(f"column_block: expected a positive int, got {column_block!r}")
    if num_probes is None:
        exact, m = (True, 0) if layout.nR <= EXACT_TRACED else (False, DEFAULT_PROBES)
    else:
        if isinstance(num_probes, bool) or not isinstance(num_probes, numbers.Integral) or num_probes < 1:
            raise ValueError(f"num_probes: expected a positive int, got {num_probes!r}")
        exact, m = (True, 0) if num_probes >= layout.nR else (False, int(num_probes))
    dense = layout.nK <= DENSE_LIMIT if dense is None else bool(dense)
    dtype, device = A.torch_dtype, A.device
    gen = None if exact else make_generator(seed, device)
    per_block = max(1, column_block // layout.nK)
    scale = (1.0 / layout.nR) if mean else 1.0

    if not dense:
        if exact:
            def probes():
                return _probe_blocks(layout, True, 0, None, distribution, dtype, device, per_block)
        else:
            probes = list(_probe_blocks(layout, False, m, gen, distribution, dtype, device, per_block))
        return PartialTraceOperator(A, layout, None, None, probes, exact, mean, 0, m, None, column_block)

    eye = torch.eye(layout.nK, dtype=dtype, device=device)
    S1 = torch.zeros(layout.nK, layout.nK, dtype=torch.float64, device=device)
    S2 = torch.zeros_like(S1) if not exact else None
    keep_samples = (not exact and m * layout.nK**2 <= 2**24) if keep_samples is None else (keep_samples and not exact)
    samples = [] if keep_samples else None
    used = 0
    blocks = _probe_blocks(layout, exact, m, gen, distribution, dtype, device, per_block)
    if progress:

        total = math.ceil((layout.nR if exact else m) / per_block)
        blocks = progress_bar(blocks, total=total, desc="partial trace", leave=False)
    for Z in blocks:
        Mz, u = _partial_products(A, layout, eye, [Z], False, column_block, per_probe=True)
        used += u
        Mz = Mz.to(torch.float64)
        S1 += Mz.sum(0)
        if S2 is not None:
            S2 += (Mz * Mz).sum(0)
        if samples is not None:
            samples.append(Mz * scale)
    if exact:
        matrix = S1 * scale
        se = torch.zeros_like(matrix)
    else:
        mu = S1 / m
        matrix = mu * scale
        if m > 1:
            var = (S2 - m * mu * mu).clamp_min(0) / (m - 1)
            se = torch.sqrt(var / m) * scale
        else:
            se = torch.full_like(matrix, float("nan"))
    stacked = torch.cat(samples) if samples else None
    return PartialTraceOperator(
        A, layout, matrix.to(dtype), se.to(dtype), None, exact, mean, used, m,
        None if stacked is None else stacked.to(dtype), column_block,
    )


def _pr(M: Tensor, correction: float = 0.0) -> tuple[float, float, float]:
    t = float(torch.trace(M))
    f = float((M * M).sum()) - correction
    return (t * t / f if f > 0 else math.nan), t, f


def effective_dimensions(
    op,
    axes: Iterable[str] = AXES,
    num_probes: int | None = None,
    **kwargs,
) -> dict[str, Estimate]:
    """Participation-ratio dimension of an operator along each axis of trajectory space.

    Parameters
    ----------
    op : operator
        A symmetric PSD operator on trajectory space (K, P Pᵀ, P K P*, …).
    axes : iterable of str
        Axes to report, among ("batch", "time", "hidden").
    num_probes : int, optional
        As for :func:`partial_trace`.
    **kwargs
        Passed to :func:`partial_trace` (seed, shape, mean, …).

    Returns
    -------
    dict of str to Estimate
        For each axis a, PR(Tr_{not a} A), the effective number of
        dimensions of A along a.

    Notes
    -----
    With M_a = Tr_{axes ≠ a}(A) (an n_a × n_a PSD matrix),
    D_a = (tr M_a)² / ‖M_a‖_F², between 1 and n_a. When M_a is randomized
    (mean of m probe matrices M̂ with elementwise SE s_ij), ‖M̂‖_F²
    overestimates ‖M‖_F² by Σ Var(M̂_ij); the estimate subtracts Σ s_ij².
    Its SE is a jackknife over the probes when their matrices were kept,
    else NaN; 0 when exact.
    """
    out = {}
    for axis in ([axes] if isinstance(axes, str) else list(axes)):
        M = partial_trace(op, keep=(axis,), num_probes=num_probes, **kwargs)
        dense = M.matrix.to(torch.float64)
        if M.exact:
            pr, _, _ = _pr(dense)
            out[axis] = Estimate(pr, 0.0, M.num_matvecs, "exact")
            continue
        corr = float((M.std_error.to(torch.float64) ** 2).sum())
        pr, _, _ = _pr(dense, corr)
        se = math.nan
        if M.samples is not None and M.num_probes > 2:
            S = M.samples.to(torch.float64)
            m = S.shape[0]
            total, S2 = S.sum(0), S.pow(2).sum(0)
            jack = []
            for i in range(m):
                Mi = (total - S[i]) / (m - 1)
                var_i = ((S2 - S[i] ** 2) - (m - 1) * Mi**2).clamp_min(0) / ((m - 2) * (m - 1))
                jack.append(_pr(Mi, float(var_i.sum()))[0])
            jack = np.array(jack)
            se = float(math.sqrt((m - 1) / m * ((jack - jack.mean()) ** 2).sum()))
        out[axis] = Estimate(pr, se, M.num_matvecs, f"randomized ({M.num_probes} probes, bias-corrected)", M.num_probes)
    return out
