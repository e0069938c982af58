"""Adapters, structure detection and probes of the analysis layer."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg as sla
import torch
from _analysis_helpers import single_torch_thread, tiny_gru  # noqa: F401

import kpflow
from kpflow.analysis import DenseOperator, Estimate, trace
from kpflow.analysis._operators import as_operator, find_trajectory, gram_factor, is_psd, rank_bound
from kpflow.analysis._probes import draw_probes, make_generator


def test_as_operator_wraps_everything():
    M = np.arange(9.0).reshape(3, 3)
    for obj in (M, torch.tensor(M), sla.aslinearoperator(M), scipy.sparse.csr_matrix(M)):
        op = as_operator(obj)
        np.testing.assert_allclose(op.to_dense().numpy(), M)
        assert op.torch_dtype == torch.float64
    assert as_operator(M.astype(np.float32)).torch_dtype == torch.float32
    assert as_operator(np.eye(3, dtype=np.int64)).torch_dtype == torch.float64  # integers: exact in float64
    with pytest.raises(TypeError, match="integer tensor|dtype"):
        as_operator(torch.eye(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="2-D"):
        as_operator(np.ones(3))
    with pytest.raises(TypeError, match="Trajectory"):
        as_operator(tiny_gru())
    with pytest.raises(TypeError, match="complex"):
        as_operator(sla.aslinearoperator(np.eye(2, dtype=complex)))


def test_dense_operator_products_and_adjoint():
    M = torch.randn(4, 3, dtype=torch.float64)
    op = DenseOperator(M)
    x = torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(op.apply(x), M @ x)
    torch.testing.assert_close(op.H.apply(torch.ones(4, dtype=torch.float64)), M.T @ torch.ones(4, dtype=torch.float64))
    np.testing.assert_allclose(op @ x.numpy(), (M @ x).numpy())


def test_structure_detection():
    traj = tiny_gru(B=2, T=4, H=3)
    K = kpflow.ParameterOperator(traj)
    P = kpflow.PropagationOperator(traj)
    G = kpflow.GradientFlowOperator(traj)
    J = kpflow.ParameterJacobian(traj)
    assert is_psd(K) and is_psd(G) and is_psd(P @ P.H) and is_psd(P @ K @ P.H) and is_psd(2.0 * K)
    assert is_psd(K + G) and is_psd(J @ J.H)
    assert not is_psd(P) and not is_psd(P @ P) and not is_psd(-1.0 * K) and not is_psd(P.H @ K @ P.H)
    assert rank_bound(K) == min(traj.size, traj.num_params)
    assert find_trajectory(P @ K @ P.H) is traj and find_trajectory(DenseOperator(np.eye(2))) is None
    for op in (K, G, P @ P.H, 3.0 * K, J @ J.H):
        F, c = gram_factor(op)
        Fd = F.to_dense()
        torch.testing.assert_close(c * Fd @ Fd.T, op.to_dense())
    assert gram_factor(P) is None and gram_factor(P @ K @ P.H) is None


def test_generators_and_probes():
    a = draw_probes((1000, 3), torch.float32, torch.device("cpu"), make_generator(0, "cpu"))
    assert a.dtype == torch.float32 and set(a.unique().tolist()) == {-1.0, 1.0}
    b = draw_probes((1000, 3), torch.float64, torch.device("cpu"), make_generator(0, "cpu"), "gaussian")
    assert b.dtype == torch.float64 and abs(float(b.std()) - 1) < 0.1
    g = torch.Generator()
    assert make_generator(g, "cpu") is g
    with pytest.raises(ValueError, match="distribution"):
        draw_probes((3, 1), torch.float64, torch.device("cpu"), g, "uniform")
    with pytest.raises(TypeError, match="seed"):
        make_generator(1.5, "cpu")


def test_estimate_formatting_and_interval():
    e = Estimate(10.0, 0.5, 20, "hutch++", 6)
    assert e.interval() == (9.0, 11.0) and float(e) == 10.0 and not e.exact
    assert f"{e:.1f}" == "10.0 ± 0.5"
    assert f"{trace(np.eye(3)):.1f}" == "3.0"
