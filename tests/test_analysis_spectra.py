"""top_eigs and singular_values: the SciPy traps (PITFALLS 7, 8, 9, 13) and agreement with dense solves."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch
from _analysis_helpers import psd_low_rank, single_torch_thread, tiny_gru  # noqa: F401

import kpflow
from kpflow.analysis import DenseOperator, singular_values, top_eigs


def _true_top(A, k):
    return np.sort(np.linalg.eigvalsh(np.asarray(A, dtype=np.float64)))[::-1][:k]


# ----------------------------------------------------------- rank deficiency
@pytest.mark.parametrize("method", ["arpack", "dense", "block_krylov", "auto"])
def test_k_above_rank_reports_zeros_with_warning(method):
    A = psd_low_rank(60, 8, seed=1)
    with pytest.warns(UserWarning, match="reported as 0"):
        res = top_eigs(DenseOperator(A, psd=True), 12, method=method, seed=0, return_vectors=True)
    assert res.values.shape == (12,)
    np.testing.assert_allclose(res.values[:8], _true_top(A, 8), rtol=1e-8)
    assert np.all(res.values[8:] == 0.0)
    assert res.below_floor.tolist() == [False] * 8 + [True] * 4
    assert np.all(res.values >= 0)
    # the nonzero pairs are true eigenpairs
    V = res.vectors[:8].numpy()
    np.testing.assert_allclose(A @ V.T, V.T * res.values[:8], atol=1e-7 * res.values[0])


def test_known_rank_bound_pads_without_computing():
    A = psd_low_rank(60, 8, seed=2)
    with pytest.warns(UserWarning, match="rank bound 8"):
        res = top_eigs(DenseOperator(A, psd=True), 12, method="arpack", rank=8, seed=0, return_vectors=True)
    np.testing.assert_allclose(res.values[:8], _true_top(A, 8), rtol=1e-8)
    assert np.all(res.values[8:] == 0) and res.below_floor[8:].all()
    assert torch.all(res.vectors[8:] == 0)


def test_parameter_operator_rank_bound_is_p():
    traj = tiny_gru(B=3, T=5, I=1, H=2)  # N = 30, p = 3·2·(1+2) + 2·6 = 30... use k near N
    K = kpflow.ParameterOperator(traj)
    dense = K.to_dense().numpy()
    p = traj.num_params
    r = np.linalg.matrix_rank(dense)
    assert r <= p
    with pytest.warns(UserWarning, match="reported as 0"):
        res = top_eigs(K, min(traj.size, r + 3), method="dense")
    np.testing.assert_allclose(res.values[:r], _true_top(dense, r), rtol=1e-9, atol=1e-12)
    assert np.all(res.values[r:] == 0)


# --------------------------------------------------------------- float32 floor
def test_float32_plateau_is_flagged_and_never_negative():
    A = psd_low_rank(200, 30, seed=3, dtype=np.float32)  # 170 zero eigenvalues
    truth = _true_top(A.astype(np.float64), 30)
    for method in ("arpack", "dense"):
        with pytest.warns(UserWarning, match="precision floor"):
            res = top_eigs(DenseOperator(A, psd=True), 40, method=method, seed=0)
        np.testing.assert_allclose(res.values[:30], truth, rtol=2e-5)
        assert np.all(res.values[30:] == 0.0), res.values[30:]
        assert res.below_floor[30:].all() and not res.below_floor[:30].any()
        assert np.all(res.values >= 0)
        eps = np.finfo(np.float32).eps
        assert res.floor == pytest.approx(np.sqrt(200) * eps * res.values[0])


def test_non_psd_negative_values_are_kept():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    lam = np.linspace(-5, 3, 50)
    A = (Q * lam) @ Q.T
    res = top_eigs(A, 50, method="dense")
    np.testing.assert_allclose(res.values, np.sort(lam)[::-1], atol=1e-10)
    res = top_eigs(A, 3, method="arpack", which="LM", seed=0)
    np.testing.assert_allclose(res.values, lam[:3], rtol=1e-9)  # -5, -4.84, -4.67: largest magnitudes
    assert not res.below_floor.any()


# ---------------------------------------------------------- repeatable signs
@pytest.mark.parametrize("method", ["arpack", "block_krylov", "dense"])
def test_three_calls_agree_including_signs(method):
    A = psd_low_rank(400, 40, seed=4)
    runs = [top_eigs(A, 3, method=method, return_vectors=True, psd=True) for _ in range(3)]  # unseeded
    for r in runs[1:]:
        np.testing.assert_allclose(r.values, runs[0].values, rtol=1e-8)
        np.testing.assert_allclose(r.vectors.numpy(), runs[0].vectors.numpy(), atol=1e-6)
    V = runs[0].vectors.numpy()
    idx = np.abs(V).argmax(axis=1)
    assert np.all(V[np.arange(3), idx] > 0)  # the sign convention


@pytest.mark.parametrize("method", ["arpack", "block_krylov"])
def test_seed_makes_results_bitwise_repeatable(method):
    A = psd_low_rank(400, 40, seed=5)
    a = top_eigs(A, 4, method=method, seed=7, return_vectors=True, psd=True)
    b = top_eigs(A, 4, method=method, seed=np.random.default_rng(7), return_vectors=True, psd=True)
    c = top_eigs(A, 4, method=method, seed=7, return_vectors=True, psd=True)
    assert np.array_equal(a.values, c.values)
    assert torch.equal(a.vectors, c.vectors)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-8)


def test_v0_is_used():
    A = psd_low_rank(300, 20, seed=6)
    v0 = np.ones(300)
    a = top_eigs(A, 3, method="arpack", v0=v0, psd=True)
    b = top_eigs(A, 3, method="arpack", v0=torch.ones(300, dtype=torch.float64), psd=True)
    assert np.array_equal(a.values, b.values)
    with pytest.raises(ValueError, match="v0"):
        top_eigs(A, 3, method="arpack", v0=np.ones(5))


# ---------------------------------------------------------------- fallbacks
def test_k_at_least_n_minus_one_and_tiny_n_go_dense():
    A = psd_low_rank(10, 10, seed=7)
    res = top_eigs(A, 9, method="arpack", psd=True)
    assert res.method.startswith("dense")
    np.testing.assert_allclose(res.values, _true_top(A, 9), rtol=1e-10)
    res = top_eigs(np.array([[2.0, 1.0], [1.0, 2.0]]), 2)
    np.testing.assert_allclose(res.values, [3.0, 1.0])
    assert res.num_matvecs == 2
    res = top_eigs(np.array([[5.0]]), 1)
    assert res.values.tolist() == [5.0]


def test_arpack_no_convergence_returns_converged_pairs():
    rng = np.random.default_rng(8)
    lam = 1 + 1e-3 * rng.random(300)  # a tight cluster: hopeless in one iteration
    Q, _ = np.linalg.qr(rng.standard_normal((300, 300)))
    A = (Q * lam) @ Q.T
    with pytest.warns(UserWarning, match="ARPACK converged only"):
        res = top_eigs(A, 6, method="arpack", maxiter=1, ncv=8, seed=0, psd=True)
    assert len(res.values) < 6
    assert res.converged.all()


def test_block_krylov_not_converged_warns_and_flags():
    A = psd_low_rank(500, 60, seed=9)
    with pytest.warns(UserWarning, match="block Krylov converged"):
        res = top_eigs(A, 5, method="block_krylov", maxiter=1, depth=1, tol=1e-14, psd=True, seed=0)
    assert res.converged.shape == (5,) and not res.converged.all()


# --------------------------------------------------- torch-native block solver
class _NoNumpy(DenseOperator):
    """A dense operator that fails if anything goes through NumPy."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = 0

    def _mm(self, V):
        assert isinstance(V, torch.Tensor) and V.dim() == 2
        self.calls += V.shape[1]
        return super()._mm(V)

    def _matvec(self, x):  # pragma: no cover - must not be reached
        raise AssertionError("NumPy round trip")

    _matmat = _rmatvec = _matvec


def test_block_krylov_is_torch_native_and_counts_columns():
    rng = np.random.default_rng(10)
    lam = np.concatenate([np.geomspace(100, 1, 20), np.full(580, 0.01)])
    Q, _ = np.linalg.qr(rng.standard_normal((600, 600)))
    op = _NoNumpy((Q * lam) @ Q.T, psd=True)
    res = top_eigs(op, 8, method="block_krylov", seed=0, return_vectors=True)
    np.testing.assert_allclose(res.values, lam[:8], rtol=1e-9)
    assert res.num_matvecs == op.calls
    assert res.method == "block_krylov" and res.converged.all()
    V = res.vectors.numpy()
    np.testing.assert_allclose(np.abs(V @ Q[:, :8]), np.eye(8), atol=1e-6)


def test_arpack_counts_every_column():
    A = psd_low_rank(300, 30, seed=11)
    calls = []

    def mv(x):
        calls.append(1)
        return A @ x

    lin = sla.LinearOperator((300, 300), matvec=mv, dtype=np.float64)
    res = top_eigs(lin, 5, method="arpack", seed=0, psd=True)
    assert res.num_matvecs == len(calls) > 0
    np.testing.assert_allclose(res.values, _true_top(A, 5), rtol=1e-9)


def test_blas_threads_are_limited_inside_arpack():
    from threadpoolctl import threadpool_info

    A = psd_low_rank(300, 30, seed=12)
    seen = []

    def mv(x):
        seen.append(max(d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"))
        return A @ x

    lin = sla.LinearOperator((300, 300), matvec=mv, dtype=np.float64)
    top_eigs(lin, 3, method="arpack", seed=0, blas_threads=1, psd=True)
    assert set(seen) == {1}


# --------------------------------------------------------- kpflow operators
def test_top_eigs_of_K_and_PKP_match_dense_and_reshape():
    traj = tiny_gru(B=3, T=10, I=2, H=4)  # N = 120, p = 3·4·6 + 24 = 96
    K = kpflow.ParameterOperator(traj)
    G = kpflow.GradientFlowOperator(traj)
    for op in (K, G):
        dense = op.to_dense().numpy()
        for method in ("arpack", "block_krylov"):
            res = top_eigs(op, 5, method=method, seed=0, return_vectors=True)
            assert res.vectors.shape == (5, 3, 10, 4)
            np.testing.assert_allclose(res.values, _true_top(dense, 5), rtol=1e-8)
            V = res.vectors.reshape(5, -1).numpy().T
            np.testing.assert_allclose(dense @ V, V * res.values, atol=1e-6 * res.values[0])


def test_dual_gram_solve_matches_dense_and_primal():
    traj = tiny_gru(B=8, T=10, I=2, H=4)  # N = 320, p = 96: 2p <= N, so "auto" solves on c Fᵀ F
    J = kpflow.ParameterJacobian(traj)
    ops = {
        "K": kpflow.ParameterOperator(traj),
        "K mean": kpflow.ParameterOperator(traj, normalization="mean"),
        "PKP*": kpflow.GradientFlowOperator(traj),
        "2 J Jᵀ": 2.0 * (J @ J.H),
    }
    for name, op in ops.items():
        dense = op.to_dense().numpy()
        dual = top_eigs(op, 5, method="arpack", seed=0, return_vectors=True)
        primal = top_eigs(op, 5, method="arpack", seed=0, return_vectors=True, dual=False)
        assert "dual" in dual.method and "dual" not in primal.method, name
        np.testing.assert_allclose(dual.values, _true_top(dense, 5), rtol=1e-9, err_msg=name)
        V = dual.vectors.reshape(5, -1).numpy().T
        np.testing.assert_allclose(np.linalg.norm(V, axis=0), 1.0, rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(dense @ V, V * dual.values, atol=1e-9 * dual.values[0], err_msg=name)
        # same sign convention, so the same vectors as the primal solve
        np.testing.assert_allclose(dual.vectors.numpy(), primal.vectors.numpy(), atol=1e-8, err_msg=name)
        assert dual.num_matvecs > 0


def test_dual_is_not_used_when_it_does_not_pay_or_cannot():
    small_n = tiny_gru(B=3, T=10, I=2, H=4)  # N = 120 < 2p = 192
    assert "dual" not in top_eigs(kpflow.ParameterOperator(small_n), 3, method="arpack", seed=0).method
    traj = tiny_gru(B=8, T=10, I=2, H=4)
    K = kpflow.ParameterOperator(traj)
    v0 = np.ones(K.shape[0])
    assert "dual" not in top_eigs(K, 3, method="arpack", v0=v0).method  # v0 lives in trajectory space
    with pytest.raises(ValueError, match="dual"):
        top_eigs(K, 3, method="arpack", v0=v0, dual=True)
    with pytest.raises(ValueError, match="dual"):
        top_eigs(DenseOperator(psd_low_rank(300, 30, seed=1), psd=True), 3, method="arpack", dual=True)
    P = kpflow.PropagationOperator(traj)
    assert "dual" not in top_eigs(P @ P.H, 3, method="arpack", seed=0).method  # p = n: nothing to gain
    # k beyond the rank: still the zero padding of the primal path
    with pytest.warns(UserWarning, match="rank"):
        res = top_eigs(K, 96, method="arpack", seed=0)
    assert res.values.shape == (96,)


def test_ppt_is_recognised_as_psd():
    traj = tiny_gru(B=2, T=6, H=3)
    P = kpflow.PropagationOperator(traj)
    res = top_eigs(P @ P.H, 36, method="dense")
    assert np.all(res.values >= 0)
    Pd = P.to_dense().numpy()
    np.testing.assert_allclose(res.values, np.sort(np.linalg.eigvalsh(Pd @ Pd.T))[::-1], rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------- singular values
def test_singular_values_of_J_largest_with_vectors():
    traj = tiny_gru(B=3, T=10, I=2, H=4)
    J = kpflow.ParameterJacobian(traj)
    Jd = J.to_dense().numpy()
    s_true = np.linalg.svd(Jd, compute_uv=False)
    res = singular_values(J, 4, method="arpack", seed=0, return_vectors=True)
    np.testing.assert_allclose(res.values, s_true[:4], rtol=1e-8)
    assert res.vectors.shape == (4, 3, 10, 4)  # left: trajectory space
    assert res.right_vectors.shape == (4, traj.num_params)
    U = res.vectors.reshape(4, -1).numpy().T
    V = res.right_vectors.numpy().T
    np.testing.assert_allclose(Jd @ V, U * res.values, atol=1e-7 * s_true[0])


def test_smallest_singular_value_of_P_via_inverse():
    traj = tiny_gru(B=2, T=8, I=2, H=3)
    P = kpflow.PropagationOperator(traj)
    Pd = P.to_dense().numpy()
    s_true = np.linalg.svd(Pd, compute_uv=False)
    res = singular_values(P, 3, which="smallest", method="dense", return_vectors=True)
    np.testing.assert_allclose(res.values, np.sort(s_true)[:3], rtol=1e-9)
    U = res.vectors.reshape(3, -1).numpy().T
    V = res.right_vectors.reshape(3, -1).numpy().T
    np.testing.assert_allclose(Pd @ V, U * res.values, atol=1e-9)
    top = singular_values(P, 2, method="dense")
    np.testing.assert_allclose(top.values, s_true[:2], rtol=1e-10)


def test_smallest_singular_values_of_a_matrix():
    rng = np.random.default_rng(13)
    M = rng.standard_normal((30, 30)) + 5 * np.eye(30)
    res = singular_values(M, 2, which="smallest")
    np.testing.assert_allclose(res.values, np.sort(np.linalg.svd(M, compute_uv=False))[:2], rtol=1e-9)
    with pytest.raises(ValueError, match="square"):
        singular_values(rng.standard_normal((4, 5)), 2, which="smallest")


# --------------------------------------------------------------- bad input
def test_bad_arguments_are_named():
    A = psd_low_rank(20, 5)
    with pytest.raises(ValueError, match="k:"):
        top_eigs(A, 0)
    with pytest.raises(ValueError, match="k:"):
        top_eigs(A, 21)
    with pytest.raises(TypeError, match="k:"):
        top_eigs(A, 2.0)
    with pytest.raises(ValueError, match="which"):
        top_eigs(A, 2, which="SM")
    with pytest.raises(ValueError, match="method"):
        top_eigs(A, 2, method="lobpcg2")
    with pytest.raises(ValueError, match="square"):
        top_eigs(np.ones((3, 4)), 1)
    with pytest.raises(TypeError, match="op:"):
        top_eigs("matrix", 1)


def test_non_finite_products_are_named_not_an_arpack_error():
    A = psd_low_rank(200, 20, seed=3)
    A[0, 0] = np.inf
    for method in ("arpack", "block_krylov", "dense"):
        with pytest.raises(FloatingPointError, match="non-finite"):
            top_eigs(DenseOperator(A), 3, method=method, seed=0)
