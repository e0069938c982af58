"""Partial traces over named axes against dense einsum, exact and randomized."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _analysis_helpers import single_torch_thread, tiny_gru  # noqa: F401

import kpflow
from kpflow.analysis import PartialTraceOperator, effective_dimensions, partial_trace

B, T, S = 3, 4, 5
N = B * T * S
RNG = np.random.default_rng(0)
_X = RNG.standard_normal((N, N))
A = _X @ _X.T  # generic PSD: not a Kronecker product
A6 = A.reshape(B, T, S, B, T, S)

REF = {
    ("hidden",): np.einsum("btibtj->ij", A6),
    ("time",): np.einsum("bisbjs->ij", A6),
    ("batch",): np.einsum("itsjts->ij", A6),
    ("batch", "time"): np.einsum("btsBTs->btBT", A6).reshape(B * T, B * T),
    ("batch", "hidden"): np.einsum("btsBtS->bsBS", A6).reshape(B * S, B * S),
    ("time", "hidden"): np.einsum("btsbTS->tsTS", A6).reshape(T * S, T * S),
}


@pytest.mark.parametrize("keep", list(REF))
def test_exact_partial_trace_matches_einsum(keep):
    M = partial_trace(A, keep, shape=(B, T, S))
    assert isinstance(M, PartialTraceOperator) and M.exact
    np.testing.assert_allclose(M.matrix.numpy(), REF[keep], rtol=1e-12, atol=1e-10)
    assert M.shape == REF[keep].shape
    assert M.num_matvecs == N  # n_K · n_R products
    assert torch.all(M.std_error == 0)
    # matrix-free version agrees and is an operator on the kept axes
    L = partial_trace(A, keep, shape=(B, T, S), dense=False)
    assert L.matrix is None
    np.testing.assert_allclose(L.to_dense().numpy(), REF[keep], rtol=1e-12, atol=1e-10)
    v = np.random.default_rng(1).standard_normal(M.shape[1])
    np.testing.assert_allclose(L @ v, REF[keep] @ v, rtol=1e-10)
    np.testing.assert_allclose(M.rmatvec(v), REF[keep].T @ v, rtol=1e-10)


def test_keep_order_does_not_matter_and_mean_divides():
    M1 = partial_trace(A, ("time", "batch"), shape=(B, T, S))
    np.testing.assert_allclose(M1.matrix.numpy(), REF[("batch", "time")], rtol=1e-12)
    assert M1.axes == ("batch", "time") and M1.traced_axes == ("hidden",)
    Mm = partial_trace(A, "hidden", shape=(B, T, S), mean=True)
    np.testing.assert_allclose(Mm.matrix.numpy(), REF[("hidden",)] / (B * T), rtol=1e-12)


def test_not_a_compression():
    # the compression (I ⊗ 1)ᵀ A (I ⊗ 1) adds r ≠ r' terms: it differs here
    compression = np.einsum("btiBTj->ij", A6)
    M = partial_trace(A, "hidden", shape=(B, T, S)).matrix.numpy()
    assert np.abs(compression - M).max() > 1.0
    np.testing.assert_allclose(np.trace(M), np.trace(A), rtol=1e-12)


def test_randomized_is_unbiased_with_calibrated_elementwise_errors():
    keep = ("hidden",)
    est, se = [], []
    for s in range(200):
        M = partial_trace(A, keep, 4, shape=(B, T, S), seed=s)
        assert not M.exact and M.num_probes == 4 and M.num_matvecs == 4 * S
        est.append(M.matrix.numpy())
        se.append(M.std_error.numpy())
    est, se = np.array(est), np.array(se)
    sd = est.std(axis=0, ddof=1)
    bias = np.abs(est.mean(axis=0) - REF[keep])
    assert np.all(bias <= 4 * sd / np.sqrt(len(est)) + 1e-9)
    # SE ≈ sd/√m elementwise (RMS over seeds)
    ratio = np.sqrt((se**2).mean(axis=0)) / sd
    assert 0.75 <= np.median(ratio) <= 1.25


def test_randomized_matrix_free_fixed_probes_is_a_consistent_operator():
    L = partial_trace(A, "time", 3, shape=(B, T, S), dense=False, seed=0)
    D = L.to_dense()
    v = torch.randn(T, dtype=torch.float64)
    torch.testing.assert_close(L.apply(v), D @ v)
    torch.testing.assert_close(L.apply(v), L.apply(v))  # same probes every time


def test_probe_count_at_traced_size_is_exact():
    M = partial_trace(A, ("batch", "hidden"), T, shape=(B, T, S), seed=0)
    assert M.exact
    np.testing.assert_allclose(M.matrix.numpy(), REF[("batch", "hidden")], rtol=1e-12)


def test_on_K_of_a_gru_uses_the_trajectory_layout():
    traj = tiny_gru(B=2, T=5, H=3)
    K = kpflow.ParameterOperator(traj)
    K6 = K.to_dense().numpy().reshape(2, 5, 3, 2, 5, 3)
    M = partial_trace(K, ("hidden",))
    np.testing.assert_allclose(M.matrix.numpy(), np.einsum("btibtj->ij", K6), rtol=1e-10)
    M = partial_trace(K, ("batch", "time"))
    np.testing.assert_allclose(M.matrix.numpy(), np.einsum("btsBTs->btBT", K6).reshape(10, 10), rtol=1e-10)
    assert np.all(np.linalg.eigvalsh(M.matrix.numpy()) > -1e-10)  # PSD stays PSD


def test_effective_dimensions_exact_and_randomized():
    dims = effective_dimensions(A, shape=(B, T, S))
    for axis, keep in (("batch", ("batch",)), ("time", ("time",)), ("hidden", ("hidden",))):
        M = REF[keep]
        assert dims[axis].value == pytest.approx(np.trace(M) ** 2 / (M * M).sum(), rel=1e-12)
        assert dims[axis].exact
    # a rank-one hidden structure: A = I_BT ⊗ u uᵀ has hidden dimension 1
    u = np.arange(1.0, S + 1)
    Ak = np.kron(np.eye(B * T), np.outer(u, u))
    assert effective_dimensions(Ak, "hidden", shape=(B, T, S))["hidden"].value == pytest.approx(1.0)
    est = effective_dimensions(A, "hidden", num_probes=6, shape=(B, T, S), seed=0)["hidden"]
    truth = dims["hidden"].value
    assert abs(est.value - truth) < 0.2 * truth and np.isfinite(est.std_error)


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        partial_trace(A, "hidden")
    with pytest.raises(ValueError, match="shape"):
        partial_trace(A, "hidden", shape=(2, 2, 2))
    with pytest.raises(ValueError, match="unknown axis"):
        partial_trace(A, "units", shape=(B, T, S))
    with pytest.raises(ValueError, match="nothing is traced"):
        partial_trace(A, ("batch", "time", "hidden"), shape=(B, T, S))
    with pytest.raises(ValueError, match="num_probes"):
        partial_trace(A, "hidden", 0, shape=(B, T, S))
