"""Lyapunov spectra against known linear maps, QR sign traps and P's blocks (PITFALLS 11)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _analysis_helpers import single_torch_thread, tiny_gru  # noqa: F401
from torch import nn

import kpflow
from kpflow.analysis import kaplan_yorke_dimension, lyapunov_spectrum, positive_qr


class LinearCell(nn.Module):
    """h' = W h + U x."""

    def __init__(self, W, U):
        super().__init__()
        self.W = nn.Parameter(torch.as_tensor(W))
        self.U = nn.Parameter(torch.as_tensor(U))
        self.hidden_size = self.W.shape[0]

    def forward(self, x, h):
        return h @ self.W.T + x @ self.U.T


def _linear_traj(W, T=120, B=2, dtype=torch.float64, seed=0, inputs=True):
    rng = np.random.default_rng(seed)
    W = np.asarray(W, dtype=np.float64)
    cell = LinearCell(torch.tensor(W, dtype=dtype), torch.tensor(rng.standard_normal((W.shape[0], 2)), dtype=dtype))
    x = torch.tensor(rng.standard_normal((B, T, 2)) if inputs else np.zeros((B, T, 2)), dtype=dtype)
    return kpflow.Trajectory(cell, x)


def _diagonalizable(mu, seed=0):
    rng = np.random.default_rng(seed)
    V = rng.standard_normal((len(mu), len(mu)))
    return V @ np.diag(mu) @ np.linalg.inv(V)


# -------------------------------------------------------------- known maps
def test_linear_map_exponents_are_log_abs_eigenvalues():
    mu = np.array([1.4, -0.9, 0.6, -0.3, 0.1])
    traj = _linear_traj(_diagonalizable(mu, seed=1), T=80)
    res = lyapunov_spectrum(traj, frame_warmup=40)
    np.testing.assert_allclose(res.exponents, np.log(np.abs(mu)), atol=1e-6)
    np.testing.assert_allclose(res.per_trial, np.tile(np.log(np.abs(mu)), (2, 1)), atol=1e-6)
    assert res.num_steps == 40
    assert res.kaplan_yorke() == pytest.approx(kaplan_yorke_dimension(np.log(np.abs(mu))))
    # the leading k only
    top = lyapunov_spectrum(traj, k=2, frame_warmup=40)
    np.testing.assert_allclose(top.exponents, np.log([1.4, 0.9]), atol=1e-6)


def test_state_and_frame_warmups_are_separate_and_division_is_exact():
    # a scalar map with time-varying gain a_t: λ = mean log|a_t| over exactly the accumulated steps
    gains = torch.tensor([2.0, 0.5, 3.0, -1.5, 0.25, 4.0, 1.0, -0.8], dtype=torch.float64)

    def cell(x, h):  # h' = a_t h, with a_t carried by the input
        return x * h

    x = gains.reshape(1, -1, 1)
    traj = kpflow.Trajectory(cell, x, h0=torch.ones(1, 1, dtype=torch.float64))
    for sw, fw in ((0, 0), (2, 0), (0, 3), (2, 3)):
        res = lyapunov_spectrum(traj, state_warmup=sw, frame_warmup=fw)
        kept = gains[sw + fw :]
        assert res.num_steps == len(kept)
        assert res.exponents[0] == pytest.approx(float(torch.log(kept.abs()).mean()), abs=1e-14)


def test_too_short_is_a_clear_error_not_zeros():
    traj = _linear_traj(np.eye(2) * 0.5, T=5)
    with pytest.raises(ValueError, match="too short"):
        lyapunov_spectrum(traj, state_warmup=3, frame_warmup=2)
    with pytest.raises(ValueError, match="k:"):
        lyapunov_spectrum(traj, k=3)
    with pytest.raises(ValueError, match="window"):
        lyapunov_spectrum(traj, window=6)
    with pytest.raises(ValueError, match="multiple"):
        lyapunov_spectrum(traj, frame_warmup=1, reorthonormalize_every=2)


def test_positive_qr_on_8x8_products():
    g = torch.Generator().manual_seed(0)
    Ms = [torch.randn(8, 8, generator=g, dtype=torch.float64) for _ in range(6)]
    V = Ms[0]
    for M in Ms[1:]:
        V = M @ V
    _, R_house = torch.linalg.qr(V)
    assert (torch.diagonal(R_house) < 0).any()  # the trap is real
    Q, R = positive_qr(V)
    assert (torch.diagonal(R) > 0).all()
    torch.testing.assert_close(Q @ R, V)
    torch.testing.assert_close(Q.T @ Q, torch.eye(8, dtype=torch.float64))
    # batched
    Qb, Rb = positive_qr(torch.stack([V, -V]))
    assert (torch.diagonal(Rb, dim1=-2, dim2=-1) > 0).all()
    # and the spectrum of a map with negative eigenvalues has no NaN
    traj = _linear_traj(_diagonalizable([-1.2, -0.7, 0.4], seed=3), T=60)
    res = lyapunov_spectrum(traj, frame_warmup=30)
    assert np.all(np.isfinite(res.exponents))
    np.testing.assert_allclose(res.exponents, np.log([1.2, 0.7, 0.4]), atol=1e-6)


def test_growth_of_1_5_per_step_for_250_steps_in_float32():
    # zero input and h0 = 0 keep the state at 0 while the tangents grow 1.5× per step
    W = np.diag([1.5, 1.2, 0.5])
    traj = _linear_traj(W, T=250, B=1, dtype=torch.float32, inputs=False)
    res = lyapunov_spectrum(traj, frame_warmup=100)
    np.testing.assert_allclose(res.exponents, np.log([1.5, 1.2, 0.5]), atol=1e-5)
    # without reorthonormalization the tangents overflow float32 (1.5^250 ≈ 1e44)
    with pytest.raises(FloatingPointError, match="overflow"):
        lyapunov_spectrum(traj, reorthonormalize_every=250, window=250)


def test_reorthonormalizing_less_often_agrees_when_safe():
    traj = _linear_traj(_diagonalizable([1.1, 0.8, 0.5], seed=4), T=100)
    a = lyapunov_spectrum(traj, frame_warmup=40, window=20)
    b = lyapunov_spectrum(traj, frame_warmup=40, window=20, reorthonormalize_every=5)
    np.testing.assert_allclose(a.exponents, b.exponents, atol=1e-10)


# -------------------------------------------------- nonlinear: P's blocks
def test_sum_of_exponents_equals_log_singular_values_of_Ps_block():
    traj = tiny_gru(B=2, T=12, H=3, trained_scale=1.5)
    B, T, S = traj.shape
    P = kpflow.PropagationOperator(traj).to_dense().numpy().reshape(B, T, S, B, T, S)
    s0 = 3  # block P_{T-1, s0} = A_{T-1} ⋯ A_{s0+1}
    res = lyapunov_spectrum(traj, state_warmup=s0 + 1)
    n = T - 1 - s0
    assert res.num_steps == n
    for b in range(B):
        sv = np.linalg.svd(P[b, T - 1, :, b, s0, :], compute_uv=False)
        assert res.per_trial[b].sum() * n == pytest.approx(np.log(sv).sum(), rel=1e-10)
        # the top exponent never exceeds the growth of the top singular value
        assert res.per_trial[b, 0] * n <= np.log(sv[0]) + 1e-10


def test_scalar_state_matches_Ps_blocks_exactly():
    # S = 1: the block is a scalar product, so λ = log|P_{T-1,s}| / n exactly
    cell = nn.RNNCell(1, 1).double()
    x = torch.randn(3, 15, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    traj = kpflow.Trajectory(cell, x)
    P = kpflow.PropagationOperator(traj).to_dense().numpy().reshape(3, 15, 3, 15)
    res = lyapunov_spectrum(traj, state_warmup=1)
    for b in range(3):
        assert res.per_trial[b, 0] * 14 == pytest.approx(np.log(abs(P[b, 14, b, 0])), rel=1e-10)


# ----------------------------------------------------- errors and windows
def test_windows_standard_errors_and_reproducibility():
    traj = tiny_gru(B=3, T=40, H=4, trained_scale=1.2)
    a = lyapunov_spectrum(traj, frame_warmup=10, window=6, seed=3)
    b = lyapunov_spectrum(traj, frame_warmup=10, window=6, seed=3)
    assert np.array_equal(a.exponents, b.exponents)
    assert a.finite_time.shape == (3, 5, 4) and a.window == 6 and a.num_steps == 30
    # finite-time windows cover the first 30 steps: their mean is the exponent here
    np.testing.assert_allclose(a.finite_time.mean(axis=1), a.per_trial, atol=1e-12)
    expected = a.finite_time.reshape(15, 4).std(axis=0, ddof=1) / math.sqrt(15)
    np.testing.assert_allclose(a.std_error, expected)
    assert a.per_trial_std_error.shape == (3, 4)
    np.testing.assert_allclose(a.exponents, a.per_trial.mean(axis=0))


# ------------------------------------------------------------ Kaplan–Yorke
def test_kaplan_yorke_dimension():
    assert kaplan_yorke_dimension([1.0, 0.0, -2.0]) == pytest.approx(2.5)
    assert kaplan_yorke_dimension([-2.0, 1.0, 0.0]) == pytest.approx(2.5)  # order does not matter
    assert kaplan_yorke_dimension([0.5, -1.0]) == pytest.approx(1.5)
    assert kaplan_yorke_dimension([-0.1, -1.0]) == 0.0
    assert kaplan_yorke_dimension(np.log([1.4, 0.9, 0.6])) == pytest.approx(
        2 + (np.log(1.4) + np.log(0.9)) / abs(np.log(0.6))
    )
    with pytest.warns(UserWarning, match="at least 2"):
        assert kaplan_yorke_dimension([0.3, 0.1]) == 2.0
    with pytest.raises(ValueError):
        kaplan_yorke_dimension([])
