"""What ``kpflow run`` and ``kpflow analyze`` measure at an analysis checkpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ._progress import progress_bar
from .error_signal import error_signal
from .gradient_flow import GradientFlowOperator
from .parameter import ParameterOperator
from .propagation import PropagationOperator
from .trajectory import Trajectory

__all__ = ["AnalysisOptions", "measure", "analyze_checkpoint", "pca_dimension"]


@dataclass(frozen=True)
class AnalysisOptions:
    """How much work one checkpoint analysis does.

    Attributes
    ----------
    top_k : int
        Eigenvalues per spectrum (K, P Pᵀ, P K P*).
    eig_tol : float
        Relative accuracy asked of the eigensolver: a summary over training
        needs a few digits, and P Pᵀ at initialisation has a flat spectrum
        that costs hundreds of products at machine precision.
    trace_matvecs : int
        Products per randomized trace / Frobenius estimate (effective
        ranks, misdirection).
    lyapunov : bool
        Whether to compute the Lyapunov spectrum and Kaplan–Yorke dimension.
    seed : int
        Seed of every randomized estimate and start vector.
    """

    top_k: int = 10
    eig_tol: float = 1e-4
    trace_matvecs: int = 40
    lyapunov: bool = True
    seed: int = 0


def pca_dimension(hidden: Tensor) -> dict[str, float]:
    """Participation ratio and 95 %-variance count of hidden states [B, T, H].

    Notes
    -----
    With λ_i the eigenvalues of the covariance of the states pooled over
    trials and steps, PR = (Σλ)² / Σλ² and n95 = min{m : Σ_{i≤m} λ_i ≥ 0.95 Σλ}.
    """
    X = hidden.reshape(-1, hidden.shape[-1]).double()
    X = X - X.mean(0)
    lam = torch.linalg.eigvalsh(X.T @ X / max(1, X.shape[0] - 1)).flip(0).clamp_min(0)
    total = float(lam.sum())
    if total == 0:
        return {"participation": 0.0, "var95": 0}
    cum = torch.cumsum(lam, 0) / total
    return {"participation": total**2 / float((lam**2).sum()), "var95": int((cum < 0.95).sum()) + 1}


def variance_modes(eigenvalues: np.ndarray, total: float, fraction: float = 0.95) -> int | None:
    """min{m : Σ_{i≤m} λ_i ≥ fraction · total}; None when the given top values do not reach it."""
    cum = np.cumsum(np.clip(eigenvalues, 0, None))
    if total <= 0:
        return None
    hit = np.nonzero(cum >= fraction * total)[0]
    return int(hit[0]) + 1 if hit.size else None


def _cosine(a: Tensor, b: Tensor) -> float | None:
    na, nb = float(a.norm()), float(b.norm())
    return None if na == 0 or nb == 0 else float((a * b).sum()) / (na * nb)


def measure(
    model,
    inputs: Tensor,
    *,
    readout: Callable | None = None,
    loss: Callable[[Tensor], Tensor] | None = None,
    h0=None,
    options: AnalysisOptions = AnalysisOptions(),
    previous: dict | None = None,
    quiet: bool = True,
) -> tuple[dict[str, Any], dict]:
    """Build the operators at (model, inputs) and measure them.

    Parameters
    ----------
    model, inputs, h0
        As for :class:`~kpflow.Trajectory`.
    readout : callable, optional
        Hidden outputs [B, T, H] → outputs; needed with ``loss``.
    loss : callable, optional
        ``loss(outputs) -> scalar``; with it the error signal e, the loss
        and the predicted flow direction −P K P* e are recorded.
    options : AnalysisOptions
        Budgets and seed.
    previous : dict, optional
        The ``carry`` returned by the previous checkpoint: the alignment of
        its predicted direction −P K P* e with the change of the states
        since then is recorded as ``flow_alignment``.

    Returns
    -------
    record : dict
        JSON-able measurements.
    carry : dict
        States and flow direction for the next checkpoint.
    """
    from . import analysis as an

    timings: dict[str, float] = {}
    record: dict[str, Any] = {}
    traj = Trajectory(model, inputs, h0=h0)
    if not bool(torch.isfinite(traj.states).all()):
        raise FloatingPointError(
            f"the hidden states of the analysed trajectory are not finite (inf or nan in {traj.dtype}): "
            "the dynamics overflow, nothing can be measured"
        )
    K = ParameterOperator(traj)
    P = PropagationOperator(traj)
    G = GradientFlowOperator(traj)
    PPt = P @ P.H
    k = min(options.top_k, traj.size - 2)
    seed = options.seed

    steps: list[tuple[str, Callable[[], None]]] = []

    def spectra() -> None:
        for key, op in (("K", K), ("PPt", PPt), ("PKP", G)):
            res = an.top_eigs(op, k, seed=seed, tol=options.eig_tol)
            lam = np.asarray(res.values, dtype=float)
            record[f"eig_{key}"] = [float(v) for v in lam]
            record[f"eig_{key}_matvecs"] = int(res.num_matvecs)
            pr = an.effective_rank(op, "participation", num_matvecs=options.trace_matvecs, seed=seed)
            tr = an.trace(op, options.trace_matvecs, seed=seed)
            record[f"rank_{key}"] = {
                "participation": float(pr.value),
                "participation_se": float(pr.std_error),
                "trace": float(tr.value),
                "var95": variance_modes(lam, tr.value),
                "entropy_topk": float(an.effective_rank(lam, "entropy").value),
            }

    def misdirection() -> None:
        est = an.alignment(G, PPt, options.trace_matvecs, seed=seed)
        record["misdirection"] = float(est.value)
        record["misdirection_se"] = float(est.std_error)

    carry: dict = {"states": traj.states}

    def flow() -> None:
        with torch.no_grad():
            record["eval_loss"] = float(loss(readout(traj.observe())))
        e = error_signal(traj, readout, lambda out, _: loss(out), None)
        direction = -(G @ e.reshape(-1))
        carry["flow_direction"] = direction
        record["error_norm"] = float(e.norm())
        if previous is not None and previous.get("flow_direction") is not None:
            change = (traj.states - previous["states"]).reshape(-1)
            record["flow_alignment"] = _cosine(previous["flow_direction"], change)
        else:
            record["flow_alignment"] = None

    def lyapunov() -> None:
        res = an.lyapunov_spectrum(traj)
        exps = np.asarray(res.exponents, dtype=float)
        record["lyapunov"] = [float(v) for v in exps]
        record["kaplan_yorke"] = float(an.kaplan_yorke_dimension(exps))

    def pca() -> None:
        record["pca_dim"] = pca_dimension(traj.observe())

    if readout is not None and loss is not None:
        steps.append(("error signal and flow", flow))
    steps += [("spectra and ranks", spectra), ("misdirection", misdirection), ("PCA", pca)]
    if options.lyapunov:
        steps.append(("Lyapunov", lyapunov))

    for name, fn in progress_bar(steps, desc="analysis", disable=quiet, leave=False, unit="step"):
        t0 = time.perf_counter()
        fn()
        timings[name] = time.perf_counter() - t0
    record["timings_s"] = timings
    return record, carry


def analyze_checkpoint(setup, previous: dict | None, quiet: bool = True) -> tuple[dict[str, Any], dict]:
    """The checkpoint analysis of ``kpflow run`` on the fixed evaluation batch."""
    cfg, batch = setup.cfg, setup.eval_batch
    options = AnalysisOptions(top_k=cfg.top_k, lyapunov=cfg.lyapunov, seed=cfg.seed)
    record, carry = measure(
        setup.model, batch.inputs, readout=setup.readout,
        loss=lambda out: setup.task.loss(out, batch), options=options, previous=previous, quiet=quiet,
    )
    with torch.no_grad():
        outputs = setup.readout(setup.step_map.observe(carry["states"]))
        record = {"eval_loss": record.pop("eval_loss"), "accuracy": float(setup.task.accuracy(outputs, batch)), **record}
    return record, carry
