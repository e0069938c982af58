"""Effective rank (participation, entropy, variance), alignment and misdirection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _analysis_helpers import psd_low_rank, single_torch_thread, tiny_gru  # noqa: F401

import kpflow
from kpflow.analysis import DenseOperator, alignment, effective_rank, misdirection, top_eigs


def _spectrum_matrix(lam, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((len(lam), len(lam))))
    return (Q * np.asarray(lam, float)) @ Q.T


# ----------------------------------------------------------- effective rank
def test_participation_ratio_exact_formula():
    lam = np.array([5.0, 3.0, 1.0, 0.5] + [0.0] * 36)
    A = _spectrum_matrix(lam)
    pr = lam.sum() ** 2 / (lam**2).sum()
    e = effective_rank(A)
    assert e.value == pytest.approx(pr, rel=1e-10) and e.exact and e.num_matvecs == 40
    assert effective_rank(lam).value == pytest.approx(pr, rel=1e-12)
    assert effective_rank(np.eye(7)).value == pytest.approx(7.0)


@pytest.mark.parametrize("method,budget", [("hutch++", 30), ("hutchinson", 40)])
def test_participation_ratio_estimate_close_and_se_sensible(method, budget):
    lam = np.concatenate([np.geomspace(10, 0.1, 15), np.full(185, 0.01)])
    A = _spectrum_matrix(lam, seed=1)
    pr = lam.sum() ** 2 / (lam**2).sum()
    vals, ses = [], []
    for s in range(120):
        e = effective_rank(A, num_matvecs=budget, method=method, seed=s)
        assert e.num_matvecs == budget
        vals.append(e.value)
        ses.append(e.std_error)
    vals, ses = np.array(vals), np.array(ses)
    assert abs(np.median(vals) - pr) < 0.15 * pr
    assert 0.6 <= np.median(ses) / vals.std() <= 1.6
    with pytest.raises(ValueError, match="Hutch"):
        effective_rank(A, num_matvecs=2, method="hutch++")


def test_entropy_and_variance_forms_from_a_spectrum():
    lam = np.array([10.0, 5.0, 3.0, 1.0, 1.0])
    p = lam / lam.sum()
    assert effective_rank(lam, "entropy").value == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert effective_rank(np.ones(6), "entropy").value == pytest.approx(6.0)
    # cumulative 10, 15, 18, 19, 20: 95 % of 20 = 19 -> 4 modes; 50 % -> 1; 75 % -> 2
    assert effective_rank(lam, "variance").value == 4
    assert effective_rank(lam, "variance", threshold=0.5).value == 1
    assert effective_rank(lam, "variance", threshold=0.75).value == 2
    with pytest.raises(ValueError, match="negative"):
        effective_rank(np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="kind"):
        effective_rank(lam, "renyi")


def test_spectral_forms_on_an_operator():
    lam = np.array([8.0, 4.0, 2.0, 1.0] + [0.0] * 56)
    A = DenseOperator(_spectrum_matrix(lam, seed=2), psd=True)
    p = lam[:4] / lam.sum()
    e = effective_rank(A, "entropy", k=6, seed=0)
    assert e.value == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-8)
    # 95 % of 15 = 14.25: 8, 12, 14, 15 -> 4 modes
    assert effective_rank(A, "variance", k=6, seed=0).value == 4
    with pytest.warns(UserWarning, match="short of threshold"):
        v = effective_rank(A, "variance", k=2, seed=0)
    assert math.isnan(v.value)


def test_effective_rank_of_kp_operators_matches_dense():
    traj = tiny_gru(B=2, T=6, H=3)
    P = kpflow.PropagationOperator(traj)
    for op in (kpflow.ParameterOperator(traj), P @ P.H, kpflow.GradientFlowOperator(traj)):
        lam = np.linalg.eigvalsh(op.to_dense().numpy())
        lam = np.clip(lam, 0, None)
        assert effective_rank(op).value == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-9)


# ---------------------------------------------------------------- alignment
def test_alignment_exact_values():
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((30, 30)), rng.standard_normal((30, 30))
    cos = (A * B).sum() / (np.linalg.norm(A) * np.linalg.norm(B))
    e = alignment(A, B)
    assert e.value == pytest.approx(cos, rel=1e-10) and e.exact and e.num_matvecs == 30
    assert alignment(A, B, num_probes=30).value == pytest.approx(cos, rel=1e-10)
    assert alignment(A, 3 * A).value == pytest.approx(1.0)
    assert alignment(A, -A).value == pytest.approx(-1.0)


@pytest.mark.parametrize("method,budget", [("hutchinson", 24), ("hutch++", 40)])
def test_alignment_estimate_unbiased_to_first_order(method, budget):
    A = psd_low_rank(80, 6, seed=4, noise=0.2)
    B = psd_low_rank(80, 6, seed=5, noise=0.2) + 0.5 * A
    truth = (A * B).sum() / (np.linalg.norm(A) * np.linalg.norm(B))
    vals, ses = [], []
    for s in range(150):
        e = alignment(A, B, budget, method=method, seed=s)
        vals.append(e.value)
        ses.append(e.std_error)
    vals, ses = np.array(vals), np.array(ses)
    assert abs(vals.mean() - truth) < 0.02
    assert np.mean(np.abs(vals - truth) <= 2 * ses) > 0.8


def test_alignment_checks_shapes_and_dtypes():
    with pytest.raises(ValueError, match="shape"):
        alignment(np.eye(3), np.eye(4))
    with pytest.raises(TypeError, match="dtype"):
        alignment(np.eye(3), np.eye(3, dtype=np.float32))


def test_misdirection_matches_dense_formula():
    traj = tiny_gru(B=2, T=5, H=3)
    P = kpflow.PropagationOperator(traj)
    K = kpflow.ParameterOperator(traj)
    Pd, Kd = P.to_dense().numpy(), K.to_dense().numpy()
    G, PP = Pd @ Kd @ Pd.T, Pd @ Pd.T
    truth = (G * PP).sum() / (np.linalg.norm(G) * np.linalg.norm(PP))
    assert misdirection(traj).value == pytest.approx(truth, rel=1e-10)
    assert misdirection(P).value == pytest.approx(truth, rel=1e-10)
    assert misdirection(P, K).value == pytest.approx(truth, rel=1e-10)
    est = misdirection(traj, num_probes=20, seed=0)
    assert abs(est.value - truth) < 5 * est.std_error + 1e-3
    with pytest.raises(TypeError, match="source"):
        misdirection(np.eye(3))


def test_spectrum_result_input():
    lam = np.array([3.0, 2.0, 1.0, 0, 0, 0])
    res = top_eigs(_spectrum_matrix(lam, seed=6), 3, psd=True)
    assert effective_rank(res).value == pytest.approx(36 / 14)
    assert effective_rank(torch.tensor(lam)).value == pytest.approx(36 / 14)
