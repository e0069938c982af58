"""The same operators on CUDA, with PyTorch's known GPU gaps handled (PITFALLS 12).

Skipped without a CUDA device. What the GPU path must survive:

* cuDNN RNN kernels refuse backward in eval mode and have no double backward:
  kpflow runs torch's RNN equations as plain tensor operations
  (:mod:`kpflow.cells`, :mod:`kpflow.linearization`), so no cuDNN kernel may
  run inside an operator product — checked with the CUDA profiler, with the
  model in ``eval()`` and cuDNN enabled;
* the fused GRU cell has no forward-mode AD on CUDA: the plain-op map must
  equal the module (cuDNN) run, and forward-mode products (J_θ v, P q through
  ``torch.func.jvp``) must work on the reference path;
* vmap has no batching rule for whole ``nn.GRU``/``nn.LSTM`` modules: kpflow
  vmaps only over tangent columns, so ``matmat`` must equal column-wise
  products;
* probes, solvers and estimators stay on the device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import kpflow
import kpflow.distributed as kd

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

F64 = torch.float64
CUDA = torch.device("cuda")
CPU = torch.device("cpu")
B, T, I, H = 3, 5, 2, 4


def build(kind: str, device: torch.device, reference: bool = False):
    torch.manual_seed(0)
    model = {
        "gru": lambda: nn.GRU(I, H, batch_first=True),
        "lstm2": lambda: nn.LSTM(I, H, num_layers=2, batch_first=True),
        "rnn": lambda: nn.RNN(I, H, batch_first=True),
        "grucell": lambda: nn.GRUCell(I, H),
    }[kind]().to(F64)
    inputs = torch.randn(B, T, I, dtype=F64)
    model, inputs = model.to(device), inputs.to(device)
    model.eval()
    traj = kpflow.Trajectory(model, inputs)
    if reference:
        traj._cell_linearization = False
    return model, inputs, traj


def operators(traj):
    P = kpflow.PropagationOperator(traj)
    return {
        "J": kpflow.ParameterJacobian(traj),
        "K": kpflow.ParameterOperator(traj),
        "P": P,
        "Pinv": P.inverse(),
        "G": kpflow.GradientFlowOperator(traj),
        "Pmat": kpflow.PropagationOperator(traj, jacobians="materialize"),
    }


KINDS = ["gru", "lstm2", "rnn", "grucell"]


@pytest.mark.parametrize("reference", [False, True], ids=["linearization", "torch.func"])
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_products_equal_cpu(kind, reference):
    _, _, tc = build(kind, CPU, reference)
    _, _, tg = build(kind, CUDA, reference)
    torch.testing.assert_close(tg.states.cpu(), tc.states, rtol=0, atol=1e-12)
    oc, og = operators(tc), operators(tg)
    gen = torch.Generator().manual_seed(1)
    for name in oc:
        for side in ("fwd", "adj"):
            a, b = (oc[name], og[name]) if side == "fwd" else (oc[name].H, og[name].H)
            for V in (torch.randn(a.shape[1], generator=gen, dtype=F64), torch.randn(a.shape[1], 3, generator=gen, dtype=F64)):
                want = a.apply(V)
                got = b.apply(V.to(CUDA))
                assert got.device.type == "cuda"
                torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-12, msg=f"{kind} {name} {side}")


@pytest.mark.parametrize("kind", KINDS)
def test_matmat_equals_columnwise_on_cuda(kind):
    _, _, traj = build(kind, CUDA)
    for name, op in operators(traj).items():
        for A in (op, op.H):
            V = torch.randn(A.shape[1], 4, dtype=F64, device=CUDA)
            cols = torch.stack([A.apply(V[:, i]) for i in range(4)], dim=1)
            torch.testing.assert_close(A.apply(V), cols, rtol=1e-10, atol=1e-12, msg=f"{kind} {name}")


@pytest.mark.parametrize("kind", ["gru", "lstm2", "rnn"])
def test_no_cudnn_kernel_inside_operator_products(kind):
    """The model is in eval() with cuDNN enabled: cuDNN RNN backward would raise, and no cuDNN kernel may run."""
    from torch.profiler import ProfilerActivity, profile

    model, inputs, traj = build(kind, CUDA)
    assert not model.training and torch.backends.cudnn.enabled
    ops = operators(traj)
    v = torch.randn(traj.size, dtype=F64, device=CUDA)
    w = torch.randn(traj.num_params, dtype=F64, device=CUDA)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        ops["J"].apply(w)
        ops["J"].H.apply(v)
        ops["K"].apply(v)
        ops["P"].apply(v)
        ops["P"].H.apply(v)
        ops["G"].apply(v)
        ops["G"].apply(torch.stack([v, v], dim=1))
        torch.cuda.synchronize()
    names = {e.name.lower() for e in prof.events()}
    assert not [n for n in names if "cudnn" in n or "miopen" in n], sorted(n for n in names if "cudnn" in n)
    # and the recorded states are those of the module run by cuDNN itself
    with torch.no_grad():
        out, _ = model(inputs)
    torch.testing.assert_close(traj.observe(), out, rtol=1e-10, atol=1e-12)


def test_grucell_forward_mode_on_cuda():
    """torch's fused GRU cell has no forward AD on CUDA; kpflow's plain-op cell does."""
    model, inputs, traj = build("grucell", CUDA, reference=True)
    h = torch.zeros(B, H, dtype=F64, device=CUDA)
    with torch.no_grad():
        for t in range(T):
            h = model(inputs[:, t], h)
            torch.testing.assert_close(traj.states[:, t], h, rtol=1e-10, atol=1e-12)
    J = kpflow.ParameterJacobian(traj)  # torch.func.jvp through the plain-op step
    P = kpflow.PropagationOperator(traj)
    w = torch.randn(traj.num_params, dtype=F64, device=CUDA)
    v = P.apply(J.apply(w))
    # dZ/dθ w by a full forward-mode pass through the rollout (identity 1)
    _, full = torch.func.jvp(lambda th: traj.rollout(th), (traj.theta,), (traj.vector_to_theta(w),))
    torch.testing.assert_close(v, full.reshape(-1), rtol=1e-9, atol=1e-11)


def test_solvers_and_estimators_stay_on_device():
    _, _, traj = build("gru", CUDA)
    ops = kd.sharded_operators(traj)
    dense = ops.K.to_dense()
    assert dense.device.type == "cuda"
    want = torch.linalg.eigvalsh(dense).flip(0)[:3].cpu().numpy()
    res = kd.top_eigs(ops.K, 3, seed=0, return_vectors=True)
    np.testing.assert_allclose(res.values, want, rtol=1e-7)
    assert res.vectors.device.type == "cuda"
    est = kd.trace(ops.gradient_flow, 9, seed=1)
    assert np.isfinite(est.value)
    probes = kd.draw_probes(traj.shape, 0, 2, 0, F64, CUDA)
    assert probes.device.type == "cuda"
    analysis = getattr(kpflow, "analysis", None)
    if analysis is not None and hasattr(analysis, "top_eigs"):
        spec = analysis.top_eigs(ops.K, 3, seed=0, return_vectors=True, method="block_krylov")
        np.testing.assert_allclose(spec.values, want, rtol=1e-6)
        assert spec.vectors.device.type == "cuda"
    if analysis is not None and hasattr(analysis, "trace"):
        est = analysis.trace(kpflow.ParameterOperator(traj), 9, seed=0)
        assert np.isfinite(est.value)
