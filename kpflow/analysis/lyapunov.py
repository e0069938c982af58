"""Lyapunov spectrum along a recorded trajectory, and the Kaplan–Yorke dimension."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.func import jvp

from .._progress import progress_bar
from ..trajectory import Trajectory
from ._probes import SeedLike, make_generator

__all__ = ["LyapunovResult", "lyapunov_spectrum", "kaplan_yorke_dimension", "positive_qr"]


def positive_qr(V: Tensor) -> tuple[Tensor, Tensor]:
    """Reduced QR with a non-negative diagonal of R, batched over leading dimensions.

    Notes
    -----
    Householder QR (LAPACK, torch) returns R with diagonal entries of either
    sign, so log(diag R) would be NaN. With D = diag(sign R_ii) (+1 where
    R_ii = 0), V = (Q D)(D R) is again a QR factorization and D R has a
    non-negative diagonal; it is unique for full-rank V.
    """
    Q, R = torch.linalg.qr(V)
    d = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    d = torch.where(d == 0, torch.ones_like(d), d)
    return Q * d.unsqueeze(-2), R * d.unsqueeze(-1)


@dataclass
class LyapunovResult:
    """Lyapunov exponents along a trajectory (natural log, per step).

    Attributes
    ----------
    exponents : numpy.ndarray
        [k] exponents pooled over trials (mean of ``per_trial``), in the
        order of the QR frame (descending once the frame has converged).
    std_error : numpy.ndarray
        [k] standard error over the B · W finite-time windows (NaN with
        fewer than two).
    per_trial : numpy.ndarray
        [B, k] exponents of each trial.
    per_trial_std_error : numpy.ndarray
        [B, k] standard error over each trial's W windows (NaN if W < 2).
    finite_time : numpy.ndarray
        [B, W, k] finite-time exponents of consecutive windows.
    window : int
        Steps per window.
    num_steps : int
        Steps accumulated: every exponent is a sum of log|R_ii| over exactly
        these steps divided by this number.
    state_warmup, frame_warmup, reorthonormalize_every : int
        The settings used.

    Notes
    -----
    per_trial[b, i] = (1/n) Σ_t log R_t,ii of trial b; finite_time[b, w, i]
    the same sum over window w divided by ``window``; exponents the mean over
    trials. See :func:`lyapunov_spectrum`.
    """

    exponents: np.ndarray
    std_error: np.ndarray
    per_trial: np.ndarray
    per_trial_std_error: np.ndarray
    finite_time: np.ndarray
    window: int
    num_steps: int
    state_warmup: int
    frame_warmup: int
    reorthonormalize_every: int

    def kaplan_yorke(self) -> float:
        """Kaplan–Yorke dimension of the pooled exponents."""
        return kaplan_yorke_dimension(self.exponents)

    def __repr__(self) -> str:
        ex = np.array2string(self.exponents, precision=4, max_line_width=100)
        return f"LyapunovResult(exponents={ex}, num_steps={self.num_steps}, trials={self.per_trial.shape[0]})"


def _nonneg_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value!r}")
    return int(value)


def lyapunov_spectrum(
    trajectory: Trajectory,
    k: int | None = None,
    *,
    state_warmup: int = 0,
    frame_warmup: int = 0,
    window: int | None = None,
    reorthonormalize_every: int = 1,
    initial: Tensor | None = None,
    seed: SeedLike = 0,
    qr_dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> LyapunovResult:
    """The k leading Lyapunov exponents of the state dynamics along a recorded trajectory.

    Parameters
    ----------
    trajectory : Trajectory
        The recorded trajectory (inputs and states give A_t = ∂f/∂z).
    k : int, optional
        Number of exponents, 1 ≤ k ≤ S (default S, the full spectrum).
    state_warmup : int
        Steps of the trajectory skipped entirely (its transient from h0).
    frame_warmup : int
        Further steps over which the tangent frame is pushed and
        re-orthonormalized but nothing is accumulated, so that it aligns
        with the Lyapunov vectors.
    window : int, optional
        Steps per finite-time window (default max(1, n // 10), n the steps
        accumulated); the windows give the finite-time exponents and the
        standard error. A trailing partial window enters the exponents but
        not the windows.
    reorthonormalize_every : int
        Steps between QR factorizations (default 1, every step: tangent
        vectors that grow 1.5× per step overflow float32 within ~220 steps
        otherwise, PITFALLS 11). ``frame_warmup`` and ``window`` must be
        multiples of it.
    initial : Tensor, optional
        Initial frame [S, k] or [B, S, k] (orthonormalized here); default a
        random orthonormal frame from ``seed``.
    seed : None, int, numpy.random.Generator or torch.Generator
        For the random initial frame (default 0: reproducible).
    qr_dtype : torch.dtype
        Precision of the QR factorizations (default float64); tangents are
        pushed in the trajectory's dtype.
    progress : bool
        tqdm bar over steps.

    Returns
    -------
    LyapunovResult
        Pooled and per-trial exponents, standard errors, finite-time
        exponents per window.

    Raises
    ------
    ValueError
        If the warm-ups leave no step to accumulate (never a silent zero).

    Notes
    -----
    With the frame Q_t (S × k orthonormal, per trial), every step pushes the
    tangent vectors with the Jacobian of the one-step map,
    V = A_t Q_{t−1} = ∂f/∂z (z_{t−1}, x_t; θ) Q_{t−1} (one ``jvp`` of
    ``trajectory.step``, the k columns of every trial's frame batched as
    B·k rows), and factors
    V = Q_t R_t with diag R_t > 0. With n accumulated steps,

        λ_i = (1/n) Σ_t log R_t,ii

    summed in float64: the growth rates of the leading i-dimensional
    volumes, λ_1 ≥ λ_2 ≥ … as n → ∞. The sum of all S exponents is
    (1/n) log|det(A_{t_n} ⋯ A_{t_1})| = (1/n) Σ log σ_i of that product (a
    diagonal-in-time block of P), exactly, at every n. For a linear map
    z_t = W z_{t−1} + U x_t with diagonalizable W, λ_i = log|μ_i| with μ_i
    the eigenvalues of W. Finite-time exponents are the same sums over
    windows; the standard error is sd/√(B·W) over all windows of all trials
    (windows are correlated along a trajectory, so it is optimistic for
    windows shorter than the correlation time).
    """
    if not isinstance(trajectory, Trajectory):
        raise TypeError(f"trajectory: expected a kpflow.Trajectory, got {type(trajectory).__name__}")
    traj = trajectory
    B, T, S = traj.shape
    k = S if k is None else k
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= S:
        raise ValueError(f"k: expected an int with 1 <= k <= S = {S}, got {k!r}")
    k = int(k)
    state_warmup = _nonneg_int(state_warmup, "state_warmup")
    frame_warmup = _nonneg_int(frame_warmup, "frame_warmup")
    r = _nonneg_int(reorthonormalize_every, "reorthonormalize_every")
    if r < 1:
        raise ValueError("reorthonormalize_every: expected a positive int")
    n = T - state_warmup - frame_warmup
    if n < 1:
        raise ValueError(
            f"trajectory: too short for a Lyapunov spectrum: T = {T} steps, state_warmup = {state_warmup} and "
            f"frame_warmup = {frame_warmup} leave {n} step(s) to accumulate; use a longer trajectory or "
            "shorter warm-ups"
        )
    if frame_warmup % r:
        raise ValueError(f"frame_warmup: expected a multiple of reorthonormalize_every = {r}, got {frame_warmup}")
    w = max(1, n // 10) if window is None else window
    if isinstance(w, bool) or not isinstance(w, numbers.Integral) or not 1 <= w <= n:
        raise ValueError(f"window: expected an int with 1 <= window <= {n} (steps accumulated), got {window!r}")
    w = int(w)
    if w % r:
        raise ValueError(f"window: expected a multiple of reorthonormalize_every = {r}, got {w}")

    dtype, device = traj.dtype, traj.device
    if initial is None:
        gen = make_generator(seed, device)
        Q0 = torch.randn(B, S, k, generator=gen, dtype=qr_dtype, device=device)
    else:
        if not isinstance(initial, Tensor):
            raise TypeError(f"initial: expected a Tensor [S, k] or [B, S, k], got {type(initial).__name__}")
        if tuple(initial.shape) == (S, k):
            Q0 = initial.to(qr_dtype).expand(B, S, k)
        elif tuple(initial.shape) == (B, S, k):
            Q0 = initial.to(qr_dtype)
        else:
            raise ValueError(f"initial: expected shape [S, k] = [{S}, {k}] or [B, S, k], got {tuple(initial.shape)}")
    Q = positive_qr(Q0)[0].to(dtype)

    def push(t: int, Qt: Tensor) -> Tensor:
        # A_t applied to the k columns of every trial's frame: the rows of the step map are
        # independent, so the k tangents ride along the batch in one jvp (B·k rows).
        x_t, z_prev = traj.inputs[:, t], traj.previous_states[:, t]
        xk = torch.repeat_interleave(x_t, k, dim=0)
        zk = torch.repeat_interleave(z_prev, k, dim=0)
        qk = Qt.transpose(1, 2).reshape(B * k, S)
        out = jvp(lambda z: traj.step(traj.theta, xk, z), (zk,), (qk,))[1]
        return out.reshape(B, k, S).transpose(1, 2)

    logs = torch.zeros(B, n, k, dtype=torch.float64, device=device)  # log R_ii credited to its QR step
    steps = range(state_warmup, T)
    if progress:

        steps = progress_bar(steps, desc="Lyapunov", leave=False)
    V = Q
    since = 0
    with torch.no_grad():
        for t in steps:
            V = push(t, V)
            since += 1
            rel = t - state_warmup - frame_warmup  # index among accumulated steps
            if since == r or t == T - 1 or rel == -1:
                Qn, R = positive_qr(V.to(qr_dtype))
                if rel >= 0:
                    logs[:, rel] = torch.log(torch.diagonal(R, dim1=-2, dim2=-1).abs())
                V = Qn.to(dtype)
                since = 0
            elif not torch.isfinite(V).all():
                raise FloatingPointError(
                    f"lyapunov_spectrum: tangent vectors overflowed at step {t}; "
                    f"lower reorthonormalize_every (now {r})"
                )

    if not torch.isfinite(logs).all() and torch.isneginf(logs).any():
        warnings.warn(
            "lyapunov_spectrum: a tangent direction was mapped to zero (a singular Jacobian); "
            "the corresponding exponents are -inf",
            stacklevel=2,
        )
    logs = logs.cpu().numpy()
    total = logs.sum(axis=1)
    per_trial = total / n
    W = n // w
    finite = logs[:, : W * w].reshape(B, W, w, k).sum(axis=2) / w
    exponents = per_trial.mean(axis=0)
    with np.errstate(invalid="ignore"):
        if B * W >= 2:
            se = finite.reshape(B * W, k).std(axis=0, ddof=1) / math.sqrt(B * W)
        else:
            se = np.full(k, np.nan)
        per_se = finite.std(axis=1, ddof=1) / math.sqrt(W) if W >= 2 else np.full((B, k), np.nan)
    return LyapunovResult(
        exponents=exponents,
        std_error=se,
        per_trial=per_trial,
        per_trial_std_error=per_se,
        finite_time=finite,
        window=w,
        num_steps=n,
        state_warmup=state_warmup,
        frame_warmup=frame_warmup,
        reorthonormalize_every=r,
    )


def kaplan_yorke_dimension(exponents) -> float:
    """The Kaplan–Yorke (Lyapunov) dimension of a Lyapunov spectrum.

    Parameters
    ----------
    exponents : array-like or LyapunovResult
        Lyapunov exponents (any order; sorted here in descending order).

    Returns
    -------
    float
        D_KY; 0 when λ_1 < 0.

    Warns
    -----
    UserWarning
        When every partial sum is non-negative: D_KY is then at least the
        number of exponents given (a truncated spectrum cannot tell more).

    Notes
    -----
    With λ_1 ≥ λ_2 ≥ … and j the largest index with Σ_{i≤j} λ_i ≥ 0,
    D_KY = j + (Σ_{i≤j} λ_i) / |λ_{j+1}|.
    """
    if isinstance(exponents, LyapunovResult):
        exponents = exponents.exponents
    lam = np.sort(np.asarray(exponents, dtype=np.float64).reshape(-1))[::-1]
    if lam.size == 0:
        raise ValueError("exponents: empty spectrum")
    if np.isnan(lam).any():
        raise ValueError("exponents: contains NaN")
    cum = np.cumsum(lam)
    if cum[0] < 0:
        return 0.0
    negative = np.nonzero(cum < 0)[0]
    if negative.size == 0:
        warnings.warn(
            f"kaplan_yorke_dimension: all {lam.size} partial sums are non-negative; the dimension is at least "
            f"{lam.size} (pass more exponents)",
            stacklevel=2,
        )
        return float(lam.size)
    j = int(negative[0])  # the partial sums of the first j exponents are >= 0
    return float(j + cum[j - 1] / abs(lam[j]))
