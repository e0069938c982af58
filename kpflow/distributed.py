"""Operators of a trajectory whose trials are sharded over ``torch.distributed`` ranks.

A trajectory-space vector [B, T, S] is split along the trials: rank r holds
the trials of :func:`trial_slice` (contiguous, balanced blocks in rank order),
so a global vector is the concatenation of the local ones in rank order. Each
rank records the :class:`~kpflow.Trajectory` of its own trials and builds the
operators on it:

* P, P* and P⁻¹ are block-diagonal over trials, hence **local**: the ordinary
  :class:`~kpflow.PropagationOperator` of the local trajectory is the shard of
  the global one, no communication;
* J_θ maps the (replicated) parameter space to local rows, also local; its
  adjoint J_θᵀ q = Σ_ranks J_θ,rᵀ q_r needs **one all-reduce of a
  parameter-sized vector** (one [p, k] block for k columns);
* K = J_θ J_θᵀ and P K P* therefore cost one all-reduce per product (per
  block of columns in ``matmat``).

Solvers and estimators must use global inner products: :func:`inner`
all-reduces Uᵀ V, :func:`trace` (Hutchinson / Hutch++) and :func:`top_eigs`
(a thick-restarted block Krylov eigensolver with Rayleigh–Ritz, all
orthogonalization by all-reduced Gram matrices) run on every rank at once and
return the same answer on every rank. Probes are drawn per *global* trial
from the seed, so the result does not depend on the number of ranks: the
sharded answer equals the single-process one to round-off.

Every function works without an initialized process group (one process,
``world_size`` 1), on any backend (gloo on CPU, NCCL on GPUs), and keeps
everything on the trajectory's device. All ranks must call the collective
operations (every product with J_θᵀ, K or P K P*, and the solvers) in the
same order.

Do not hand the sharded K or P K P* to SciPy or to :mod:`kpflow.analysis`:
their inner products would be local. Use :func:`trace` and :func:`top_eigs`.

Example (one process per rank, e.g. ``torchrun --nproc-per-node 4``)::

    import torch.distributed as dist
    import kpflow.distributed as kd

    dist.init_process_group("gloo")
    local = kd.trial_slice(inputs.shape[0])
    traj = kpflow.Trajectory(model, inputs[local])
    ops = kd.sharded_operators(traj)
    res = kd.top_eigs(ops.K, 10, seed=0)     # same values on every rank
    est = kd.trace(ops.gradient_flow, 60, seed=0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.func import vmap

from .gradient_flow import GradientFlowOperator
from .operator import DEFAULT_CHUNK_SIZE, KPOperator
from .parameter import Normalization, ParameterJacobian, ParameterOperator, by_columns
from .propagation import DEFAULT_MEMORY_BUDGET, InversePropagationOperator, PropagationOperator, Strategy
from .trajectory import Trajectory

__all__ = [
    "world",
    "trial_slice",
    "all_reduce",
    "inner",
    "ShardedParameterJacobian",
    "ShardedParameterOperator",
    "ShardedGradientFlowOperator",
    "ShardedOperators",
    "sharded_operators",
    "draw_probes",
    "trace",
    "top_eigs",
    "ShardedSpectrum",
]


# ----------------------------------------------------------------- plumbing
def world(group=None) -> tuple[int, int]:
    """(rank, world_size) in ``group``; (0, 1) without an initialized process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def trial_slice(num_trials: int, rank: int | None = None, world_size: int | None = None, group=None) -> slice:
    """The trials of ``rank``: contiguous balanced blocks in rank order.

    The first ``num_trials % world_size`` ranks hold one trial more. Every
    rank must hold at least one trial.
    """
    r, w = world(group)
    rank = r if rank is None else int(rank)
    world_size = w if world_size is None else int(world_size)
    if not isinstance(num_trials, int) or num_trials < world_size:
        raise ValueError(
            f"num_trials: expected an int >= world_size = {world_size} (one trial per rank at least), got {num_trials!r}"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size = {world_size}, got {rank}")
    base, extra = divmod(num_trials, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def all_reduce(x: Tensor, group=None) -> Tensor:
    """Σ over ranks of ``x`` (a new tensor; ``x`` is left untouched). Identity on one process."""
    if world(group)[1] == 1:
        return x
    y = x.detach().clone(memory_format=torch.contiguous_format)
    dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
    return y


def inner(U: Tensor, V: Tensor, group=None) -> Tensor:
    """Global inner products of sharded vectors: Uᵀ V summed over ranks.

    ``U`` [n_local] or [n_local, a], ``V`` [n_local] or [n_local, b]; returns
    a scalar tensor, [a], [b] or [a, b] accordingly.
    """
    if U.dim() == 1 and V.dim() == 1:
        local = torch.dot(U, V)
    else:
        local = U.T @ V
    return all_reduce(local, group)


def _global_offset(trajectory: Trajectory, group) -> tuple[int, int]:
    """(index of the first local trial, global number of trials), by one all-reduce."""
    rank, w = world(group)
    B = trajectory.batch_size
    if w == 1:
        return 0, B
    counts = torch.zeros(w, dtype=torch.int64, device=trajectory.device)
    counts[rank] = B
    counts = all_reduce(counts, group)
    return int(counts[:rank].sum()), int(counts.sum())


# ---------------------------------------------------------------- operators
def _shard_parameter_side(op, trajectory: Trajectory, normalization: str, group, chunk_size) -> None:
    """Make K or P K P* sharded: the all-reducing J_θ, and the "mean" scale over the global trials."""
    op.group = group
    op.jacobian = ShardedParameterJacobian(trajectory, group, chunk_size)
    op.trial_offset, op.global_batch_size = _global_offset(trajectory, group)
    if normalization == "mean":
        op.scale = 1.0 / (op.global_batch_size * trajectory.num_steps)


class ShardedParameterJacobian(ParameterJacobian):
    """J_θ of a trial shard: local rows, replicated parameter space.

    ``J @ v`` is local. ``J.H @ q`` = Σ_ranks J_rᵀ q_r: one all-reduce of a
    [p] vector ([p, k] for k columns), so every rank gets the full product.
    """

    def __init__(self, trajectory: Trajectory, group=None, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> None:
        super().__init__(trajectory, chunk_size)
        self.group = group

    def _rmv(self, q: Tensor) -> Tensor:
        return all_reduce(ParameterJacobian._rmv(self, q), self.group)

    def _rmm(self, Q: Tensor) -> Tensor:
        if self._lin is not None:
            local = by_columns(self._rmm_cols, Q, self.chunk_size)
        else:  # vmap the local kernel only; the collective runs once on the block
            local = vmap(lambda q: ParameterJacobian._rmv(self, q), in_dims=1, out_dims=1, chunk_size=self.chunk_size)(Q)
        return all_reduce(local, self.group)

    def _adjoint(self):
        from .operator import AdjointOperator

        return AdjointOperator(self)


class ShardedParameterOperator(ParameterOperator):
    """K = J_θ J_θᵀ on a trial shard: one all-reduce of a parameter-sized vector per product.

    ``normalization="mean"`` divides by the *global* B·T.
    """

    def __init__(
        self,
        trajectory: Trajectory,
        normalization: Normalization = "sum",
        group=None,
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__(trajectory, normalization, chunk_size)
        _shard_parameter_side(self, trajectory, normalization, group, chunk_size)

    def _mm(self, Q: Tensor) -> Tensor:
        J = self.jacobian
        out = J._mm(J._rmm(Q))
        return out if self.scale == 1.0 else self.scale * out

    _rmm = _mm


class ShardedGradientFlowOperator(GradientFlowOperator):
    """P K P* on a trial shard: P and P* local, one all-reduce per product (in K)."""

    def __init__(
        self,
        trajectory: Trajectory,
        normalization: Normalization = "sum",
        jacobians: Strategy = "matrix_free",
        group=None,
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        super().__init__(trajectory, normalization, jacobians, chunk_size, memory_budget)
        _shard_parameter_side(self, trajectory, normalization, group, chunk_size)

    def _mm(self, Q: Tensor) -> Tensor:
        P, J = self.propagation, self.jacobian
        out = P._mm(J._mm(J._rmm(P._rmm(Q))))
        return out if self.scale == 1.0 else self.scale * out

    _rmm = _mm


@dataclass
class ShardedOperators:
    """The operators of one trial shard (see :func:`sharded_operators`)."""

    trajectory: Trajectory
    J: ShardedParameterJacobian
    K: ShardedParameterOperator
    P: PropagationOperator
    P_inverse: InversePropagationOperator
    gradient_flow: ShardedGradientFlowOperator
    trial_offset: int
    global_batch_size: int
    group: object = None


def sharded_operators(
    trajectory: Trajectory,
    group=None,
    normalization: Normalization = "sum",
    jacobians: Strategy = "matrix_free",
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> ShardedOperators:
    """J_θ, K, P, P⁻¹ and P K P* of this rank's trials (a collective call).

    Parameters
    ----------
    trajectory : Trajectory
        The trajectory of this rank's trials (e.g. ``inputs[trial_slice(B)]``),
        with the same model parameters on every rank.
    group : ProcessGroup, optional
        The process group (default: the world).
    normalization, jacobians, chunk_size, memory_budget
        As for the single-process operators; ``"mean"`` uses the global B·T.
    """
    if not isinstance(trajectory, Trajectory):
        raise TypeError(f"trajectory: expected a kpflow.Trajectory, got {type(trajectory).__name__}")
    K = ShardedParameterOperator(trajectory, normalization, group, chunk_size)
    P = PropagationOperator(trajectory, jacobians, chunk_size, memory_budget)
    G = ShardedGradientFlowOperator(trajectory, normalization, jacobians, group, chunk_size, memory_budget)
    return ShardedOperators(
        trajectory=trajectory, J=K.jacobian, K=K, P=P, P_inverse=P.inverse(), gradient_flow=G,
        trial_offset=K.trial_offset, global_batch_size=K.global_batch_size, group=group,
    )


# ------------------------------------------------------------------- probes
def _shard_info(op: KPOperator, group) -> tuple[tuple[int, int, int], int]:
    traj = getattr(op, "trajectory", None)
    if traj is None:
        raise TypeError(
            "op: expected a sharded trajectory-space operator (from kpflow.distributed.sharded_operators) "
            f"or a trajectory operator, got {type(op).__name__}"
        )
    offset = getattr(op, "trial_offset", None)
    if offset is None:
        offset = _global_offset(traj, group)[0]
    return traj.shape, offset


def draw_probes(
    shape: tuple[int, int, int],
    trial_offset: int,
    k: int,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    distribution: str = "rademacher",
    stream: int = 0,
) -> Tensor:
    """k probe columns for the local trials, [B_local·T·S, k], independent of the sharding.

    The rows of global trial b are drawn from a generator seeded by
    (``seed``, ``stream``, b) alone, so the global probe matrix is the same
    whatever the number of ranks.
    """
    if distribution not in ("rademacher", "gaussian"):
        raise ValueError(f"distribution: expected 'rademacher' or 'gaussian', got {distribution!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int (the same on every rank), got {seed!r}")
    B, T, S = shape
    gen = torch.Generator(device=device)
    rows = []
    for b in range(B):
        word = int(np.random.SeedSequence([seed, stream, trial_offset + b]).generate_state(1, np.uint64)[0] >> 1)
        gen.manual_seed(word)
        if distribution == "gaussian":
            rows.append(torch.randn(T * S, k, generator=gen, dtype=dtype, device=device))
        else:
            bits = torch.randint(0, 2, (T * S, k), generator=gen, device=device, dtype=torch.int8)
            rows.append((2 * bits - 1).to(dtype))
    return torch.cat(rows, dim=0)


def _orthonormalize(W: Tensor, group, basis: Tensor | None = None, rel_tol: float | None = None) -> Tensor:
    """Orthonormal columns spanning W (minus span(basis)), by all-reduced Gram matrices.

    Block Gram–Schmidt against ``basis`` and a Gram eigendecomposition, both
    twice ("twice is enough"); directions whose Gram eigenvalue falls below
    ``rel_tol`` times the largest are dropped, so the result may have fewer
    columns. Every rank computes the same small matrices, hence the same
    column count.
    """
    eps = torch.finfo(W.dtype).eps
    rel_tol = (100 * eps) if rel_tol is None else rel_tol
    for _ in range(2):
        if basis is not None and basis.shape[1] > 0:
            W = W - basis @ inner(basis, W, group)
        G = inner(W, W, group)
        G = 0.5 * (G + G.T)
        lam, V = torch.linalg.eigh(G)
        if lam.numel() == 0:
            return W
        keep = lam > rel_tol * lam.max().clamp_min(torch.finfo(W.dtype).tiny)
        lam, V = lam[keep], V[:, keep]
        W = W @ (V / lam.sqrt())
    return W


def _estimate(value: float, se: float, used: int, method: str, probes: int, samples):
    try:
        from .analysis.estimate import Estimate
    except ImportError:  # pragma: no cover - the analysis layer ships with kpflow
        return {"value": value, "std_error": se, "num_matvecs": used, "method": method, "num_probes": probes}
    return Estimate(value, se, used, method, probes, samples)


def trace(
    op: KPOperator,
    num_matvecs: int,
    method: str = "hutch++",
    *,
    seed: int = 0,
    distribution: str = "rademacher",
    group=None,
):
    """Randomized trace of a sharded square operator (Hutchinson or Hutch++), on every rank.

    Parameters
    ----------
    op : KPOperator
        A sharded trajectory-space operator (``ops.K``, ``ops.gradient_flow``,
        or a local one such as ``ops.P``), or any single-process trajectory
        operator.
    num_matvecs : int
        Products with the operator (columns); Hutch++ needs ≥ 3.
    method : {"hutch++", "hutchinson"}
    seed : int
        The same on every rank; probes depend only on it and the global trial.
    distribution : {"rademacher", "gaussian"}
    group : ProcessGroup, optional

    Returns
    -------
    kpflow.analysis.Estimate
        ``value``, ``std_error``, ``num_matvecs`` — identical on every rank.

    Notes
    -----
    Hutch++: s = ⌊m/3⌋ sketch probes S, Q = orth(A S) (all-reduced Gram),
    g = m − 2s residual probes G ← G − Q (Qᵀ G), and
    tr A ≈ tr(Qᵀ A Q) + (1/g) Σ gᵢᵀ A gᵢ, every inner product summed over
    ranks. Hutchinson: (1/m) Σ zᵢᵀ A zᵢ.
    """
    if method not in ("hutch++", "hutchinson"):
        raise ValueError(f"method: expected 'hutch++' or 'hutchinson', got {method!r}")
    if not isinstance(num_matvecs, int) or isinstance(num_matvecs, bool) or num_matvecs < 1:
        raise ValueError(f"num_matvecs: expected a positive int, got {num_matvecs!r}")
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"op: expected a square operator, got shape {op.shape}")
    group = getattr(op, "group", group) if group is None else group
    shape, offset = _shard_info(op, group)
    dtype, device = op.torch_dtype, op.device

    def probes(k, stream):
        return draw_probes(shape, offset, k, seed, dtype, device, distribution, stream)

    if method == "hutchinson":
        Z = probes(num_matvecs, 0)
        samples = all_reduce((Z * op.apply(Z)).sum(0), group).double()
        m = num_matvecs
        se = float(samples.std(unbiased=True) / math.sqrt(m)) if m > 1 else math.nan
        return _estimate(float(samples.mean()), se, m, "hutchinson", m, samples.cpu().numpy())

    if num_matvecs < 3:
        raise ValueError(f"num_matvecs: Hutch++ needs at least 3 products, got {num_matvecs}")
    s = num_matvecs // 3
    Y = op.apply(probes(s, 1))
    Q = _orthonormalize(Y, group)
    exact = float(all_reduce((Q * op.apply(Q)).sum(), group)) if Q.shape[1] else 0.0
    g = num_matvecs - s - Q.shape[1]
    if g <= 0:
        return _estimate(exact, 0.0, s + Q.shape[1], "hutch++", 0, None)
    G = probes(g, 2)
    if Q.shape[1]:
        G = G - Q @ inner(Q, G, group)
    samples = all_reduce((G * op.apply(G)).sum(0), group).double()
    se = float(samples.std(unbiased=True) / math.sqrt(g)) if g > 1 else math.nan
    return _estimate(exact + float(samples.mean()), se, s + Q.shape[1] + g, "hutch++", g, samples.cpu().numpy())


@dataclass
class ShardedSpectrum:
    """Top eigenpairs of a sharded symmetric operator (identical values on every rank).

    Attributes
    ----------
    values : numpy.ndarray
        float64 [k], descending.
    vectors : Tensor or None
        This rank's rows of the eigenvectors, [k, B_local, T, S].
    residuals : numpy.ndarray
        ‖A u − λ u‖ (global) of each pair.
    converged : numpy.ndarray
        bool [k].
    num_matvecs : int
        Products with the operator (columns).
    restarts : int
    """

    values: np.ndarray
    vectors: Tensor | None
    residuals: np.ndarray
    converged: np.ndarray
    num_matvecs: int
    restarts: int


def top_eigs(
    op: KPOperator,
    k: int,
    *,
    block_size: int | None = None,
    depth: int = 4,
    tol: float | None = None,
    maxiter: int = 100,
    seed: int = 0,
    return_vectors: bool = False,
    group=None,
) -> ShardedSpectrum:
    """The k largest eigenvalues of a sharded symmetric operator, on every rank.

    A thick-restarted block Krylov method: keep ℓ Ritz vectors U with A U,
    extend by ``depth`` blocks of b = ``block_size`` columns
    (Q = orth[U, A U_b, A² U_b, …]), Rayleigh–Ritz on H = Qᵀ A Q and restart
    from the best Ritz vectors. All inner products are all-reduced, so every
    rank takes the same decisions; vectors and products stay sharded and on
    the operator's device.

    Parameters
    ----------
    op : KPOperator
        Symmetric (K, P K P*, a sum or product that is symmetric).
    k : int
        Number of eigenpairs.
    block_size : int, optional
        b ≥ k (default k).
    depth : int
        Krylov blocks per restart.
    tol : float, optional
        ‖A u − λ u‖ ≤ tol · max|λ| (default 1e-4 in float32, 1e-9 in float64).
    maxiter : int
        Restarts.
    seed : int
        Start block, drawn per global trial (independent of the sharding).
    return_vectors : bool
        Also return this rank's rows of the eigenvectors.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"op: expected a square operator, got shape {op.shape}")
    group = getattr(op, "group", group) if group is None else group
    shape, offset = _shard_info(op, group)
    dtype, device = op.torch_dtype, op.device
    b = k if block_size is None else int(block_size)
    if b < k:
        raise ValueError(f"block_size: expected at least k = {k}, got {b}")
    if tol is None:
        tol = 1e-4 if dtype == torch.float32 else 1e-9
    keep = max(2 * b, k + b)

    X = _orthonormalize(draw_probes(shape, offset, b, seed, dtype, device, "gaussian", stream=7), group)
    U, AU = X, op.apply(X)
    used = X.shape[1]
    lead = U
    theta = torch.zeros(0, dtype=torch.float64)
    res = torch.zeros(0, dtype=torch.float64)
    restarts = 0
    converged = torch.zeros(k, dtype=torch.bool)
    for restarts in range(1, maxiter + 1):
        blocks, products = [U], [AU]
        W = AU[:, : min(b, AU.shape[1])] if restarts > 1 else AU
        basis = U
        for _ in range(depth):
            W = _orthonormalize(W, group, basis)
            if W.shape[1] == 0:
                break
            AW = op.apply(W)
            used += W.shape[1]
            blocks.append(W)
            products.append(AW)
            basis = torch.cat([basis, W], dim=1)
            W = AW
        Q, AQ = torch.cat(blocks, dim=1), torch.cat(products, dim=1)
        H = inner(Q, AQ, group)
        H = 0.5 * (H + H.T)
        lam, Svec = torch.linalg.eigh(H)
        order = torch.argsort(lam, descending=True)
        lam, Svec = lam[order], Svec[:, order]
        ell = min(keep, lam.numel())
        U, AU = Q @ Svec[:, :ell], AQ @ Svec[:, :ell]
        kk = min(k, ell)
        R = AU[:, :kk] - U[:, :kk] * lam[:kk]
        res = all_reduce((R * R).sum(0), group).clamp_min(0).sqrt().double().cpu()
        theta = lam[:kk].double().cpu()
        scale = float(theta.abs().max()) if kk else 0.0
        converged = res <= tol * max(scale, torch.finfo(dtype).tiny)
        if kk == k and bool(converged.all()):
            break
        if W.shape[1] == 0 and ell <= b:  # invariant subspace exhausted
            break
    values = theta.numpy().copy()
    vectors = None
    if return_vectors:
        V = U[:, : len(values)]
        # Sign convention: the entry of largest magnitude (over all ranks) is positive.
        vectors = (V * _global_signs(V, group)).T.reshape(len(values), *shape)
    return ShardedSpectrum(
        values=values,
        vectors=vectors,
        residuals=res.numpy().copy(),
        converged=converged.numpy().copy(),
        num_matvecs=int(used),
        restarts=restarts,
    )


def _global_signs(V: Tensor, group) -> Tensor:
    """±1 per column so that the entry of largest magnitude over all ranks is positive."""
    rank, w = world(group)
    absmax, idx = V.abs().max(0)
    signed = V.gather(0, idx[None]).squeeze(0)
    if w == 1:
        return torch.where(signed < 0, -1.0, 1.0).to(V.dtype)
    # Gather (|max|, signed value) of every rank; the largest |max| wins (lowest rank on ties).
    stack = torch.zeros(w, 2, V.shape[1], dtype=V.dtype, device=V.device)
    stack[rank, 0], stack[rank, 1] = absmax, signed
    stack = all_reduce(stack, group)
    winner = stack[:, 0].argmax(0)
    value = stack[:, 1].gather(0, winner[None]).squeeze(0)
    return torch.where(value < 0, -1.0, 1.0).to(V.dtype)
