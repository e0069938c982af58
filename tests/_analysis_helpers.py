"""Small models and matrices shared by the analysis tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import kpflow


def tiny_gru(dtype=torch.float64, B=2, T=4, I=2, H=3, seed=0, trained_scale=1.0):
    """A tiny GRU cell trajectory (N = B·T·H) in the given dtype."""
    g = torch.Generator().manual_seed(seed)
    cell = nn.GRUCell(I, H).to(dtype)
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(trained_scale * torch.randn(p.shape, generator=g, dtype=dtype))
    x = torch.randn(B, T, I, generator=g, dtype=dtype)
    return kpflow.Trajectory(cell, x)


def psd_low_rank(n, r, seed=0, dtype=np.float64, noise=0.0):
    """X Xᵀ (+ noise·I) with X [n, r] Gaussian: rank r (without noise)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, r))
    A = X @ X.T + noise * np.eye(n)
    return A.astype(dtype)


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """The analysis tests use tiny matrices: one thread (torch and NumPy's BLAS) is fastest
    and immune to oversubscription on a loaded machine."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(before)
