"""Effective rank of an operator and the alignment of two operators.

The participation ratio and the alignment are ratios of traces and
Frobenius inner products, estimated from one shared set of probes (exact
when the probes reach the dimension); the entropy and explained-variance
forms are read from a top spectrum.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from ..gradient_flow import GradientFlowOperator
from ..operator import KPOperator, ProductOperator
from ..parameter import ParameterOperator
from ..propagation import PropagationOperator
from ..trajectory import Trajectory
from ._operators import as_operator
from ._probes import SeedLike, check_distribution, make_generator
from ._sampling import DEFAULT_BLOCK, check_budget, probe_moments
from .estimate import Estimate, delta_se
from .spectra import SpectrumResult, top_eigs
from .trace import trace

__all__ = ["effective_rank", "alignment", "misdirection"]

KINDS = ("participation", "entropy", "variance")

#: Largest dimension for which ``num_matvecs=None`` means "exact".
EXACT_LIMIT = 2048
#: Budget used when ``num_matvecs=None`` and the dimension is above EXACT_LIMIT.
DEFAULT_BUDGET = 150


def _spectrum_values(values) -> np.ndarray | None:
    if isinstance(values, SpectrumResult):
        return np.asarray(values.values, dtype=np.float64)
    if isinstance(values, Tensor) and values.dim() == 1:
        return values.detach().cpu().to(torch.float64).numpy()
    if isinstance(values, (list, tuple)) or (isinstance(values, np.ndarray) and values.ndim == 1):
        return np.asarray(values, dtype=np.float64)
    return None


def _from_spectrum(lam: np.ndarray, kind: str, threshold: float, total: float | None) -> float:
    if lam.size == 0:
        raise ValueError("values: the spectrum is empty")
    if np.any(lam < 0):
        if np.any(lam < -1e-12 * np.abs(lam).max()):
            raise ValueError(
                f"values: the effective rank is defined for PSD spectra; got negative values (min {lam.min():.3e})"
            )
        lam = np.clip(lam, 0, None)
    s = lam.sum()
    if s <= 0:
        return 0.0
    if kind == "participation":
        return float(s**2 / (lam**2).sum())
    if kind == "entropy":
        p = lam[lam > 0] / s
        return float(math.exp(-(p * np.log(p)).sum()))
    tot = s if total is None else float(total)
    cum = np.cumsum(np.sort(lam)[::-1])
    hit = np.nonzero(cum >= threshold * tot * (1 - 1e-12))[0]
    if hit.size == 0:
        warnings.warn(
            f"effective_rank: the {lam.size} values hold only {cum[-1] / tot:.1%} of the total variance "
            f"{tot:.4g}, short of threshold={threshold:.0%}; returning NaN (compute more modes, larger k)",
            stacklevel=3,
        )
        return math.nan
    return float(hit[0] + 1)


def _resolve_budget(budget, n: int) -> int | None:
    """None → exact for n ≤ EXACT_LIMIT, else DEFAULT_BUDGET; a budget ≥ n → exact (None)."""
    if budget is None:
        return None if n <= EXACT_LIMIT else DEFAULT_BUDGET
    budget = check_budget(budget, "num_matvecs")
    return None if budget >= n else budget


def effective_rank(
    op,
    kind: str = "participation",
    *,
    num_matvecs: int | None = None,
    method: str = "hutch++",
    k: int | None = None,
    threshold: float = 0.95,
    seed: SeedLike = None,
    distribution: str = "rademacher",
    block_size: int = DEFAULT_BLOCK,
    progress: bool = False,
    **eig_kwargs,
) -> Estimate:
    """Effective rank (dimension) of a symmetric PSD operator or of a spectrum.

    Parameters
    ----------
    op : operator, SpectrumResult or 1-D array of eigenvalues
        K, P Pᵀ, P K P*, any symmetric PSD operator or matrix; or a spectrum
        (then every kind is computed from those values, exactly).
    kind : {"participation", "entropy", "variance"}
        See Notes.
    num_matvecs : int, optional
        Participation ratio: products with the operator. ``None`` is exact
        for n ≤ 2048 (n products) and 150 otherwise; ≥ n is exact.
    method : {"hutch++", "hutchinson"}
        Estimator of the two traces of the participation ratio (one shared
        set of probes). Hutch++ (budget ≥ 3) is far more accurate for the
        decaying spectra of K and P K P*.
    k : int, optional
        Spectral kinds on an operator: number of top eigenvalues (default
        min(n, 64)).
    threshold : float
        Fraction of the variance for ``kind="variance"`` (default 0.95).
    seed, distribution, block_size, progress
        Probe randomness and batching, as for :func:`~kpflow.trace`.
    **eig_kwargs
        Passed to :func:`~kpflow.top_eigs` for the spectral kinds.

    Returns
    -------
    Estimate
        The effective rank with its standard error (delta method; 0 when
        exact or computed from a given spectrum).

    Notes
    -----
    For a PSD operator A with eigenvalues λ_i ≥ 0:

    * participation ratio  PR = (tr A)² / tr(A²) = (Σ λ_i)² / Σ λ_i²,
      with tr(A²) = ‖A‖_F²; 1 ≤ PR ≤ rank(A). Estimated from shared probes
      as (mean zᵀAz)² / mean ‖Az‖² (after Hutch++ deflation, the exact parts
      tr(QᵀAQ) and ‖AQ‖_F² are added to the means); ratio estimators are
      biased by O(1/m); the SE is the delta-method one,
      SE² = gᵀ Σ g / m with g = (2 t / f, −t² / f²), t, f the two traces and
      Σ the sample covariance of (zᵀAz, ‖Az‖²).
    * entropy (Roy & Vetterli 2007)  erank = exp(−Σ p_i log p_i),
      p_i = λ_i / Σ_j λ_j, computed on the top-k spectrum (normalized by the
      top-k sum, so it describes those k modes).
    * variance: the number of modes needed for a fraction ``threshold`` of
      the variance, min{m : Σ_{i≤m} λ_i ≥ threshold · tr A}, with tr A exact
      (or estimated for big n) rather than the top-k sum; NaN with a warning
      when the top k modes do not reach it.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold: expected 0 < threshold <= 1, got {threshold}")
    lam = _spectrum_values(op)
    if lam is not None:
        return Estimate(_from_spectrum(lam, kind, threshold, None), 0.0, 0, f"exact (from {lam.size} values)")

    A = as_operator(op, square=True)
    n = A.shape[0]
    if kind == "participation":
        if method not in ("hutch++", "hutchinson"):
            raise ValueError(f"method: expected 'hutch++' or 'hutchinson', got {method!r}")
        check_distribution(distribution)
        budget = _resolve_budget(num_matvecs, n)
        if budget is None:
            m = probe_moments([A], None, "exact", None, block_size=block_size, progress=progress)
            t, f = float(m.exact_trace[0]), float(m.exact_inner[0, 0])
            return Estimate(t * t / f if f > 0 else 0.0, 0.0, m.num_matvecs, "exact")
        if method == "hutch++" and budget < 3:
            raise ValueError(f"num_matvecs: Hutch++ needs at least 3 products, got {budget}")
        gen = make_generator(seed, A.device)
        m = probe_moments([A], budget, method, gen, distribution, block_size, progress)
        a, b = m.trace_samples[:, 0], m.inner_samples[:, 0, 0]
        t = float(m.exact_trace[0]) + (a.mean() if a.size else 0.0)
        f = float(m.exact_inner[0, 0]) + (b.mean() if b.size else 0.0)
        if f <= 0:
            raise ArithmeticError(f"effective_rank: the estimate of tr(A²) is not positive ({f:.3e})")
        pr = t * t / f
        se = delta_se(np.array([2 * t / f, -t * t / f**2]), np.stack([a, b], axis=1))
        return Estimate(pr, se, m.num_matvecs, method, m.num_probes)

    kk = min(n, 64) if k is None else int(k)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"top_eigs: .*reported as 0")
        spec = top_eigs(A, kk, seed=seed, progress=progress, **eig_kwargs)
    lam = spec.values
    used = spec.num_matvecs
    if kind == "entropy":
        value = _from_spectrum(lam, "entropy", threshold, None)
        return Estimate(value, 0.0, used, f"entropy of top {kk} ({spec.method})")
    tot = trace(A, num_matvecs=None if n <= EXACT_LIMIT else DEFAULT_BUDGET, seed=seed, block_size=block_size)
    if tot.value < lam.sum() - 1e-9 * abs(lam.sum()) and tot.exact:
        tot = Estimate(lam.sum(), 0.0, 0, "exact")
    val = _from_spectrum(lam, "variance", threshold, tot.value)
    return Estimate(val, 0.0, used + tot.num_matvecs, f"variance of top {kk} ({spec.method}; trace {tot.method})")


def _operator_pair(A, B) -> tuple[KPOperator, KPOperator]:
    A = as_operator(A, "A")
    B = as_operator(B, "B")
    if A.shape != B.shape:
        raise ValueError(f"B: expected the shape of A {A.shape}, got {B.shape}")
    if A.torch_dtype != B.torch_dtype:
        raise TypeError(f"B: dtype {B.torch_dtype} differs from A's {A.torch_dtype}; convert one explicitly")
    if A.device != B.device:
        raise ValueError(f"B: device {B.device} differs from A's {A.device}")
    return A, B


def alignment(
    A,
    B,
    num_probes: int | None = None,
    *,
    method: str = "hutchinson",
    seed: SeedLike = None,
    distribution: str = "rademacher",
    block_size: int = DEFAULT_BLOCK,
    progress: bool = False,
) -> Estimate:
    """Alignment (cosine) of two operators in the Frobenius inner product.

    Parameters
    ----------
    A, B : operators of the same shape
        kpflow operators, SciPy LinearOperators or dense matrices (same
        dtype and device).
    num_probes : int, optional
        Probes, each costing one product with A and one with B. ``None`` is
        exact for n ≤ 2048 (the n basis vectors) and 150 otherwise; ≥ n is
        exact.
    method : {"hutchinson", "hutch++"}
        Hutch++ (budget ≥ 4) deflates with the joint range of A and B.
    seed, distribution, block_size, progress
        As for :func:`~kpflow.trace`.

    Returns
    -------
    Estimate
        cos(A, B) ∈ [−1, 1] with its delta-method SE; ``num_matvecs`` counts
        products with each operator.

    Notes
    -----
    cos(A, B) = ⟨A, B⟩_F / (‖A‖_F ‖B‖_F) with ⟨A, B⟩_F = tr(AᵀB).
    With shared probes z_i (E[z zᵀ] = I), ⟨A, B⟩_F = E[(A z)ᵀ(B z)],
    ‖A‖_F² = E‖A z‖², ‖B‖_F² = E‖B z‖²; the three means are plugged into the
    ratio (bias O(1/m)), SE² = gᵀ Σ g / m by the delta method. With the n
    basis vectors as probes the sums are exact.
    """
    A, B = _operator_pair(A, B)
    n = A.shape[1]
    if method not in ("hutchinson", "hutch++"):
        raise ValueError(f"method: expected 'hutchinson' or 'hutch++', got {method!r}")
    check_distribution(distribution)
    if num_probes is None:
        budget = None if n <= EXACT_LIMIT else DEFAULT_BUDGET
    else:
        budget = check_budget(num_probes, "num_probes")
        budget = None if budget >= n else budget
    if budget is None:
        m = probe_moments([A, B], None, "exact", None, block_size=block_size, progress=progress)
        ab, aa, bb = m.exact_inner[0, 1], m.exact_inner[0, 0], m.exact_inner[1, 1]
        return Estimate(float(ab / math.sqrt(aa * bb)), 0.0, m.num_matvecs, "exact")
    if method == "hutch++" and budget < 4:
        raise ValueError(f"num_probes: Hutch++ with two operators needs at least 4 probes, got {budget}")
    gen = make_generator(seed, A.device)
    m = probe_moments([A, B], budget, method, gen, distribution, block_size, progress)
    s = m.inner_samples
    cols = np.stack([s[:, 0, 1], s[:, 0, 0], s[:, 1, 1]], axis=1)
    ab = m.exact_inner[0, 1] + (cols[:, 0].mean() if len(cols) else 0.0)
    aa = m.exact_inner[0, 0] + (cols[:, 1].mean() if len(cols) else 0.0)
    bb = m.exact_inner[1, 1] + (cols[:, 2].mean() if len(cols) else 0.0)
    if aa <= 0 or bb <= 0:
        raise ArithmeticError("alignment: an estimated Frobenius norm is not positive")
    c = ab / math.sqrt(aa * bb)
    grad = np.array([1 / math.sqrt(aa * bb), -0.5 * c / aa, -0.5 * c / bb])
    return Estimate(float(c), delta_se(grad, cols), m.num_matvecs, method, m.num_probes)


def misdirection(
    source,
    K=None,
    num_probes: int | None = None,
    **kwargs,
) -> Estimate:
    """The paper's misdirection: the alignment of P K P* with P Pᵀ.

    Parameters
    ----------
    source : Trajectory or PropagationOperator
        A trajectory (P, K and P K P* are built from it), or P itself.
    K : operator, optional
        The parameter operator when ``source`` is P (default
        ``ParameterOperator(P.trajectory)``).
    num_probes : int, optional
        As for :func:`alignment`.
    **kwargs
        Passed to :func:`alignment` (method, seed, …).

    Returns
    -------
    Estimate
        cos(P K P*, P Pᵀ) with its SE.

    Notes
    -----
    misdirection = ⟨P K P*, P Pᵀ⟩_F / (‖P K P*‖_F ‖P Pᵀ‖_F). P Pᵀ is the
    gradient flow the trajectory would follow if K were the identity (every
    error direction reachable); the cosine measures how far the parameter
    operator K redirects it. Both operators are scale-free in the cosine, so
    the "sum"/"mean" normalization of K does not matter.
    """
    if isinstance(source, Trajectory):
        P = PropagationOperator(source)
        G = GradientFlowOperator(source) if K is None else ProductOperator([P, as_operator(K, "K"), P.H])
    elif isinstance(source, KPOperator):
        P = source
        if K is None:
            traj = getattr(P, "trajectory", None)
            if not isinstance(traj, Trajectory):
                raise ValueError("K: pass the parameter operator K when source is not a kpflow PropagationOperator")
            K = ParameterOperator(traj)
        G = ProductOperator([P, as_operator(K, "K"), P.H])
    else:
        raise TypeError(f"source: expected a Trajectory or the propagation operator P, got {type(source).__name__}")
    return alignment(G, ProductOperator([P, P.H]), num_probes, **kwargs)
