"""Randomized traces and Frobenius norms: Hutchinson, Hutch++, XTrace.

Every estimator returns an :class:`~kpflow.analysis.Estimate` (value,
standard error, products used), draws its probes in the operator's dtype and
on its device from a seed, uses exactly the budget it reports, and is exact
(standard error 0) once the budget reaches the dimension.
"""

from __future__ import annotations

import math
import warnings

import torch

from ..operator import KPOperator
from ._operators import as_operator, gram_factor
from ._probes import SeedLike, check_distribution, make_generator
from ._sampling import DEFAULT_BLOCK, check_budget, probe_moments
from .estimate import Estimate, mean_and_se

__all__ = ["trace", "frobenius_norm"]

TRACE_METHODS = ("hutch++", "hutchinson", "xtrace", "exact")

#: ``num_matvecs=None`` is exact when that costs at most this many products ...
EXACT_LIMIT = 2048
#: ... and uses this budget otherwise.
DEFAULT_BUDGET = 150


def _exact_gram_trace(F: KPOperator, c: float, block_size: int, progress: bool) -> Estimate:
    """c ‖F‖_F², enumerating the smaller side of F."""
    n, r = F.shape
    side = F if r <= n else F.H  # ‖F‖_F = ‖Fᵀ‖_F: enumerate the columns of the thinner one
    m = probe_moments([side], None, "exact", None, block_size=block_size, progress=progress)
    return Estimate(c * float(m.exact_inner[0, 0]), 0.0, m.num_matvecs, "exact (gram: ‖F e_j‖² over the smaller side)")


def trace(
    op,
    num_matvecs: int | None = None,
    method: str = "hutch++",
    *,
    seed: SeedLike = None,
    distribution: str = "rademacher",
    gram: bool | str = "auto",
    block_size: int = DEFAULT_BLOCK,
    progress: bool = False,
) -> Estimate:
    """Randomized (or exact) trace of a square operator.

    Parameters
    ----------
    op : KPOperator, LinearOperator, numpy.ndarray or Tensor
        A square (n, n) operator.
    num_matvecs : int, optional
        Budget of products of one column with the operator. A budget ≥ n
        computes the trace exactly from the n basis vectors (for a Gram
        operator, a budget ≥ the smaller side of F, p for K, see ``gram``).
        ``None``: exact when that costs at most 2048 products, else a budget
        of 150.
    method : {"hutch++", "hutchinson", "xtrace", "exact"}
        Hutch++ needs a budget ≥ 3, XTrace ≥ 4 (an even budget; an odd one
        uses one product less, with a warning).
    seed : None, int, numpy.random.Generator or torch.Generator
        Probe randomness; probes are drawn in the operator's dtype and on its
        device.
    distribution : {"rademacher", "gaussian"}
        Probe entries (Hutchinson and Hutch++; XTrace uses its own
        normalized Gaussian probes).
    gram : {"auto", True, False}
        Use a Gram factor A = c F Fᵀ (K = J_θ J_θᵀ, P K P* = (P J_θ)(P J_θ)ᵀ,
        X Xᵀ products): Hutchinson samples c ‖Fᵀ z‖², one product with Fᵀ
        each (half the cost of a product with A), and the trace is exact
        once the budget reaches the smaller dimension of F (p for K).
        "auto" uses it with ``method="hutchinson"`` and for the exact case.
    block_size : int
        Probe columns applied per batched product (bounds memory).
    progress : bool
        tqdm bar over probe blocks.

    Returns
    -------
    Estimate
        ``value``, ``std_error``, ``num_matvecs`` (products with A, or with
        F/Fᵀ on the Gram path), ``method``, ``num_probes``.

    Notes
    -----
    Hutchinson: with probes z_i (E[z zᵀ] = I), tr(A) ≈ (1/m) Σ z_iᵀ A z_i,
    unbiased, SE = sd(z_iᵀ A z_i)/√m (NaN for m = 1). For Rademacher probes
    and symmetric A, Var = 2(‖A‖_F² − Σ_i A_ii²)/m.

    Hutch++ (Meyer, Musco, Musco, Woodruff 2021): s = ⌊m/3⌋ sketch columns
    S, Q = orth(A S), and g = m − 2s residual probes,
    tr(A) ≈ tr(Qᵀ A Q) + (1/g) Σ g_iᵀ A g_i with g_i = (I − Q Qᵀ) z_i;
    unbiased for any square A; the SE is that of the residual mean
    (conditional on Q). Its error decays like 1/m for low-rank-plus-decay
    spectra (K), against 1/√m for Hutchinson.

    XTrace (Epperly, Tropp, Webber 2024): m/2 normalized Gaussian probes
    Ω = [ω_i], Y = A Ω, and the average over i of the leave-one-out
    estimators tr(Q_iᵀ A Q_i) + ω_iᵀ (I − Q_i Q_iᵀ) A (I − Q_i Q_iᵀ) ω_i,
    Q_i = orth(Y without column i), computed in closed form from one QR;
    SE = sd of the m/2 estimators / √(m/2) (a heuristic: they are
    exchangeable, not independent). When the sketch exhausts the
    numerical rank of A, R is singular and XTrace falls back to Hutch++
    (whose deflation is then exact), with a warning.
    """
    A = as_operator(op, square=True)
    n = A.shape[0]
    if method not in TRACE_METHODS:
        raise ValueError(f"method: expected one of {TRACE_METHODS}, got {method!r}")
    check_distribution(distribution)
    block_size = check_budget(block_size, "block_size")
    if gram not in ("auto", True, False):
        raise ValueError(f"gram: expected 'auto', True or False, got {gram!r}")
    budget = None if num_matvecs is None else check_budget(num_matvecs, "num_matvecs")
    if method == "exact" and budget is not None and budget < n:
        raise ValueError(f"num_matvecs: method='exact' needs n = {n} products, got a budget of {budget}")

    factor = gram_factor(A) if gram is not False else None
    if gram is True and factor is None:
        raise ValueError(f"gram: no Gram factor A = c F Fᵀ is known for {type(A).__name__}")
    if budget is None and method != "exact":
        exact_cost = n if factor is None else min(n, *factor[0].shape)
        budget = None if exact_cost <= EXACT_LIMIT else DEFAULT_BUDGET

    if factor is not None:
        F, c = factor
        if budget is None or budget >= min(F.shape):
            return _exact_gram_trace(F, c, block_size, progress)
    if budget is None or budget >= n or method == "exact":
        m = probe_moments([A], None, "exact", None, block_size=block_size, progress=progress)
        return Estimate(float(m.exact_trace[0]), 0.0, m.num_matvecs, "exact")

    gen = make_generator(seed, A.device)
    if factor is not None and (gram is True or method == "hutchinson"):
        F, c = factor
        m = probe_moments([F.H], budget, "hutchinson", gen, distribution, block_size, progress)
        samples = c * m.inner_samples[:, 0, 0]
        value, se = mean_and_se(samples)
        return Estimate(value, se, m.num_matvecs, "hutchinson (gram: c‖Fᵀz‖²)", m.num_probes, samples)
    if method == "xtrace":
        return _xtrace(A, budget, gen, progress, block_size, distribution)
    if method == "hutch++" and budget < 3:
        raise ValueError(f"num_matvecs: Hutch++ needs at least 3 products (sketch, basis, residual), got {budget}")
    m = probe_moments([A], budget, method, gen, distribution, block_size, progress)
    samples = m.trace_samples[:, 0]
    mean, se = mean_and_se(samples)
    return Estimate(float(m.exact_trace[0]) + mean, se, m.num_matvecs, method, m.num_probes, samples)


def _xtrace(A: KPOperator, budget: int, gen, progress, block_size, distribution) -> Estimate:
    if budget < 4:
        raise ValueError(f"num_matvecs: XTrace needs at least 4 products (two probes, two basis columns), got {budget}")
    if budget % 2:
        warnings.warn(
            f"num_matvecs: XTrace uses an even budget; {budget - 1} of the {budget} products are used",
            stacklevel=3,
        )
    n = A.shape[0]
    m = budget // 2
    dtype, device = A.torch_dtype, A.device
    Om = torch.randn(n, m, generator=gen, dtype=dtype, device=device)
    Om = math.sqrt(n) * Om / torch.linalg.vector_norm(Om, dim=0, keepdim=True)
    Y = A.apply(Om)
    Q, R = torch.linalg.qr(Y)
    Rd = R.to(torch.float64)
    d = Rd.diagonal().abs()
    if d.min() <= 100 * torch.finfo(dtype).eps * d.max() * m:
        warnings.warn(
            "xtrace: the sketch reached the numerical rank of the operator (R is singular); "
            "falling back to Hutch++ with the same budget, whose deflation is then exact",
            stacklevel=3,
        )
        mo = probe_moments([A], 2 * m, "hutch++", gen, distribution, block_size, progress)
        samples = mo.trace_samples[:, 0]
        mean, se = mean_and_se(samples)
        value = float(mo.exact_trace[0]) + mean
        return Estimate(value, se, mo.num_matvecs, "hutch++ (xtrace fallback)", mo.num_probes, samples)
    f64 = torch.float64
    Omd, Yd, Qd = Om.to(f64), Y.to(f64), Q.to(f64)
    W = Qd.T @ Omd
    Rinv_T = torch.linalg.solve_triangular(Rd, torch.eye(m, dtype=f64, device=device), upper=True).T
    S = Rinv_T / torch.linalg.vector_norm(Rinv_T, dim=0, keepdim=True)
    dSW = (W * S).sum(0)
    scale = torch.sqrt((n - m + 1) / (n - (W * W).sum(0) + dSW**2))
    Omd, Rd, Yd, W = Omd * scale, Rd * scale, Yd * scale, W * scale
    Z = A.apply(Q).to(f64)
    H = Qd.T @ Z
    HW = H @ W
    T = Z.T @ Omd
    dSW = (W * S).sum(0)
    dSHS = (S * (H @ S)).sum(0)
    dOmY = (Omd * Yd).sum(0)
    dWR = (W * Rd).sum(0)
    dTW = (T * W).sum(0)
    dWHW = (W * HW).sum(0)
    dSRmHW = (S * (Rd - HW)).sum(0)
    dTmHRS = ((T - H.T @ W) * S).sum(0)
    ests = (
        torch.trace(H) - dSHS + dOmY - dWR - dTW + dWHW + dSW * dSRmHW + dSW**2 * dSHS + dTmHRS * dSW
    ).cpu().numpy()
    value, se = mean_and_se(ests)
    return Estimate(value, se, 2 * m, "xtrace", m, ests)


def frobenius_norm(
    op,
    num_matvecs: int | None = None,
    method: str = "hutchinson",
    *,
    squared: bool = False,
    seed: SeedLike = None,
    distribution: str = "rademacher",
    block_size: int = DEFAULT_BLOCK,
    progress: bool = False,
) -> Estimate:
    """Randomized (or exact) Frobenius norm ‖A‖_F.

    Parameters
    ----------
    op : KPOperator, LinearOperator, numpy.ndarray or Tensor
        An (m, n) operator.
    num_matvecs : int, optional
        Products with A. ≥ n: exact, from the n columns A e_j. ``None``:
        exact for n ≤ 2048, else a budget of 150.
    method : {"hutchinson", "hutch++", "exact"}
        Hutch++ (square operators, budget ≥ 3) deflates the dominant range.
    squared : bool
        Return ‖A‖_F² (the unbiased quantity) instead of ‖A‖_F.
    seed, distribution, block_size, progress
        As for :func:`trace`.

    Returns
    -------
    Estimate

    Notes
    -----
    ‖A‖_F² = tr(AᵀA) = E‖A z‖² for E[z zᵀ] = I (so for K = J Jᵀ,
    ‖K‖_F² = E‖K z‖², one product with K per probe); the estimate is the
    mean of ‖A z_i‖², SE = sd/√m. With Hutch++, ‖A‖_F² = ‖A Q‖_F² +
    E‖A (I − Q Qᵀ) z‖². Unless ``squared``, the value is the square root of
    the unbiased estimate of ‖A‖_F² (biased low by O(1/m)) with the
    delta-method SE, SE(‖A‖_F²) / (2 ‖A‖_F).
    """
    A = as_operator(op)
    n = A.shape[1]
    if method not in ("hutchinson", "hutch++", "exact"):
        raise ValueError(f"method: expected 'hutchinson', 'hutch++' or 'exact', got {method!r}")
    check_distribution(distribution)
    block_size = check_budget(block_size, "block_size")
    budget = None if num_matvecs is None else check_budget(num_matvecs, "num_matvecs")
    if method == "exact" and budget is not None and budget < n:
        raise ValueError(f"num_matvecs: method='exact' needs n = {n} products, got a budget of {budget}")
    if budget is None and method != "exact" and n > EXACT_LIMIT:
        budget = DEFAULT_BUDGET
    if budget is None or budget >= n or method == "exact":
        m = probe_moments([A], None, "exact", None, block_size=block_size, progress=progress)
        sq, se2, samples = float(m.exact_inner[0, 0]), 0.0, None
        used, name, probes = m.num_matvecs, "exact", 0
    else:
        if method == "hutch++" and budget < 3:
            raise ValueError(f"num_matvecs: Hutch++ needs at least 3 products, got {budget}")
        gen = make_generator(seed, A.device)
        m = probe_moments([A], budget, method, gen, distribution, block_size, progress)
        samples = m.inner_samples[:, 0, 0]
        mean, se2 = mean_and_se(samples)
        sq = float(m.exact_inner[0, 0]) + mean
        used, name, probes = m.num_matvecs, method, m.num_probes
    if squared:
        return Estimate(sq, se2, used, name, probes, samples)
    if sq < 0:  # impossible for exact arithmetic; say so rather than clamp
        raise ArithmeticError(f"frobenius_norm: the estimate of ‖A‖_F² is negative ({sq:.3e})")
    norm = math.sqrt(sq)
    se = se2 / (2 * norm) if norm > 0 else (0.0 if se2 == 0 else math.nan)
    return Estimate(norm, se, used, name, probes, samples)
