"""The probe engine shared by the trace, Frobenius, effective-rank and alignment estimators.

For operators A_1 … A_k with a common input space of dimension n, one set of
probes gives unbiased estimates of every tr(A_i) (square A_i) and every
Frobenius inner product ⟨A_i, A_j⟩_F = tr(A_iᵀ A_j):

    E[zᵀ A_i z] = tr(A_i),      E[(A_i z)ᵀ (A_j z)] = tr(A_iᵀ A_j),

for probes with E[z zᵀ] = I. Deflation (Hutch++) splits the input space
with an orthonormal basis Q drawn from a sketch, independent of the probes:

    tr(A) = tr(Qᵀ A Q) + E[gᵀ A g],
    ⟨A, B⟩_F = ⟨A Q, B Q⟩_F + E[(A g)ᵀ (B g)],     g = (I − Q Qᵀ) z,

where the first terms are computed exactly and only the residuals are
sampled. With budget ≥ n the standard basis replaces the probes: exact.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._progress import progress_bar
from ..operator import KPOperator
from ._probes import basis_columns, draw_probes

__all__ = ["Moments", "check_budget", "probe_moments"]

DEFAULT_BLOCK = 64


@dataclass
class Moments:
    """Exact parts and per-probe samples of traces and Frobenius inner products."""

    exact_trace: np.ndarray  # [k]; NaN for non-square operators
    exact_inner: np.ndarray  # [k, k]
    trace_samples: np.ndarray  # [g, k]
    inner_samples: np.ndarray  # [g, k, k]
    num_probes: int  # g, random residual probes
    num_matvecs: int  # products with each operator
    method: str


def check_budget(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name}: expected at least {minimum}, got {value}")
    return value


def _blocks(total: int, size: int, progress: bool, desc: str):
    starts = range(0, total, size)
    if progress:

        starts = progress_bar(starts, desc=desc, leave=False)
    for start in starts:
        yield start, min(total, start + size)


def _accumulate(ops, G: Tensor, square: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Per-column samples gᵀ A_i g [b, k] and (A_i g)ᵀ (A_j g) [b, k, k] in float64."""
    Y = [op.apply(G).to(torch.float64) for op in ops]
    Gd = G.to(torch.float64)
    tr = torch.stack(
        [(Gd * y).sum(0) if sq else torch.full((G.shape[1],), float("nan"), dtype=torch.float64, device=G.device)
         for y, sq in zip(Y, square)],
        dim=1,
    )
    Ys = torch.stack(Y, dim=0)  # [k, m, b]
    inner = torch.einsum("imb,jmb->bij", Ys, Ys)
    return tr.cpu().numpy(), inner.cpu().numpy()


def probe_moments(
    ops: list[KPOperator],
    budget: int | None,
    method: str,
    generator: torch.Generator | None,
    distribution: str = "rademacher",
    block_size: int = DEFAULT_BLOCK,
    progress: bool = False,
) -> Moments:
    """Exact parts and residual samples for ``method`` in {"exact", "hutchinson", "hutch++"}.

    ``budget`` is the number of products with *each* operator. Hutch++ with
    k operators uses s = budget // (k + 2) sketch columns, an orthonormal
    basis Q of the k·s columns A_i S, k·s products for A_i Q, and the
    remaining g = budget − (k + 1) s products on deflated probes.
    """
    n = ops[0].shape[1]
    k = len(ops)
    dtype, device = ops[0].torch_dtype, ops[0].device
    square = [op.shape[0] == op.shape[1] for op in ops]
    exact_tr = np.zeros(k)
    exact_in = np.zeros((k, k))
    for i, sq in enumerate(square):
        if not sq:
            exact_tr[i] = np.nan
    if method == "exact":
        for start, stop in _blocks(n, block_size, progress, "exact (basis)"):
            E = basis_columns(n, start, stop, dtype, device)
            tr, inner = _accumulate(ops, E, square)
            exact_tr += tr.sum(0)
            exact_in += inner.sum(0)
        return Moments(exact_tr, exact_in, np.zeros((0, k)), np.zeros((0, k, k)), 0, n, "exact")

    Q = None
    used = 0
    if method == "hutch++":
        if not all(square):
            raise ValueError("method: 'hutch++' deflates with the range of the operator and needs square operators")
        s = budget // (k + 2)
        if s < 1:
            raise ValueError(
                f"num_matvecs: Hutch++ needs at least {k + 2} products per operator here "
                f"(a sketch, its basis and one residual probe), got {budget}"
            )
        S = draw_probes((n, s), dtype, device, generator, distribution)
        Q = torch.linalg.qr(torch.cat([op.apply(S) for op in ops], dim=1))[0]
        AQ = [op.apply(Q).to(torch.float64) for op in ops]
        Qd = Q.to(torch.float64)
        for i in range(k):
            exact_tr[i] = float((Qd * AQ[i]).sum())
            for j in range(k):
                exact_in[i, j] = float((AQ[i] * AQ[j]).sum())
        used = s + Q.shape[1]
        g = budget - used
    elif method == "hutchinson":
        g = budget
    else:  # pragma: no cover - validated by callers
        raise ValueError(f"method: unknown {method!r}")

    trs, inners = [], []
    for start, stop in _blocks(g, block_size, progress, method):
        G = draw_probes((n, stop - start), dtype, device, generator, distribution)
        if Q is not None:
            G = G - Q @ (Q.T @ G)
        tr, inner = _accumulate(ops, G, square)
        trs.append(tr)
        inners.append(inner)
    trace_samples = np.concatenate(trs) if trs else np.zeros((0, k))
    inner_samples = np.concatenate(inners) if inners else np.zeros((0, k, k))
    return Moments(exact_tr, exact_in, trace_samples, inner_samples, g, used + g, method)
