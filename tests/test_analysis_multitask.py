"""Interference blocks of K between sub-tasks and the alignment of sub-task gradient flows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _analysis_helpers import single_torch_thread, tiny_gru  # noqa: F401

import kpflow
from kpflow.analysis import gradient_flow_alignment, group_block, interference

GROUPS = np.array([0, 2, 0, 1])  # B = 4 trials, three sub-tasks (ids 0, 1, 2)


@pytest.fixture(scope="module")
def setup():
    traj = tiny_gru(B=4, T=5, H=3)
    K = kpflow.ParameterOperator(traj)
    return traj, K, K.to_dense().numpy()


def _rows(trials, T=5, S=3):
    return np.concatenate([np.arange(b * T * S, (b + 1) * T * S) for b in trials])


def test_group_block_is_the_submatrix(setup):
    traj, K, Kd = setup
    blk = group_block(K, GROUPS, 0, 2)
    r, c = _rows([0, 2]), _rows([1])
    assert blk.shape == (len(r), len(c))
    np.testing.assert_allclose(blk.to_dense().numpy(), Kd[np.ix_(r, c)], rtol=1e-12)
    v = np.random.default_rng(0).standard_normal(len(r))
    np.testing.assert_allclose(blk.rmatvec(v), Kd[np.ix_(r, c)].T @ v, rtol=1e-10)
    with pytest.raises(ValueError, match="does not occur"):
        group_block(K, GROUPS, 0, 7)


def test_interference_exact_norms_and_alignment(setup):
    traj, K, Kd = setup
    res = interference(K, GROUPS)
    assert res.exact and res.num_matvecs == traj.size
    assert res.labels.tolist() == [0, 1, 2]
    members = {0: [0, 2], 1: [3], 2: [1]}
    J = kpflow.ParameterJacobian(traj).to_dense().numpy()
    for i, gi in members.items():
        for j, gj in members.items():
            block = Kd[np.ix_(_rows(gi), _rows(gj))]
            assert res.norms_squared[i, j] == pytest.approx((block**2).sum(), rel=1e-10)
            # alignment = cos of the parameter-space Grams M_i = J_iᵀ J_i
            Mi, Mj = J[_rows(gi)].T @ J[_rows(gi)], J[_rows(gj)].T @ J[_rows(gj)]
            cos = (Mi * Mj).sum() / (np.linalg.norm(Mi) * np.linalg.norm(Mj))
            assert res.alignment[i, j] == pytest.approx(cos, rel=1e-9)
    np.testing.assert_allclose(np.diag(res.alignment), 1.0)
    np.testing.assert_allclose(res.norms_squared, res.norms_squared.T, rtol=1e-10)  # K symmetric
    assert np.all(res.std_error == 0)


def test_interference_randomized_is_unbiased(setup):
    traj, K, Kd = setup
    truth = interference(K, GROUPS).norms_squared
    est = np.array([interference(K, GROUPS, 6, seed=s).norms_squared for s in range(80)])
    sd = est.std(axis=0, ddof=1)
    # group 1 and 2 have 15 coordinates: 6 probes is randomized there; check all entries
    assert np.all(np.abs(est.mean(axis=0) - truth) <= 4 * sd / np.sqrt(80) + 1e-9 * truth)
    one = interference(K, GROUPS, 6, seed=0)
    assert not one.exact and one.num_matvecs == 18 and np.all(one.std_error[:, 1:] > 0)


def test_gradient_flow_alignment(setup):
    traj, K, Kd = setup
    g = torch.Generator().manual_seed(1)
    e = torch.randn(traj.shape, generator=g, dtype=torch.float64)
    res = gradient_flow_alignment(traj, e, GROUPS)
    G = kpflow.GradientFlowOperator(traj)
    full = -(G @ e.reshape(-1)).reshape(traj.shape)
    torch.testing.assert_close(res.directions.sum(0), full)
    Gd = G.to_dense().numpy()
    d = []
    for label in (0, 1, 2):
        ei = e.numpy().copy()
        ei[GROUPS != label] = 0
        d.append(-Gd @ ei.reshape(-1))
    d = np.array(d)
    np.testing.assert_allclose(res.directions.reshape(3, -1).numpy(), d, rtol=1e-9, atol=1e-12)
    cos = (d @ d.T) / np.outer(np.linalg.norm(d, axis=1), np.linalg.norm(d, axis=1))
    np.testing.assert_allclose(res.cosines, cos, rtol=1e-10)
    for i in range(3):
        other = d.sum(0) - d[i]
        assert res.with_others[i] == pytest.approx(d[i] @ other / (np.linalg.norm(d[i]) * np.linalg.norm(other)))
    assert res.share.sum() == pytest.approx(1.0)
    # the operator itself works too
    res2 = gradient_flow_alignment(G, e, GROUPS)
    np.testing.assert_allclose(res2.cosines, res.cosines, rtol=1e-12)


def test_bad_groups(setup):
    traj, K, _ = setup
    with pytest.raises(ValueError, match="groups"):
        interference(K, np.array([0, 1]))
    with pytest.raises(TypeError, match="groups"):
        interference(K, np.array([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="error"):
        gradient_flow_alignment(traj, torch.zeros(2, 2, dtype=torch.float64), GROUPS)
