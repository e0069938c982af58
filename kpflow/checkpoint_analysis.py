"""What ``kpflow run`` measures at each analysis checkpoint."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import eigsh
from threadpoolctl import threadpool_limits

from .error_signal import error_signal
from .gradient_flow import GradientFlowOperator
from .parameter import ParameterOperator
from .trajectory import Trajectory

__all__ = ["analyze_checkpoint"]


def _eigs(op, k: int, seed: int) -> list[float]:
    v0 = np.random.default_rng(seed).standard_normal(op.shape[0]).astype(op.dtype)
    with threadpool_limits(1, user_api="blas"):
        vals = eigsh(op, k=k, which="LA", v0=v0, return_eigenvectors=False)
    return sorted((max(float(v), 0.0) for v in vals), reverse=True)


def analyze_checkpoint(setup, previous_states: torch.Tensor | None, quiet: bool = True) -> tuple[dict[str, Any], torch.Tensor]:
    """Measure the operators of the current model on the evaluation batch.

    Returns the JSON-able record and the evaluation trajectory's states (the
    reference for the next checkpoint's "actual change of the states").
    """
    cfg, batch = setup.cfg, setup.eval_batch
    traj = Trajectory(setup.model, batch.inputs)
    with torch.no_grad():
        outputs = setup.readout(traj.observe())
        loss = float(setup.task.loss(outputs, batch))
        acc = float(setup.task.accuracy(outputs, batch))
    K = ParameterOperator(traj)
    G = GradientFlowOperator(traj)
    k = min(cfg.top_k, traj.size - 2)
    record = {
        "eval_loss": loss,
        "accuracy": acc,
        "eig_K": _eigs(K, k, cfg.seed),
        "eig_PKP": _eigs(G, k, cfg.seed),
    }
    e = error_signal(traj, setup.readout, lambda out, _: setup.task.loss(out, batch), None)
    record["error_norm"] = float(e.norm())
    return record, traj.states
