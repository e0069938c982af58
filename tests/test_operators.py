"""Every operator against dense matrices built independently with jacrev, plus
the mechanics of the operator layer: matmat vs matvec, shapes, dtypes,
ownership, the torch-native path and algebra, finite differences, snapshots
and the ``params`` selection."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from helpers import (
    ALL_KINDS,
    BUILTIN_KINDS,
    USER_KINDS,
    assert_close,
    dense_dZdtheta,
    dense_J,
    dense_P,
    dense_state_jacobians,
    fnorm,
    make_case,
    native_states,
    rand,
    theta_vector,
)
from torch import nn

import kpflow
from kpflow import (
    GradientFlowOperator,
    InversePropagationOperator,
    ParameterJacobian,
    ParameterOperator,
    PropagationOperator,
)
from kpflow.operator import KPOperator

F64 = torch.float64
C = 16.0  # tolerance c·eps·n·scale, as in test_identities


def _tiny(kind, **kw):
    kw = {"B": 2, "T": 3, "I": 2, "H": 2, "seed": 7, "random_h0": True, **kw}
    return make_case(kind, **kw)


def _all_ops(traj, jacobians="matrix_free"):
    P = PropagationOperator(traj, jacobians=jacobians)
    return {
        "J": ParameterJacobian(traj),
        "K": ParameterOperator(traj),
        "P": P,
        "Pinv": P.inverse(),
        "G": GradientFlowOperator(traj, jacobians=jacobians),
    }


# ------------------------------------------------------------ dense checks
@pytest.mark.parametrize("reference", [False, True], ids=["default", "reference"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_operators_match_dense_jacrev(kind, reference):
    if reference and kind in USER_KINDS:
        pytest.skip("user cells have one path only")
    traj = _tiny(kind).trajectory(reference=reference)
    B, T, S = traj.shape
    n = T * S
    Jd = dense_J(traj)
    Pd = dense_P(traj)
    Zd = dense_dZdtheta(traj)
    assert Jd.shape == (traj.size, traj.num_params) and Pd.shape == (traj.size, traj.size)
    ops = _all_ops(traj)
    J, K, P, Pinv, G = (ops[k] for k in ("J", "K", "P", "Pinv", "G"))
    assert_close(J.to_dense(), Jd, F64, n=n, c=C, msg="J")
    assert_close(J.H.to_dense(), Jd.T, F64, n=n, c=C, msg="J.H")
    assert_close(K.to_dense(), Jd @ Jd.T, F64, n=n, c=C, msg="K = J J^T")
    assert_close(P.to_dense(), Pd, F64, n=n, c=C, msg="P")
    assert_close(P.H.to_dense(), Pd.T, F64, n=n, c=C, msg="P.H")
    Pinv_d = torch.linalg.inv(Pd)
    assert_close(Pinv.to_dense(), Pinv_d, F64, n=n, c=C, msg="P^-1")
    assert_close(Pinv.H.to_dense(), Pinv_d.T, F64, n=n, c=C, msg="P^-T")
    # dZ/dθ = P J_θ and P K P* = (dZ/dθ)(dZ/dθ)^T, the hidden-state NTK
    assert_close(Pd @ Jd, Zd, F64, n=n, c=C, msg="dense P J vs dZ/dtheta")
    assert_close((P @ J).to_dense(), Zd, F64, n=n, c=C, msg="(P@J) vs dZ/dtheta")
    assert_close(G.to_dense(), Zd @ Zd.T, F64, n=n, c=C, msg="P K P* vs NTK")
    assert_close((P @ K @ P.H).to_dense(), Zd @ Zd.T, F64, n=n, c=C, msg="P@K@P.H vs NTK")
    # the paper's averaged inner product: a visible option dividing by B·T
    Km = ParameterOperator(traj, normalization="mean")
    Gm = GradientFlowOperator(traj, normalization="mean")
    assert_close(Km.to_dense(), Jd @ Jd.T / (B * T), F64, n=n, c=C, msg="K mean")
    assert_close(Gm.to_dense(), Zd @ Zd.T / (B * T), F64, n=n, c=C, msg="PKP* mean")


@pytest.mark.parametrize("reference", [False, True], ids=["default", "reference"])
@pytest.mark.parametrize("kind", ["rnncell_relu", "lstmcell", "gru2", "lstm2_nobias", "user_tuple"])
def test_materialize_gives_the_same_matrices(kind, reference):
    traj = _tiny(kind).trajectory(reference=reference)
    n = traj.num_steps * traj.state_size
    free = _all_ops(traj, "matrix_free")
    mat = _all_ops(traj, "materialize")
    assert mat["P"].strategy == "materialize" and mat["P"].jacobians is not None
    assert free["P"].strategy == "matrix_free" and free["P"].jacobians is None
    for name in ("P", "Pinv", "G"):
        for t in (lambda o: o, lambda o: o.H):
            a, b = t(mat[name]).to_dense(), t(free[name]).to_dense()
            assert_close(a, b, F64, n=n, c=C, msg=name)
    # "auto" materializes when it fits the budget, not otherwise
    assert PropagationOperator(traj, jacobians="auto").strategy == "materialize"
    assert PropagationOperator(traj, jacobians="auto", memory_budget=0).strategy == "matrix_free"
    assert GradientFlowOperator(traj, jacobians="auto", memory_budget=0).propagation.strategy == "matrix_free"


@pytest.mark.parametrize("reference", [False, True], ids=["default", "reference"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_state_jacobians_match_per_step_jacrev(kind, reference):
    if reference and kind in USER_KINDS:
        pytest.skip("user cells have one path only")
    traj = _tiny(kind).trajectory(reference=reference)
    A = kpflow.state_jacobians(traj)
    B, T, S = traj.shape
    assert A.shape == (B, T, S, S) and A.dtype == F64
    assert_close(A, dense_state_jacobians(traj), F64, n=S, c=C)
    assert_close(kpflow.state_jacobians(traj, chunk_size=1), A, F64, n=S, c=C, msg="chunked")


# -------------------------------------------------------- finite differences
@pytest.mark.parametrize("reference", [False, True], ids=["default", "reference"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_finite_differences_J_and_P(kind, reference):
    if reference and kind in USER_KINDS:
        pytest.skip("user cells have one path only")
    traj = _tiny(kind, T=4).trajectory(reference=reference)
    eps = 1e-6
    v = rand(traj.num_params, F64, 1)
    th0 = theta_vector(traj)
    with torch.no_grad():
        plus = traj.step_all(traj.vector_to_theta(th0 + eps * v))
        minus = traj.step_all(traj.vector_to_theta(th0 - eps * v))
        fd = (plus - minus) / (2 * eps)
    Jv = ParameterJacobian(traj) @ v
    assert float((Jv - fd.reshape(-1)).abs().max()) <= 1e-7 * max(1.0, fnorm(Jv))

    q = rand(traj.size, F64, 2).reshape(traj.shape)
    with torch.no_grad():
        fd = (traj.rollout(forcing=eps * q) - traj.rollout(forcing=-eps * q)) / (2 * eps)
    Pq = PropagationOperator(traj) @ q.reshape(-1)
    assert float((Pq - fd.reshape(-1)).abs().max()) <= 1e-7 * max(1.0, fnorm(Pq))


@pytest.mark.parametrize("kind", BUILTIN_KINDS)
def test_finite_differences_of_the_torch_module_itself(kind):
    """P J v against the module run as itself with perturbed weights (PITFALLS 4)."""
    case = _tiny(kind, T=4)
    traj = case.trajectory()
    eps = 1e-6
    v = rand(traj.num_params, F64, 3)
    th0 = nn.utils.parameters_to_vector(case.model.parameters()).detach()
    plus, minus = copy.deepcopy(case.model), copy.deepcopy(case.model)
    nn.utils.vector_to_parameters(th0 + eps * v, plus.parameters())
    nn.utils.vector_to_parameters(th0 - eps * v, minus.parameters())
    with torch.no_grad():
        fd = (native_states(case, plus) - native_states(case, minus)) / (2 * eps)
    PJv = PropagationOperator(traj) @ (ParameterJacobian(traj) @ v)
    assert float((PJv - fd.reshape(-1)).abs().max()) <= 1e-7 * max(1.0, fnorm(PJv))


# ------------------------------------------------------- matmat vs matvec
@pytest.mark.parametrize("reference", [False, True], ids=["default", "reference"])
@pytest.mark.parametrize("chunk_size", [None, 1, 2, 32])
@pytest.mark.parametrize("kind", ["grucell", "lstm2", "user_tuple"])
def test_matmat_equals_columnwise_matvec(kind, chunk_size, reference):
    if reference and kind in USER_KINDS:
        pytest.skip("user cells have one path only")
    traj = _tiny(kind).trajectory(reference=reference)
    P = PropagationOperator(traj, chunk_size=chunk_size)
    ops = {
        "J": ParameterJacobian(traj, chunk_size=chunk_size),
        "K": ParameterOperator(traj, chunk_size=chunk_size),
        "P": P,
        "Pinv": P.inverse(),
        "G": GradientFlowOperator(traj, chunk_size=chunk_size),
        "PKP.H": P @ ParameterOperator(traj, chunk_size=chunk_size) @ P.H,
    }
    k = 5
    for name, op in ops.items():
        assert op.chunk_size == chunk_size
        m, n = op.shape
        X = rand(n, F64, 4, k).numpy()
        Y = rand(m, F64, 5, k).numpy()
        cols = np.stack([op.matvec(X[:, j]) for j in range(k)], axis=1)
        rcols = np.stack([op.rmatvec(Y[:, j]) for j in range(k)], axis=1)
        for got, want in ((op.matmat(X), cols), (op @ X, cols), (op.rmatmat(Y), rcols), (op.H @ Y, rcols)):
            assert isinstance(got, np.ndarray) and got.shape == want.shape
            assert_close(got, want, F64, n=traj.num_steps * traj.state_size, c=C, msg=name)
        # torch path
        Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
        tcols = torch.stack([op @ Xt[:, j] for j in range(k)], dim=1)
        trcols = torch.stack([op.apply_adjoint(Yt[:, j]) for j in range(k)], dim=1)
        assert_close(op @ Xt, tcols, F64, n=traj.num_steps * traj.state_size, c=C, msg=name + " torch")
        assert_close(op.matmat(Xt), tcols, F64, n=traj.num_steps * traj.state_size, c=C, msg=name + " torch")
        assert_close(op.rmatmat(Yt), trcols, F64, n=traj.num_steps * traj.state_size, c=C, msg=name + " torch")
        assert_close(tcols, cols, F64, n=traj.num_steps * traj.state_size, c=C, msg=name + " torch vs numpy")


def test_invalid_chunk_size_is_refused():
    traj = _tiny("grucell").trajectory()
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="chunk_size"):
            PropagationOperator(traj, chunk_size=bad)


@pytest.mark.parametrize("name", ["J", "K", "P", "Pinv", "G"])
def test_column_vectors_and_ownership(name):
    traj = _tiny("lstmcell").trajectory()
    op = _all_ops(traj)[name]
    m, n = op.shape
    x = rand(n, F64, 6).numpy()
    y = rand(m, F64, 7).numpy()
    a = op.matvec(x)
    b = op.matvec(x[:, None])
    assert a.shape == (m,) and b.shape == (m, 1)
    np.testing.assert_array_equal(a, b[:, 0])
    c = op.rmatvec(y)
    d = op.rmatvec(y[:, None])
    assert c.shape == (n,) and d.shape == (n, 1)
    np.testing.assert_array_equal(c, d[:, 0])
    outs = [a, b, c, d, op.matmat(x[:, None]), op.rmatmat(y[:, None]), op @ x, op.dot(x), op.H @ y,
            op.matmat(np.stack([x, x], 1))]
    for out in outs:
        assert isinstance(out, np.ndarray)
        assert out.flags.owndata, "returned arrays must own their memory"
        assert out.dtype == np.float64
    assert op.matmat(x[:, None]).shape == (m, 1)
    # torch (n, 1) gives (m, 1)
    assert op.apply(torch.from_numpy(x)[:, None]).shape == (m, 1)
    assert op.apply_adjoint(torch.from_numpy(y)[:, None]).shape == (n, 1)
    # results do not alias the input
    x_copy = x.copy()
    op.matvec(x)
    np.testing.assert_array_equal(x, x_copy)


def test_numpy_inputs_are_cast_to_the_declared_dtype():
    case = _tiny("grucell", dtype=torch.float32)
    traj = case.trajectory()
    assert traj.dtype == torch.float32
    for name, op in _all_ops(traj).items():
        assert op.dtype == np.float32, name
        m, n = op.shape
        # SciPy's dtype probe: an int8 zero vector (PITFALLS 1)
        z = op.matvec(np.zeros(n, dtype=np.int8))
        assert z.dtype == np.float32 and not z.any()
        xi = np.arange(n, dtype=np.int8) % 3
        yi = op.matvec(xi)
        assert yi.dtype == np.float32
        np.testing.assert_array_equal(yi, op.matvec(xi.astype(np.float32)))
        x64 = rand(n, F64, 8).numpy()
        y32 = op.matvec(x64)
        assert y32.dtype == np.float32
        np.testing.assert_array_equal(y32, op.matvec(x64.astype(np.float32)))
        r32 = op.rmatmat(rand(m, F64, 9, 2).numpy())
        assert r32.dtype == np.float32
        # bool and unsigned ints are numeric too
        assert op.matvec(np.ones(n, dtype=bool)).dtype == np.float32
        assert op.matvec(np.ones(n, dtype=np.uint16)).dtype == np.float32
    # float64 operators accept float32 and int inputs
    op64 = PropagationOperator(_tiny("grucell").trajectory())
    x = rand(op64.shape[1], F64, 10).numpy()
    assert op64.matvec(x.astype(np.float32)).dtype == np.float64
    np.testing.assert_array_equal(op64.matvec(np.ones(op64.shape[1], np.int64)), op64.matvec(np.ones(op64.shape[1])))


def test_torch_tensors_are_never_cast():
    traj = _tiny("grucell").trajectory()
    P = PropagationOperator(traj)
    n = P.shape[1]
    with pytest.raises(TypeError, match="dtype"):
        P @ torch.ones(n, dtype=torch.float32)
    with pytest.raises(TypeError, match="dtype"):
        P.apply_adjoint(torch.ones(n, dtype=torch.int64))
    with pytest.raises(ValueError, match="device"):
        P @ torch.ones(n, dtype=F64, device="meta")
    with pytest.raises(ValueError, match="x"):
        P @ torch.ones(n + 1, dtype=F64)
    with pytest.raises(ValueError, match="x"):
        P.apply(torch.ones(1, n, 1, dtype=F64))


# ---------------------------------------------------------- torch-native
def test_torch_path_stays_in_torch(monkeypatch):
    traj = _tiny("lstm2").trajectory()
    ops = _all_ops(traj)
    P, K = ops["P"], ops["K"]
    v = rand(traj.size, F64, 11)
    ref = {name: op.to_dense() for name, op in ops.items()}

    def boom(*a, **k):  # pragma: no cover - would mean a NumPy round trip
        raise AssertionError("the torch path went through NumPy")

    monkeypatch.setattr(KPOperator, "_to_numpy", boom)
    monkeypatch.setattr(KPOperator, "_to_torch", boom)
    monkeypatch.setattr(torch.Tensor, "numpy", boom)
    monkeypatch.setattr(torch, "from_numpy", boom)
    out = P @ v
    assert isinstance(out, torch.Tensor) and out.device == v.device and out.dtype == F64 and out.shape == v.shape
    assert_close(out, ref["P"] @ v, F64, n=traj.size, c=C)
    assert isinstance(P.matvec(v), torch.Tensor) and isinstance(P.rmatvec(v), torch.Tensor)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated 1-D Tensor.T
        assert_close(v @ P, ref["P"].T @ v, F64, n=traj.size, c=C, msg="x @ A")
    V = rand(traj.size, F64, 12, 3)
    assert_close(P @ V, ref["P"] @ V, F64, n=traj.size, c=C)
    assert_close(V.T @ P, V.T @ ref["P"], F64, n=traj.size, c=C, msg="X^T @ A")

    Kd, Pd = ref["K"], ref["P"]
    algebra = {
        "P@K@P.H": (P @ K @ P.H, Pd @ Kd @ Pd.T),
        "K+K": (K + K, 2 * Kd),
        "2.0*K": (2.0 * K, 2 * Kd),
        "K*2.0": (K * 2.0, 2 * Kd),
        "K/4": (K / 4, Kd / 4),
        "K-K": (K - K, 0 * Kd),
        "-P": (-P, -Pd),
        "(P@K).H": ((P @ K).H, (Pd @ Kd).T),
        "(P@K).T": ((P @ K).T, (Pd @ Kd).T),
        "P.H.H": (P.H.H, Pd),
        "Pinv@P": (ops["Pinv"] @ P, torch.eye(traj.size, dtype=F64)),
        "P.H@J": (P.H @ ops["J"], Pd.T @ ref["J"]),
        "(2K).H": ((2.0 * K).H, 2 * Kd),
        "(K+G).H": ((K + ops["G"]).H, Kd + ref["G"]),
    }
    for name, (op, dense) in algebra.items():
        assert isinstance(op, KPOperator), name
        assert op.shape == tuple(dense.shape) and op.torch_dtype == F64 and op.device == v.device
        w = rand(op.shape[1], F64, 13)
        got = op @ w
        assert isinstance(got, torch.Tensor)
        assert_close(got, dense @ w, F64, scale=max(fnorm(dense) * fnorm(w), 1e-300), n=traj.size, c=C, msg=name)
        u = rand(op.shape[0], F64, 14)
        assert_close(op.H @ u, dense.T @ u, F64, scale=max(fnorm(dense) * fnorm(u), 1e-300), n=traj.size, c=C,
                     msg=name + ".H")
    assert float((K - K).to_dense().abs().max()) == 0.0


def test_adjoints_are_kpflow_operators():
    traj = _tiny("grucell").trajectory()
    ops = _all_ops(traj)
    for name, op in ops.items():
        assert isinstance(op.H, KPOperator) and isinstance(op.T, KPOperator), name
        assert isinstance(op.H.H, KPOperator)
    assert ops["K"].H is ops["K"] and ops["G"].H is ops["G"]
    assert ops["P"].H.H is ops["P"]
    assert isinstance(ops["P"].inverse(), InversePropagationOperator)


def test_algebra_refuses_mismatched_operators():
    traj = _tiny("grucell").trajectory()
    traj32 = _tiny("grucell", dtype=torch.float32).trajectory()
    J, K = ParameterJacobian(traj), ParameterOperator(traj)
    with pytest.raises(ValueError, match="operators"):
        J @ J
    with pytest.raises(ValueError, match="operators"):
        K + J
    with pytest.raises(TypeError, match="operators"):
        K + ParameterOperator(traj32)
    with pytest.raises(ValueError, match="alpha"):
        K * float("nan")


# ------------------------------------------------------------- snapshots
@pytest.mark.parametrize("kind", ["gru2", "lstmcell", "user_tanh"])
def test_optimizer_step_changes_nothing_already_built(kind):
    case = _tiny(kind)
    traj = case.trajectory()
    ops = _all_ops(traj)
    ops["Pmat"] = PropagationOperator(traj, jacobians="materialize")
    states = traj.states.clone()
    theta = {k: v.clone() for k, v in traj.theta.items()}
    before = {name: op.to_dense().clone() for name, op in ops.items()}
    # A few optimizer steps on the model itself, plus in-place edits of the inputs.
    opt = torch.optim.SGD(case.model.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        native_states(case).pow(2).sum().backward()
        opt.step()
    inputs = case.inputs
    inputs.add_(1.0)
    if isinstance(case.h0, torch.Tensor):
        case.h0.mul_(3.0)
    assert torch.equal(traj.states, states)
    for k in theta:
        assert torch.equal(traj.theta[k], theta[k])
    for name, op in ops.items():
        assert torch.equal(op.to_dense(), before[name]), name
    # and the model did change: a new trajectory differs
    assert not torch.allclose(case.trajectory().states, states)


# ------------------------------------------------------ params selection
@pytest.mark.parametrize(
    "kind,names",
    [
        ("grucell", ["weight_hh"]),
        ("grucell", ["bias_hh", "weight_ih"]),  # given out of order
        ("lstm2", ["weight_hh_l1", "bias_ih_l0"]),
        ("user_tuple", ["M"]),
    ],
)
def test_params_selection(kind, names):
    case = _tiny(kind)
    full = case.trajectory()
    sub = case.trajectory(params=names)
    order = [n for n, _ in case.model.named_parameters() if n in names]
    assert sub.param_names == order
    sizes = dict((n, p.numel()) for n, p in case.model.named_parameters())
    assert sub.num_params == sum(sizes[n] for n in names)
    assert torch.equal(sub.states, full.states)
    # the columns of J_sub are the matching column slices of the full J
    Jfull = ParameterJacobian(full).to_dense()
    cols, start = [], 0
    for n in full.param_names:
        if n in names:
            cols.append(Jfull[:, start : start + sizes[n]])
        start += sizes[n]
    Jsub = ParameterJacobian(sub).to_dense()
    assert Jsub.shape == (full.size, sub.num_params)
    assert_close(Jsub, torch.cat(cols, dim=1), F64, n=full.state_size, c=C)
    assert_close(ParameterOperator(sub).to_dense(), Jsub @ Jsub.T, F64, n=full.size, c=C)
    # identity 1 on the subset
    Zsub = dense_dZdtheta(sub)
    assert_close((PropagationOperator(sub) @ ParameterJacobian(sub)).to_dense(), Zsub, F64, n=full.size, c=C)


def test_frozen_parameters_are_not_in_theta():
    case = _tiny("grucell")
    case.model.bias_ih.requires_grad_(False)
    traj = case.trajectory()
    assert "bias_ih" not in traj.param_names
    assert traj.num_params == sum(p.numel() for p in case.model.parameters() if p.requires_grad)
    # the frozen parameter still enters the dynamics
    assert torch.equal(traj.states, case.trajectory(params=[n for n, _ in case.model.named_parameters()]).states)
    with pytest.raises(ValueError, match="trajectory"):
        ParameterJacobian(case.trajectory(params=[]))


# ------------------------------------------------------------------ CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["gru2", "lstmcell", "user_tanh"])
def test_cuda_operators_stay_on_device_and_match_cpu(kind):
    case = _tiny(kind)
    cpu_ops = _all_ops(case.trajectory())
    dev = torch.device("cuda")
    model = copy.deepcopy(case.model).to(dev)
    h0 = None if case.h0 is None else case.h0.to(dev)
    traj = kpflow.Trajectory(model, case.inputs.to(dev), h0=h0)
    ops = _all_ops(traj)
    ops_mat = _all_ops(traj, "materialize")
    P, K = ops["P"], ops["K"]
    cpu_ops["PKP.H"] = cpu_ops["P"] @ cpu_ops["K"] @ cpu_ops["P"].H
    pairs = list(ops.items()) + [("PKP.H", P @ K @ P.H)] + [(k + "_mat", v) for k, v in ops_mat.items()]
    for name, op in pairs:
        assert op.device.type == "cuda"
        ref = cpu_ops[name.removesuffix("_mat")]
        v = rand(op.shape[1], F64, 3)
        out = op @ v.to(dev)
        assert isinstance(out, torch.Tensor) and out.device.type == "cuda"
        assert_close(out.cpu(), ref @ v, F64, n=traj.size, c=C, msg=name)
        V = rand(op.shape[0], F64, 4, 3)
        assert_close(op.apply_adjoint(V.to(dev)).cpu(), ref.apply_adjoint(V), F64, n=traj.size, c=C, msg=name + ".H")
        # the NumPy path works too, and returns host arrays
        assert isinstance(op.matvec(v.numpy()), np.ndarray)
