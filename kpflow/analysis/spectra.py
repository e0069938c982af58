"""Top spectra of symmetric operators and singular values, matrix-free.

Three solvers share one front end, :func:`top_eigs`:

* ``"arpack"``: SciPy's ``eigsh`` (implicitly restarted Lanczos) on the
  CPU, with a seeded start vector and BLAS threads limited around it;
* ``"block_krylov"``: a torch-native restarted block Krylov method with
  Rayleigh–Ritz, which applies the operator to [n, b] blocks (one batched
  ``op.apply``) on the operator's own device, never visiting NumPy;
* ``"dense"``: the whole matrix from n products and ``torch.linalg.eigh``,
  for tiny n or when k ≥ n − 1.

All three return a :class:`SpectrumResult` with the same conventions:
values in descending order, eigenvector signs fixed, values under the
precision floor flagged (and reported as exactly 0 for a PSD operator),
the number of operator products counted column by column.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import Tensor

from .._progress import progress_bar
from ..operator import KPOperator, ProductOperator
from ._operators import as_operator, gram_factor, is_psd, rank_bound, trajectory_shape
from ._probes import SeedLike, basis_columns, draw_probes, make_generator
from ._threads import blas_threads as _limit_blas
from .dense import DenseOperator

__all__ = ["SpectrumResult", "top_eigs", "singular_values"]

METHODS = ("auto", "arpack", "block_krylov", "dense")
WHICH = ("LA", "LM")

#: Largest n for which ``method="auto"`` builds the dense matrix.
DENSE_LIMIT = 512


@dataclass
class SpectrumResult:
    """Part of a spectrum, with everything needed to judge it.

    Attributes
    ----------
    values : numpy.ndarray
        float64 [k]: eigenvalues in descending order (``which="LA"``; by
        magnitude for ``"LM"``), or singular values (descending for the
        largest, ascending for the smallest).
    vectors : Tensor or None
        The matching (left singular) vectors on the operator's device, in its
        dtype, shaped [k, B, T, S] when the space is a trajectory space, else
        [k, n]. ``vectors[i]`` belongs to ``values[i]``.
    num_matvecs : int
        Products of one column with the operator (for singular values: with
        the operator or its adjoint) that the solver used.
    converged : numpy.ndarray
        bool [k]: whether each pair met the tolerance.
    below_floor : numpy.ndarray
        bool [k]: values at or below the precision floor (not resolved; for a
        PSD operator they are reported as exactly 0), and the zero padding
        beyond a known rank.
    floor : float
        The precision floor, ``floor_factor · eps(dtype) · max|value|``.
    method : str
        The solver that produced the values.
    residuals : numpy.ndarray or None
        ‖A u − λ u‖ of each pair when the solver computed it.
    right_vectors : Tensor or None
        Right singular vectors [k, ...] (singular values only).

    Notes
    -----
    floor = floor_factor · eps(dtype) · max_i |λ_i| (floor_factor = √n by
    default); below_floor[i] = |λ_i| ≤ floor. See :func:`top_eigs`.
    """

    values: np.ndarray
    vectors: Tensor | None
    num_matvecs: int
    converged: np.ndarray
    below_floor: np.ndarray
    floor: float
    method: str
    residuals: np.ndarray | None = None
    right_vectors: Tensor | None = None
    notes: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        vals = np.array2string(self.values, precision=4, max_line_width=100)
        return (
            f"SpectrumResult(values={vals}, method={self.method!r}, num_matvecs={self.num_matvecs}, "
            f"converged={int(self.converged.sum())}/{len(self.converged)}, "
            f"below_floor={int(self.below_floor.sum())})"
        )


class _Counter:
    """Applies an operator to torch blocks and counts the columns."""

    def __init__(self, op: KPOperator) -> None:
        self.op = op
        self.count = 0

    def __call__(self, X: Tensor) -> Tensor:
        self.count += 1 if X.dim() == 1 else X.shape[1]
        Y = self.op.apply(X)
        # A solver fed inf/nan fails far from the cause (ARPACK error -9999,
        # LAPACK "illegal value"): say what happened instead. The sum is a
        # cheap screen (one reduction, ~30× faster than isfinite().all() on
        # the hot path); the exact test runs only when it trips.
        if not bool(torch.isfinite(Y.sum())) and not bool(torch.isfinite(Y).all()):
            raise FloatingPointError(
                f"op: a product with the operator returned non-finite values (inf or nan in {Y.dtype}) after "
                f"{self.count} product(s): its entries overflow; analyse in float64 or at a less extreme point"
            )
        return Y


def _check_k(k, n: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(k).__name__}")
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"{name}: expected 1 <= {name} <= n = {n}, got {k}")
    return k


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 1e-9


def _fix_signs(V: Tensor) -> Tensor:
    """Make the largest-magnitude entry of every column positive (first one on ties)."""
    if V.numel() == 0:
        return V
    idx = V.abs().argmax(dim=0)
    signs = torch.sign(V[idx, torch.arange(V.shape[1], device=V.device)])
    signs[signs == 0] = 1
    return V * signs


# ---------------------------------------------------------------- solvers
def _dense(apply: _Counter, k: int, which: str, want_vectors: bool, block: int = 256):
    op = apply.op
    n = op.shape[0]
    cols = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        E = basis_columns(n, start, stop, op.torch_dtype, op.device)
        cols.append(apply(E))
    M = torch.cat(cols, dim=1).to(torch.float64)
    asym = torch.linalg.matrix_norm(M - M.T) / max(float(torch.linalg.matrix_norm(M)), 1e-300)
    if asym > 1e3 * torch.finfo(op.torch_dtype).eps * math.sqrt(n):
        warnings.warn(
            f"op: the operator is not symmetric (relative asymmetry {float(asym):.2e}); "
            "top_eigs returns the eigenvalues of its symmetric part (A + Aᵀ)/2",
            stacklevel=3,
        )
    w, U = torch.linalg.eigh((M + M.T) / 2)
    key = w if which == "LA" else w.abs()
    order = torch.argsort(key, descending=True)[:k]
    values = w[order].cpu().numpy()
    vectors = U[:, order].to(op.torch_dtype) if want_vectors else None
    return values, vectors, np.ones(len(values), bool), None


def _arpack(apply: _Counter, k, which, want_vectors, v0, tol, maxiter, ncv, threads):
    op = apply.op
    n = op.shape[0]

    def mv(x):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=op.dtype).reshape(-1)).to(op.device)
        return apply(x).detach().cpu().numpy().copy()

    def mm(X):
        X = torch.from_numpy(np.ascontiguousarray(X, dtype=op.dtype)).to(op.device)
        return apply(X).detach().cpu().numpy().copy()

    lin = LinearOperator((n, n), matvec=mv, matmat=mm, dtype=op.dtype)
    converged_all = True
    with _limit_blas(threads):
        try:
            out = eigsh(
                lin, k=k, which=which, v0=v0, tol=tol, maxiter=maxiter, ncv=ncv,
                return_eigenvectors=want_vectors,
            )
        except ArpackNoConvergence as exc:
            converged_all = False
            out = (exc.eigenvalues, exc.eigenvectors) if want_vectors else exc.eigenvalues
            warnings.warn(
                f"top_eigs: ARPACK converged only {len(exc.eigenvalues)} of k={k} eigenpairs "
                f"within maxiter={maxiter}; returning the converged ones "
                "(raise maxiter or ncv, loosen tol, or use method='block_krylov')",
                stacklevel=3,
            )
    w, U = (out if want_vectors else (out, None))
    w = np.asarray(w, dtype=np.float64)
    key = w if which == "LA" else np.abs(w)
    order = np.argsort(-key, kind="stable")
    vectors = None
    if want_vectors and U is not None:
        vectors = torch.from_numpy(np.ascontiguousarray(U[:, order], dtype=op.dtype)).to(op.device)
    return w[order], vectors, np.ones(len(w), bool), None, converged_all


def _orthonormal_block(W: Tensor, Q: Tensor) -> Tensor:
    """An orthonormal basis of W orthogonal to the orthonormal columns Q.

    Classical Gram–Schmidt twice ("twice is enough"), then Householder QR;
    when W lay (numerically) inside span(Q), the normalized remainder is
    re-projected once more, since its rounding noise need not be orthogonal
    to Q.
    """
    norms = torch.linalg.vector_norm(W, dim=0)
    for _ in range(2):
        W = W - Q @ (Q.T @ W)
    Qn, R = torch.linalg.qr(W)
    kept = torch.diagonal(R).abs()
    if bool((kept <= 1e-3 * norms.max()).any()):
        Qn = torch.linalg.qr(Qn - Q @ (Q.T @ Qn))[0]
    return Qn


def _block_krylov(apply: _Counter, k, which, gen, tol, maxiter, block, depth, keep, progress):
    """Thick-restarted block Krylov with Rayleigh–Ritz, torch-native (see top_eigs Notes)."""
    op = apply.op
    n = op.shape[0]
    dtype, device = op.torch_dtype, op.device
    b = block
    width = max(keep, b) + depth * b
    Qbuf = torch.empty(n, width, dtype=dtype, device=device)
    AQbuf = torch.empty(n, width, dtype=dtype, device=device)
    U = torch.linalg.qr(draw_probes((n, b), dtype, device, gen, "gaussian"))[0]
    Qbuf[:, :b], AQbuf[:, :b] = U, apply(U)
    c = b  # columns of the basis in use
    bar = None
    if progress:

        bar = progress_bar(total=maxiter, desc="block Krylov", leave=False)
    values = vectors = res = None
    conv = np.zeros(k, bool)
    for _ in range(maxiter):
        W = AQbuf[:, :b]  # A times the current best b vectors: the next Krylov block, for free
        for _ in range(depth):
            Qn = _orthonormal_block(W, Qbuf[:, :c])
            W = apply(Qn)
            Qbuf[:, c : c + b], AQbuf[:, c : c + b] = Qn, W
            c += b
        Q, AQ = Qbuf[:, :c], AQbuf[:, :c]
        H = (Q.T @ AQ).to(torch.float64)
        w, S = torch.linalg.eigh((H + H.T) / 2)
        key = w if which == "LA" else w.abs()
        order = torch.argsort(key, descending=True)[: max(keep, b)]
        w, S = w[order], S[:, order].to(dtype)
        U, AU = Q @ S, AQ @ S
        R = AU[:, :k] - U[:, :k] * w[:k].to(dtype)
        res = torch.linalg.vector_norm(R.to(torch.float64), dim=0).cpu().numpy()
        scale = float(w.abs().max()) if w.numel() else 0.0
        conv = res <= tol * max(scale, torch.finfo(dtype).tiny)
        values, vectors = w[:k].cpu().numpy(), U[:, :k]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(converged=f"{int(conv.sum())}/{k}")
        if conv.all():
            break
        # Thick restart: the best Ritz vectors and their products start the next round.
        c = U.shape[1]
        Qbuf[:, :c], AQbuf[:, :c] = U, AU
    if bar is not None:
        bar.close()
    return values, vectors, conv, res


# --------------------------------------------------------------- front end
def top_eigs(
    op,
    k: int,
    *,
    return_vectors: bool = False,
    method: str = "auto",
    which: str = "LA",
    psd: bool | None = None,
    seed: SeedLike = None,
    v0: np.ndarray | Tensor | None = None,
    tol: float | None = None,
    maxiter: int | None = None,
    ncv: int | None = None,
    block_size: int | None = None,
    depth: int = 4,
    keep: int | None = None,
    rank: int | None = None,
    floor: float | None = None,
    floor_factor: float | None = None,
    blas_threads: int | None = 1,
    dense_limit: int = DENSE_LIMIT,
    progress: bool = False,
    dual: bool | None = None,
) -> SpectrumResult:
    """The k top eigenvalues (and eigenvectors) of a symmetric operator.

    Parameters
    ----------
    op : KPOperator, LinearOperator, numpy.ndarray or Tensor
        A symmetric (n, n) operator: K, P K P*, ``P @ P.H``, or any matrix.
    k : int
        Number of eigenpairs, 1 ≤ k ≤ n.
    return_vectors : bool
        Also return eigenvectors, [k, B, T, S] for a trajectory-space operator.
    method : {"auto", "arpack", "block_krylov", "dense"}
        "auto": dense when n ≤ ``dense_limit`` or k ≥ n − 1; otherwise ARPACK
        for CPU operators and the torch-native block Krylov solver on GPUs.
    which : {"LA", "LM"}
        Largest algebraic (default; the only sensible choice for PSD
        operators, PITFALLS 7) or largest magnitude. Smallest-magnitude
        modes of a PSD operator are not offered (they never converge on K's
        null space); see :func:`singular_values` with ``which="smallest"``.
    psd : bool, optional
        Whether the operator is positive semi-definite; inferred from the
        structure when omitted (K, P K P*, X Xᵀ products, dense ``psd=True``).
        A PSD spectrum is never reported negative.
    seed : None, int, numpy.random.Generator or torch.Generator
        Start vector (ARPACK) or start block (block Krylov). With a seed the
        result repeats exactly; eigenvector signs are fixed by convention
        either way.
    v0 : array, optional
        ARPACK start vector [n]; overrides ``seed``.
    tol : float, optional
        ARPACK: its relative tolerance (0 = machine precision of the dtype).
        Block Krylov: residual ‖A u − λ u‖ ≤ tol · max|λ| (default 1e-4 in
        float32, 1e-9 in float64).
    maxiter : int, optional
        ARPACK iterations (SciPy's default 10 n) or block Krylov restarts (100).
    ncv : int, optional
        ARPACK Lanczos vectors (default max(2k + 1, 20), at most n).
    block_size : int, optional
        Block Krylov block width b ≥ k (default k).
    depth : int
        Block Krylov: new blocks per restart (b · depth products each).
    keep : int, optional
        Block Krylov: Ritz vectors kept across a restart (default 5 b).
    rank : int, optional
        Known bound on the rank; default from the structure (p for K and
        P K P*). Pairs beyond it are not computed but reported as zeros.
    floor, floor_factor : float, optional
        The precision floor is ``floor`` if given, else
        ``floor_factor · eps(dtype) · max|λ|`` with ``floor_factor = √n`` by
        default (the rounding noise of one float product with the operator).
    blas_threads : int or None
        BLAS threads of NumPy/SciPy while ARPACK runs (PITFALLS 13); None
        leaves them alone.
    dense_limit : int
        Largest n that ``method="auto"`` solves densely.
    progress : bool
        Show a tqdm bar over block Krylov restarts.
    dual : bool, optional
        ARPACK on the p × p Gram operator c Fᵀ F instead of A = c F Fᵀ
        (K = J_θ J_θᵀ: F = J_θ; P K P*: F = P J_θ). Default (None): when the
        structure shows the factor, p ≤ n / 2 and no ``v0`` is given. The
        nonzero spectrum is the same; ARPACK's own work per product is
        O(length · ncv), so the shorter vectors cut its overhead by n / p.

    Returns
    -------
    SpectrumResult
        ``values`` (descending), ``vectors``, ``num_matvecs``, ``converged``,
        ``below_floor``, ``floor``, ``method``.

    Warns
    -----
    UserWarning
        When k exceeds the known rank or the numerical rank (the excess is
        reported as exact zeros), when ARPACK or block Krylov do not converge
        (the converged pairs are returned), or when a PSD operator shows a
        negative value beyond the floor.

    Notes
    -----
    Eigenpairs A u_i = λ_i u_i, ‖u_i‖ = 1, λ_1 ≥ λ_2 ≥ … . Sign convention:
    the entry of u_i with the largest magnitude is positive. Values with
    |λ_i| ≤ floor = c · eps · max|λ| are not resolved by floating-point
    products (ARPACK returns a spurious plateau near eps·λ_max where the
    truth is 0, PITFALLS 8); they are flagged in ``below_floor`` and, for PSD
    operators, replaced by 0. A PSD operator of rank r < k (K = J_θ J_θᵀ has
    r ≤ p) has n − r zero eigenvalues: those are reported as zeros with a
    warning, never an error; beyond a *known* rank bound the eigenvectors are
    not computed and returned as zero vectors.

    Dual solve: with A = c F Fᵀ, F of shape (n, p), the eigenpairs (λ, v)
    of c Fᵀ F give those of A as (λ, F v / ‖F v‖) for λ > 0 (‖F v‖² = λ / c).
    Each product with c Fᵀ F costs one product with F and one with Fᵀ, as
    one product with A does; ``num_matvecs`` counts them.

    The block Krylov solver (thick-restarted) keeps ℓ orthonormal Ritz
    vectors U with their products A U, extends them with q = ``depth``
    Krylov blocks, Q = orth[U, A U_b, A² U_b, …, A^q U_b] (U_b the best b
    Ritz vectors; block Gram–Schmidt, twice), forms the Rayleigh quotient
    H = Qᵀ (A Q) from the products it has made, and takes the top Ritz pairs
    (θ_i, Q s_i) of H. Pairs with ‖A u_i − θ_i u_i‖ ≤ tol · max|θ| are
    converged; otherwise the best ℓ Ritz vectors and their products
    A U = (A Q) S start the next round, which costs b · q products. Every
    product is one ``op.apply`` on an [n, b] tensor on the operator's
    device.
    """
    A = as_operator(op, square=True)
    n = A.shape[0]
    k = _check_k(k, n)
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if which not in WHICH:
        raise ValueError(
            f"which: expected 'LA' (largest algebraic) or 'LM' (largest magnitude), got {which!r}; "
            "for the smallest singular values of P use kpflow.singular_values(P, k, which='smallest')"
        )
    psd = is_psd(A) if psd is None else bool(psd)
    if psd:
        which = "LA"
    r = rank_bound(A) if rank is None else int(rank)
    if not 0 <= r <= n:
        raise ValueError(f"rank: expected 0 <= rank <= n = {n}, got {rank}")
    notes: list[str] = []
    k_solve = min(k, r)
    apply = _Counter(A)
    want = bool(return_vectors)

    if method == "auto":
        if n <= dense_limit or k_solve >= n - 1:
            method = "dense"
        elif A.device.type == "cpu":
            method = "arpack"
        else:
            method = "block_krylov"
    used = method
    residuals = None
    if k_solve == 0:
        values, conv = np.zeros(0), np.zeros(0, bool)
        vectors = torch.zeros(n, 0, dtype=A.torch_dtype, device=A.device) if want else None
        used = "none (rank 0)"
    elif method == "dense" or (method == "arpack" and k_solve >= n - 1):
        if method == "arpack":
            notes.append(f"k={k_solve} >= n-1={n - 1}: ARPACK cannot, solved densely")
            used = "dense (fallback: k >= n - 1)"
        values, vectors, conv, residuals = _dense(apply, k_solve, which, want)
    elif method == "arpack" and _use_dual(A, dual, v0, k_solve, which):
        F, c = gram_factor(A)
        p = F.shape[1]
        D = F.H @ F
        if c != 1.0:
            D = c * D
        dual_apply = _Counter(D)
        values, Vd, conv, residuals, _ = _arpack(
            dual_apply, k_solve, which, want, _start_vector(seed, p, A), 0.0 if tol is None else tol, maxiter,
            _ncv(ncv, p, k_solve), blas_threads,
        )
        apply.count = dual_apply.count
        used = "arpack (dual: c Fᵀ F)"
        vectors = None
        if want:
            U = F.apply(Vd)
            norms = torch.linalg.vector_norm(U, dim=0)
            vectors = torch.where(norms > 0, U / torch.where(norms > 0, norms, 1), torch.zeros_like(U))
    elif method == "arpack":
        if v0 is None:
            v0 = _start_vector(seed, n, A)
        else:
            v0 = np.asarray(v0.detach().cpu() if isinstance(v0, Tensor) else v0, dtype=A.dtype).reshape(-1)
            if v0.shape != (n,):
                raise ValueError(f"v0: expected shape ({n},), got {v0.shape}")
        values, vectors, conv, residuals, _ = _arpack(
            apply, k_solve, which, want, v0, 0.0 if tol is None else tol, maxiter, _ncv(ncv, n, k_solve), blas_threads
        )
    else:  # block_krylov
        gen = make_generator(seed, A.device)
        b = min(n, k_solve) if block_size is None else int(block_size)
        if b < k_solve:
            raise ValueError(f"block_size: expected at least k = {k_solve}, got {b}")
        if b * (depth + 6) >= n:
            used = "dense (fallback: Krylov basis would span the space)"
            values, vectors, conv, residuals = _dense(apply, k_solve, which, want)
        else:
            keep_ = min(n - b * (depth + 1), max(5 * b, k_solve + b)) if keep is None else int(keep)
            values, vectors, conv, residuals = _block_krylov(
                apply, k_solve, which, gen, _default_tol(A.torch_dtype) if tol is None else tol,
                100 if maxiter is None else maxiter, b, depth, keep_, progress,
            )
            if not conv.all():
                warnings.warn(
                    f"top_eigs: block Krylov converged {int(conv.sum())} of k={k_solve} pairs within "
                    f"maxiter={100 if maxiter is None else maxiter} restarts; all are returned, see "
                    "result.converged (raise maxiter, depth or block_size, or loosen tol)",
                    stacklevel=2,
                )
            if not want:
                vectors = None

    return _finish(
        A, values, vectors, conv, residuals, k, k_solve, r, psd, which, floor, floor_factor,
        apply.count, used, notes, want,
    )


def _start_vector(seed, n: int, A) -> np.ndarray:
    """ARPACK's seeded Gaussian start vector of length n."""
    gen = make_generator(seed, A.device)
    return draw_probes((n,), A.torch_dtype, A.device, gen, "gaussian").cpu().numpy()


def _ncv(ncv: int | None, n: int, k: int) -> int:
    """ARPACK's Lanczos vectors: SciPy's default max(2k + 1, 20), at most n."""
    return min(n, max(2 * k + 1, 20)) if ncv is None else ncv


def _use_dual(A, dual, v0, k_solve: int, which: str) -> bool:
    """Whether top_eigs solves on the Gram operator c Fᵀ F (see its ``dual`` parameter)."""
    fac = gram_factor(A) if dual is not False and which == "LA" else None
    if fac is None:
        if dual:
            raise ValueError("dual: the operator has no known factor A = c F Fᵀ (K, P K P*, X Xᵀ), or which != 'LA'")
        return False
    p = fac[0].shape[1]
    if dual:
        if v0 is not None:
            raise ValueError("dual: v0 is a start vector in the operator's space; give one or the other")
        if k_solve >= p - 1:
            raise ValueError(f"dual: k = {k_solve} must be below p - 1 = {p - 1} for ARPACK on the p x p Gram operator")
        return True
    return v0 is None and 2 * p <= A.shape[0] and k_solve < p - 1


def _finish(
    A, values, vectors, conv, residuals, k, k_solve, r, psd, which, floor, floor_factor, count, used, notes, want
):
    n = A.shape[0]
    values = np.asarray(values, dtype=np.float64).copy()
    eps = float(torch.finfo(A.torch_dtype).eps)
    scale = float(np.abs(values).max()) if len(values) else 0.0
    if floor is None:
        floor = (math.sqrt(n) if floor_factor is None else float(floor_factor)) * eps * scale
    floor = float(floor)
    below = np.abs(values) <= floor
    if psd:
        negative = values < -floor
        if negative.any():
            warnings.warn(
                f"op: declared positive semi-definite, but {int(negative.sum())} eigenvalue(s) are below "
                f"-floor (min {values.min():.3e}, floor {floor:.3e}); they are reported as 0",
                stacklevel=3,
            )
        below = below | negative
        values[below] = 0.0
        if below.any():
            warnings.warn(
                f"top_eigs: {int(below.sum())} of the k={k} eigenvalues are at or below the precision floor "
                f"{floor:.3e} (numerical rank {int((~below).sum())} < k); they are reported as 0",
                stacklevel=3,
            )
    if vectors is not None:
        vectors = _fix_signs(vectors)
    pad = k - k_solve
    conv = np.asarray(conv, bool)
    if pad > 0 and len(values) == k_solve:
        warnings.warn(
            f"top_eigs: k={k} exceeds the rank bound {r} of the operator (rank(J_θ J_θᵀ) ≤ p); the "
            f"{pad} eigenvalue(s) beyond it are reported as 0 (their eigenvectors as zero vectors)",
            stacklevel=3,
        )
        values = np.concatenate([values, np.zeros(pad)])
        below = np.concatenate([below, np.ones(pad, bool)])
        conv = np.concatenate([conv, np.ones(pad, bool)])
        if residuals is not None:
            residuals = np.concatenate([residuals, np.zeros(pad)])
        if vectors is not None:
            vectors = torch.cat([vectors, vectors.new_zeros(n, pad)], dim=1)
    if want and vectors is not None:
        shp = trajectory_shape(A, n)
        vectors = vectors.T.reshape(-1, *shp) if shp is not None else vectors.T.contiguous()
    return SpectrumResult(
        values=values,
        vectors=vectors if want else None,
        num_matvecs=count,
        converged=conv,
        below_floor=below,
        floor=floor,
        method=used,
        residuals=residuals,
        notes=notes,
    )


# --------------------------------------------------------- singular values
def singular_values(
    op,
    k: int,
    *,
    which: str = "largest",
    inverse=None,
    return_vectors: bool = False,
    method: str = "auto",
    seed: SeedLike = None,
    **kwargs,
) -> SpectrumResult:
    """The k largest or smallest singular values of an operator (J_θ, P, P⁻¹, …).

    Parameters
    ----------
    op : KPOperator, LinearOperator, numpy.ndarray or Tensor
        An (m, n) operator.
    k : int
        Number of singular values.
    which : {"largest", "smallest"}
        "smallest" needs a square invertible operator and computes
        σ_min(A) = 1 / σ_max(A⁻¹) from the inverse.
    inverse : operator, optional
        A⁻¹ for ``which="smallest"``; default ``op.inverse()`` (kpflow's P and
        P⁻¹ have one, and P⁻¹ needs no solve), or the dense inverse of a
        matrix.
    return_vectors : bool
        Also return left (``vectors``) and right (``right_vectors``) singular
        vectors, reshaped to [k, B, T, S] where they live in trajectory space.
    method, seed, **kwargs
        Passed to :func:`top_eigs` on the Gram operator.

    Returns
    -------
    SpectrumResult
        ``values`` are σ_1 ≥ σ_2 ≥ … (largest) or σ_min ≤ … (smallest);
        ``num_matvecs`` counts products with A and Aᵀ (or A⁻¹ and A⁻ᵀ).

    Notes
    -----
    σ_i(A)² are the eigenvalues of the Gram operator on the smaller side,
    A Aᵀ (m ≤ n, its eigenvectors are the left singular vectors u_i) or
    AᵀA (its eigenvectors are the right ones v_i); the other side follows
    from u_i = A v_i / σ_i or v_i = Aᵀ u_i / σ_i (k more products).
    Squaring halves the relative precision of small σ: the floor on σ is
    √(floor of the Gram operator). For the smallest, with B = A⁻¹ = V Σ⁻¹ Uᵀ,
    σ_min(A) = 1/σ_max(B), and the right singular vectors of B (eigenvectors
    of BᵀB) are the left singular vectors of A.
    """
    A = as_operator(op)
    if which not in ("largest", "smallest"):
        raise ValueError(f"which: expected 'largest' or 'smallest', got {which!r}")
    m, n = A.shape
    k = _check_k(k, min(m, n))
    if which == "smallest":
        if m != n:
            raise ValueError(f"op: the smallest singular values need a square operator, got shape {A.shape}")
        if inverse is None:
            if hasattr(A, "inverse"):
                B = A.inverse()
            elif isinstance(A, DenseOperator):
                B = DenseOperator(torch.linalg.inv(A.matrix))
            else:
                raise ValueError(
                    "inverse: pass the inverse operator for which='smallest' "
                    f"({type(A).__name__} has no inverse() method)"
                )
        else:
            B = as_operator(inverse, "inverse", square=True)
            if B.shape != A.shape:
                raise ValueError(f"inverse: expected shape {A.shape}, got {B.shape}")
        res = _largest_singular(B, k, return_vectors, method, seed, side="right", **kwargs)
        with np.errstate(divide="ignore"):
            values = 1.0 / res.values
        left, right = res.right_vectors, res.vectors  # of B: swap sides for A
        vshape = trajectory_shape(A, n)
        return SpectrumResult(
            values=values,
            vectors=_reshape(left, vshape) if return_vectors else None,
            right_vectors=_reshape(right, vshape) if return_vectors else None,
            num_matvecs=res.num_matvecs,
            converged=res.converged,
            below_floor=res.below_floor,
            floor=(1.0 / res.floor) if res.floor > 0 else math.inf,
            method=res.method + " on the inverse",
            residuals=res.residuals,
            notes=res.notes + ["values are 1/σ_max(A⁻¹); below_floor marks σ(A⁻¹) at its floor (σ(A) unresolved)"],
        )
    return _largest_singular(A, k, return_vectors, method, seed, side="auto", **kwargs)


def _reshape(V: Tensor | None, shape) -> Tensor | None:
    if V is None:
        return None
    return V.reshape(V.shape[0], *shape) if shape is not None else V


def _largest_singular(A: KPOperator, k, return_vectors, method, seed, side, **kwargs) -> SpectrumResult:
    m, n = A.shape
    use_left = (m <= n) if side == "auto" else (side == "left")
    G = ProductOperator([A, A.H]) if use_left else ProductOperator([A.H, A])
    res = top_eigs(G, k, return_vectors=True, method=method, seed=seed, psd=True, rank=min(m, n), **kwargs)
    count = 2 * res.num_matvecs
    lam = np.clip(res.values, 0.0, None)
    sigma = np.sqrt(lam)
    U = res.vectors.reshape(len(lam), -1).T  # [dim, k], flat
    left = right = None
    if return_vectors:
        inv = torch.tensor(
            np.where(sigma > 0, 1.0 / np.where(sigma > 0, sigma, 1.0), 0.0), dtype=A.torch_dtype, device=A.device
        )
        if use_left:
            left = U
            right = A.apply_adjoint(U.contiguous()) * inv
        else:
            right = U
            left = A.apply(U.contiguous()) * inv
        count += len(lam)
        left, right = left.T.contiguous(), right.T.contiguous()
    return SpectrumResult(
        values=sigma,
        vectors=_reshape(left, trajectory_shape(A, m)) if return_vectors else None,
        right_vectors=_reshape(right, trajectory_shape(A, n)) if return_vectors else None,
        num_matvecs=count,
        converged=res.converged,
        below_floor=res.below_floor,
        floor=math.sqrt(res.floor),
        method=res.method + (" on A Aᵀ" if use_left else " on AᵀA"),
        residuals=res.residuals,
        notes=res.notes,
    )
