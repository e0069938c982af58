"""Randomized traces and Frobenius norms: unbiased, calibrated, exact at full budget (PITFALLS 10)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch
from _analysis_helpers import psd_low_rank, single_torch_thread, tiny_gru  # noqa: F401

import kpflow
from kpflow.analysis import DenseOperator, frobenius_norm, trace

N = 60
DIAG = np.diag(np.arange(1, N + 1)).astype(np.float64)  # tr = 1830
LOWRANK = psd_low_rank(N, 5, seed=1, noise=0.5)


def _repeat(fn, reps):
    vals, ses = [], []
    for s in range(reps):
        e = fn(s)
        vals.append(e.value)
        ses.append(e.std_error)
    return np.array(vals), np.array(ses)


# -------------------------------------------------------------- exactness
@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_exact_when_budget_reaches_dimension(method):
    for budget in (None, N, N + 7):
        e = trace(DIAG, budget, method, seed=0)
        assert e.value == 1830.0 and e.std_error == 0.0 and e.method == "exact"
        assert e.num_matvecs == N
    e = trace(LOWRANK, N, method)
    assert e.value == pytest.approx(np.trace(LOWRANK), rel=1e-12)


def test_exact_method_needs_full_budget():
    assert trace(DIAG, method="exact").value == 1830.0
    with pytest.raises(ValueError, match="num_matvecs"):
        trace(DIAG, 10, "exact")


# ------------------------------------------------------------ budgets
def test_impossible_budgets_are_rejected():
    for bad in (1, 2):
        with pytest.raises(ValueError, match="Hutch\\+\\+ needs at least 3"):
            trace(DIAG, bad, "hutch++", seed=0)
    with pytest.raises(ValueError, match="XTrace needs at least 4"):
        trace(DIAG, 3, "xtrace", seed=0)
    with pytest.raises(ValueError, match="num_matvecs"):
        trace(DIAG, 0, "hutchinson")
    with pytest.raises(TypeError, match="num_matvecs"):
        trace(DIAG, 10.0, "hutchinson")
    with pytest.raises(ValueError, match="method"):
        trace(DIAG, 10, "hutch+")


def test_budget_is_spent_exactly_and_reported():
    for m in (3, 4, 10, 100 % N + 1):
        e = trace(LOWRANK, m, "hutch++", seed=0)
        assert e.num_matvecs == m
        assert e.num_probes == m - 2 * (m // 3)
    e = trace(LOWRANK, 10, "hutchinson", seed=0)
    assert e.num_matvecs == 10 == e.num_probes
    with pytest.warns(UserWarning, match="even budget"):
        e = trace(LOWRANK, 11, "xtrace", seed=0)
    assert e.num_matvecs == 10


def test_single_probe_has_nan_standard_error_not_zero():
    e = trace(LOWRANK, 1, "hutchinson", seed=0)
    assert np.isnan(e.std_error)


# ----------------------------------------------------- unbiased, calibrated
@pytest.mark.parametrize(
    "method,budget,dist",
    [("hutchinson", 10, "gaussian"), ("hutch++", 12, "rademacher"), ("hutch++", 12, "gaussian"), ("xtrace", 12, None)],
)
@pytest.mark.parametrize("name", ["diag", "lowrank"])
def test_estimators_are_unbiased(method, budget, dist, name):
    A = DIAG if name == "diag" else LOWRANK
    kw = {} if dist is None else {"distribution": dist}
    vals, _ = _repeat(lambda s: trace(A, budget, method, seed=s, **kw), 300)
    truth = np.trace(A)
    sd_mean = vals.std(ddof=1) / np.sqrt(len(vals))
    assert abs(vals.mean() - truth) <= 4 * sd_mean + 1e-9 * truth


def test_hutchinson_on_a_diagonal_with_rademacher_is_exact_per_probe():
    e = trace(DIAG, 5, "hutchinson", seed=3)
    assert e.value == pytest.approx(1830.0) and e.std_error == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method,budget", [("hutchinson", 60 - 20), ("hutch++", 45)])
def test_standard_errors_are_calibrated(method, budget):
    A = psd_low_rank(200, 30, seed=2, noise=1.0)
    truth = np.trace(A)
    vals, ses = _repeat(lambda s: trace(A, budget, method, seed=s, distribution="gaussian"), 400)
    coverage = np.mean(np.abs(vals - truth) <= 2 * ses)
    assert 0.90 <= coverage <= 0.99, coverage
    # SE ≈ sd / √m: the mean reported SE matches the spread of the estimates
    assert 0.8 <= ses.mean() / vals.std(ddof=1) <= 1.2


def test_hutchinson_variance_formula():
    # Rademacher: Var(zᵀAz) = 2(‖A‖_F² − Σ A_ii²) for symmetric A
    A = LOWRANK
    var = 2 * ((A * A).sum() - (np.diag(A) ** 2).sum())
    m = 25
    vals, ses = _repeat(lambda s: trace(A, m, "hutchinson", seed=s), 400)
    assert vals.var(ddof=1) == pytest.approx(var / m, rel=0.2)
    assert (ses**2).mean() == pytest.approx(var / m, rel=0.15)


def test_hutch_plus_plus_beats_hutchinson_on_low_rank():
    A = psd_low_rank(200, 5, seed=3, noise=0.01)
    h, _ = _repeat(lambda s: trace(A, 30, "hutchinson", seed=s), 60)
    hpp, _ = _repeat(lambda s: trace(A, 30, "hutch++", seed=s), 60)
    assert np.abs(hpp - np.trace(A)).mean() < 0.1 * np.abs(h - np.trace(A)).mean()


# ----------------------------------------------------- seeds, dtype, device
def test_seeds_reproduce():
    a = trace(LOWRANK, 20, "hutch++", seed=5)
    b = trace(LOWRANK, 20, "hutch++", seed=5)
    c = trace(LOWRANK, 20, "hutch++", seed=np.random.default_rng(5))
    d = trace(LOWRANK, 20, "hutch++", seed=np.random.default_rng(5))
    e = trace(LOWRANK, 20, "hutch++", seed=torch.Generator().manual_seed(5))
    f = trace(LOWRANK, 20, "hutch++", seed=torch.Generator().manual_seed(5))
    assert a.value == b.value and c.value == d.value and e.value == f.value
    assert trace(LOWRANK, 20, "hutch++", seed=6).value != a.value
    with pytest.raises(TypeError, match="seed"):
        trace(LOWRANK, 20, seed="five")
    with pytest.raises(ValueError, match="seed"):
        trace(LOWRANK, 20, seed=-1)


class _Recorder(DenseOperator):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.inputs = []

    def _mm(self, V):
        self.inputs.append((V.dtype, V.device, tuple(V.shape)))
        return super()._mm(V)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_probes_in_operator_dtype_and_device(method):
    op = _Recorder(torch.as_tensor(LOWRANK, dtype=torch.float32))
    trace(op, 12, method, seed=0)
    assert {d for d, _, _ in op.inputs} == {torch.float32}
    assert {dev.type for _, dev, _ in op.inputs} == {"cpu"}
    assert sum(s[1] for _, _, s in op.inputs) == 12


def test_scipy_and_torch_inputs():
    lin = sla.aslinearoperator(LOWRANK)
    assert trace(lin).value == pytest.approx(np.trace(LOWRANK))
    assert trace(torch.as_tensor(LOWRANK)).value == pytest.approx(np.trace(LOWRANK))
    with pytest.raises(ValueError, match="square"):
        trace(np.ones((3, 4)))


# ------------------------------------------------------------ Gram-aware
def test_gram_trace_of_K_exact_and_one_sided():
    traj = tiny_gru(B=3, T=10, H=4)  # N = 120 > p = 96
    K = kpflow.ParameterOperator(traj)
    truth = float(torch.trace(K.to_dense()))
    e = trace(K)  # exact via the p columns of J (fewer than N)
    assert e.value == pytest.approx(truth, rel=1e-12) and e.num_matvecs == traj.num_params
    # same probes, same samples: zᵀ K z = ‖Jᵀ z‖²
    a = trace(K, 20, "hutchinson", seed=1, gram=True)
    b = trace(K, 20, "hutchinson", seed=1, gram=False)
    np.testing.assert_allclose(a.samples, b.samples, rtol=1e-10)
    assert a.method.startswith("hutchinson (gram")
    G = kpflow.GradientFlowOperator(traj, normalization="mean")
    assert trace(G).value == pytest.approx(float(torch.trace(G.to_dense())), rel=1e-12)
    with pytest.raises(ValueError, match="gram"):
        trace(DIAG, 10, gram=True)


# ------------------------------------------------------------ Frobenius
def test_frobenius_norm_exact_unbiased_and_hutchpp():
    A = LOWRANK
    truth = np.linalg.norm(A)
    assert frobenius_norm(A).value == pytest.approx(truth, rel=1e-12)
    vals, ses = _repeat(lambda s: frobenius_norm(A, 15, squared=True, seed=s), 300)
    assert abs(vals.mean() - truth**2) <= 4 * vals.std(ddof=1) / np.sqrt(300)
    e = frobenius_norm(A, 15, "hutch++", seed=0)
    assert e.value == pytest.approx(truth, rel=1e-2)
    rect = np.arange(12.0).reshape(3, 4)
    assert frobenius_norm(rect).value == pytest.approx(np.linalg.norm(rect))
    with pytest.raises(ValueError, match="Hutch"):
        frobenius_norm(A, 2, "hutch++")


def test_frobenius_of_K_matches_dense():
    traj = tiny_gru(B=2, T=5, H=3)
    K = kpflow.ParameterOperator(traj)
    assert frobenius_norm(K).value == pytest.approx(float(torch.linalg.matrix_norm(K.to_dense())), rel=1e-12)


class _Identity(kpflow.KPOperator):
    def __init__(self, n):
        super().__init__((n, n), torch.float64, "cpu")

    def _mv(self, v):
        return v

    _rmv = _mv


def test_default_budget_is_exact_only_when_cheap():
    big = _Identity(3000)
    e = trace(big, seed=0)
    assert e.method == "hutch++" and e.num_matvecs == 150
    assert e.value == pytest.approx(3000.0, rel=0.01) and e.std_error > 0
    f = frobenius_norm(big, seed=0)
    assert f.method == "hutchinson" and f.num_matvecs == 150
    assert trace(big, method="exact").num_matvecs == 3000
