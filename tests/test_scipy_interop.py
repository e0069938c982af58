"""SciPy's solvers on kpflow operators agree with dense answers (float64, tiny models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import dense_dZdtheta, dense_J, dense_P, make_case
from scipy.sparse.linalg import LinearOperator, aslinearoperator, cg, eigsh, gmres, lsmr, lsqr, svds

from kpflow import GradientFlowOperator, ParameterJacobian, ParameterOperator, PropagationOperator

CASES = [
    # p > N: K full rank
    dict(kind="grucell", B=2, T=4, I=2, H=3, seed=1, random_h0=True),
    # p < N: K = J J^T has a large null space
    dict(kind="rnncell_tanh", B=3, T=5, I=1, H=2, seed=2, random_h0=True),
    dict(kind="lstm2", B=1, T=3, I=2, H=2, seed=3),
]
IDS = [c["kind"] for c in CASES]


def _v0(n, seed=0):
    return np.random.default_rng(seed).standard_normal(n)


def _top_eigs(D, k):
    w, V = np.linalg.eigh(D)
    return w[::-1][:k], V[:, ::-1][:, :k]


def _check_eigenpairs(op, D, vals, vecs, k):
    want, _ = _top_eigs(D, k)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    scale = np.abs(D).max()
    np.testing.assert_allclose(vals, want, rtol=0, atol=1e-10 * scale)
    # eigenpairs of the operator, and of the dense matrix
    for j in range(k):
        v = vecs[:, j]
        assert np.linalg.norm(op.matvec(v) - vals[j] * v) <= 1e-9 * scale
        assert np.linalg.norm(D @ v - vals[j] * v) <= 1e-9 * scale


@pytest.mark.parametrize("params", CASES, ids=IDS)
def test_eigsh_of_K(params):
    traj = make_case(**params).trajectory()
    Jd = dense_J(traj).numpy()
    D = Jd @ Jd.T
    K = ParameterOperator(traj)
    k = 3
    vals, vecs = eigsh(K, k=k, which="LA", v0=_v0(K.shape[0]))
    assert vals.dtype == np.float64 and vecs.shape == (traj.size, k)
    _check_eigenpairs(K, D, vals, vecs, k)


@pytest.mark.parametrize("params", CASES, ids=IDS)
def test_eigsh_of_P_K_Pstar(params):
    traj = make_case(**params).trajectory()
    Zd = dense_dZdtheta(traj).numpy()
    D = Zd @ Zd.T
    P, K = PropagationOperator(traj), ParameterOperator(traj)
    k = 3
    for op in (P @ K @ P.H, GradientFlowOperator(traj)):
        vals, vecs = eigsh(op, k=k, v0=_v0(op.shape[0], 1))
        _check_eigenpairs(op, D, vals, vecs, k)


@pytest.mark.parametrize("params", CASES, ids=IDS)
def test_svds_of_J(params):
    traj = make_case(**params).trajectory()
    Jd = dense_J(traj).numpy()
    J = ParameterJacobian(traj)
    k = 3
    u, s, vt = svds(J, k=k, v0=_v0(min(J.shape), 2))
    want = np.linalg.svd(Jd, compute_uv=False)[:k]
    np.testing.assert_allclose(np.sort(s)[::-1], want, rtol=0, atol=1e-10 * want[0])
    # singular triplets: J v = s u
    for j in range(k):
        np.testing.assert_allclose(J.matvec(vt[j]), s[j] * u[:, j], rtol=0, atol=1e-9 * want[0])


@pytest.mark.parametrize("params", CASES, ids=IDS)
def test_lsqr_and_lsmr_on_J(params):
    traj = make_case(**params).trajectory()
    Jd = dense_J(traj).numpy()
    J = ParameterJacobian(traj)
    b = np.random.default_rng(3).standard_normal(J.shape[0])
    want = np.linalg.lstsq(Jd, b, rcond=None)[0]  # the minimum-norm least-squares solution
    scale = max(np.linalg.norm(want), 1.0)
    cond = np.linalg.cond(Jd)
    tol = 1e-12
    runs = (
        lsqr(J, b, atol=tol, btol=tol, iter_lim=20 * J.shape[1])[0],
        lsmr(J, b, atol=tol, btol=tol, maxiter=20 * J.shape[1])[0],
    )
    for x in runs:
        assert x.shape == (J.shape[1],)
        # the residual is orthogonal to range(J) (normal equations) ...
        r = b - Jd @ x
        assert np.linalg.norm(Jd.T @ r) <= 1e-8 * np.linalg.norm(Jd) * np.linalg.norm(b)
        # ... and from x0 = 0 both converge to the minimum-norm solution
        np.testing.assert_allclose(x, want, rtol=0, atol=max(1e-8, 1e-12 * cond) * scale)


def test_gmres_inverts_P_and_cg_solves_a_shifted_K():
    traj = make_case(**CASES[0]).trajectory()
    P, K = PropagationOperator(traj), ParameterOperator(traj)
    Pd = dense_P(traj).numpy()
    b = np.random.default_rng(4).standard_normal(P.shape[0])
    x, info = gmres(P, b, rtol=1e-13, atol=0, restart=P.shape[0], maxiter=5)
    assert info == 0
    np.testing.assert_allclose(x, np.linalg.solve(Pd, b), rtol=0, atol=1e-9 * np.abs(b).max())
    np.testing.assert_allclose(x, P.inverse().matvec(b), rtol=0, atol=1e-9 * np.abs(b).max())
    # a SciPy-side sum with a kpflow operator stays a LinearOperator
    shifted = K + aslinearoperator(np.eye(K.shape[0]))
    assert isinstance(shifted, LinearOperator)
    y, info = cg(shifted, b, rtol=1e-13, atol=0, maxiter=10 * K.shape[0])
    assert info == 0
    Kd = K.to_dense().numpy()
    np.testing.assert_allclose(y, np.linalg.solve(Kd + np.eye(K.shape[0]), b), rtol=0, atol=1e-9)


def test_float32_operators_work_with_eigsh():
    case = make_case("grucell", B=2, T=3, I=2, H=3, dtype=torch.float32, seed=5)
    traj = case.trajectory()
    K = ParameterOperator(traj)
    assert K.dtype == np.float32
    vals, vecs = eigsh(K, k=2, which="LA", v0=_v0(K.shape[0]).astype(np.float32))
    D = K.to_dense().double().numpy()
    want = np.linalg.eigvalsh(D)[::-1][:2]
    np.testing.assert_allclose(np.sort(vals)[::-1], want, rtol=1e-4)
