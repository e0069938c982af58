"""Trajectory: the recorded states against the torch modules themselves, the
state layout of DESIGN.md §2, h0 formats, rollout/step helpers, snapshots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    ALL_KINDS,
    BUILTIN_KINDS,
    MODULE_KINDS,
    make_case,
    native_outputs,
    native_states,
    rand,
    state_size,
)
from torch import nn

import kpflow

F64 = torch.float64

# torch's own RNN modules trigger torch's internal torch.jit.script deprecation notice.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_states_equal_the_module_own_output(kind, batch_first):
    case = make_case(kind, B=3, T=5, I=2, H=3, seed=11, random_h0=True, batch_first=batch_first)
    traj = case.trajectory()
    assert traj.shape == (3, 5, state_size(kind, 3))
    # step by step through the module itself, every layer and the cell state
    torch.testing.assert_close(traj.states, native_states(case), rtol=0, atol=1e-14)
    # the module's own whole-sequence output is the top-layer h: observe()
    torch.testing.assert_close(traj.observe(), native_outputs(case), rtol=0, atol=1e-14)


@pytest.mark.parametrize("kind", ["gru2", "lstm2"])
def test_float32_states_equal_the_module(kind):
    case = make_case(kind, B=2, T=4, I=2, H=3, dtype=torch.float32, seed=2, random_h0=True)
    traj = case.trajectory()
    assert traj.states.dtype == torch.float32 and traj.numpy_dtype == np.float32
    torch.testing.assert_close(traj.states, native_states(case), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(traj.observe(), native_outputs(case), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multilayer_lstm_honours_torch_hc_format(batch_first):
    L, B, H, T, I = 2, 3, 4, 5, 2
    torch.manual_seed(0)
    model = nn.LSTM(I, H, num_layers=L, batch_first=batch_first).double()
    x = torch.randn(B, T, I, dtype=F64)
    h = torch.randn(L, B, H, dtype=F64)
    c = torch.randn(L, B, H, dtype=F64)
    traj = kpflow.Trajectory(model, x, h0=(h, c))
    assert traj.shape == (B, T, 2 * L * H)
    # flat z_0 = [h_l0, h_l1, c_l0, c_l1], each batch-first
    expected_h0 = torch.cat([h[0], h[1], c[0], c[1]], dim=1)
    assert torch.equal(traj.h0, expected_h0)
    assert torch.equal(traj.previous_states[:, 0], expected_h0)
    xin = x if batch_first else x.transpose(0, 1)
    out, (hn, cn) = model(xin, (h, c))
    out = out if batch_first else out.transpose(0, 1)
    torch.testing.assert_close(traj.observe(), out, rtol=0, atol=1e-14)
    last = traj.states[:, -1]
    torch.testing.assert_close(last, torch.cat([hn[0], hn[1], cn[0], cn[1]], dim=1), rtol=0, atol=1e-14)
    # the flat [B, S] format gives the same trajectory
    assert torch.equal(kpflow.Trajectory(model, x, h0=expected_h0).states, traj.states)
    # a zero h0 differs from this one
    assert not torch.allclose(kpflow.Trajectory(model, x).states, traj.states)


def test_h0_formats_for_cells_and_modules():
    torch.manual_seed(1)
    B, T, I, H = 2, 3, 2, 3
    x = torch.randn(B, T, I, dtype=F64)
    # GRU with 2 layers: a single [L, B, H] tensor
    gru = nn.GRU(I, H, num_layers=2).double()
    h = torch.randn(2, B, H, dtype=F64)
    traj = kpflow.Trajectory(gru, x, h0=h)
    assert torch.equal(traj.h0, torch.cat([h[0], h[1]], dim=1))
    _, hn = gru(x.transpose(0, 1), h)
    torch.testing.assert_close(traj.states[:, -1], torch.cat([hn[0], hn[1]], 1), rtol=0, atol=1e-14)
    # LSTMCell: a tuple (h, c) of [B, H]
    cell = nn.LSTMCell(I, H).double()
    hc = (torch.randn(B, H, dtype=F64), torch.randn(B, H, dtype=F64))
    traj = kpflow.Trajectory(cell, x, h0=hc)
    assert torch.equal(traj.h0, torch.cat(hc, dim=1))
    h1, c1 = cell(x[:, 0], hc)
    torch.testing.assert_close(traj.states[:, 0], torch.cat([h1, c1], 1), rtol=0, atol=1e-14)
    # the recorded h0 is a copy
    hc[0].add_(1.0)
    assert not torch.equal(traj.h0[:, :H], hc[0])


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_rollout_step_and_helpers(kind):
    case = make_case(kind, B=2, T=4, I=3, H=2, seed=5, random_h0=True)
    traj = case.trajectory()
    B, T, S = traj.shape
    assert (traj.batch_size, traj.num_steps, traj.input_size, traj.state_size) == (B, T, 3, S)
    assert traj.size == B * T * S
    assert traj.num_params == sum(p.numel() for p in case.model.parameters())
    assert traj.param_names == [n for n, _ in case.model.named_parameters()]
    assert traj.dtype == F64 and traj.device == torch.device("cpu")
    assert repr(traj).startswith("Trajectory(")
    # previous_states: z_0, z_1, ..., z_{T-1}
    assert traj.previous_states.shape == (B, T, S)
    assert torch.equal(traj.previous_states[:, 0], traj.h0)
    assert torch.equal(traj.previous_states[:, 1:], traj.states[:, :-1])
    # rollout reproduces the states; step_all from the recorded z_{t-1} too
    assert torch.equal(traj.rollout(), traj.states)
    assert torch.equal(traj.rollout(theta=traj.theta), traj.states)
    assert torch.equal(traj.rollout(forcing=torch.zeros(B, T, S, dtype=F64)), traj.states)
    torch.testing.assert_close(traj.step_all(), traj.states, rtol=0, atol=1e-15)
    for t in range(T):
        torch.testing.assert_close(
            traj.step(traj.theta, traj.inputs[:, t], traj.previous_states[:, t]), traj.states[:, t], rtol=0, atol=1e-15
        )
    # a forcing at the last step only shifts the last state
    q = torch.zeros(B, T, S, dtype=F64)
    q[:, -1] = 1.0
    forced = traj.rollout(forcing=q)
    torch.testing.assert_close(forced[:, -1], traj.states[:, -1] + 1.0, rtol=0, atol=1e-15)
    assert torch.equal(forced[:, :-1], traj.states[:, :-1])
    # another h0
    z0 = rand(B, F64, 1, S)
    assert torch.equal(traj.rollout(h0=z0)[:, 0], traj.step(traj.theta, traj.inputs[:, 0], z0))
    # vector helpers
    v = rand(traj.size, F64, 2)
    Z = traj.to_trajectory(v)
    assert Z.shape == (B, T, S) and torch.equal(traj.flatten(Z), v)
    assert torch.equal(traj.to_trajectory(v.numpy()), Z)
    assert torch.equal(Z[1, 2], v[(1 * T + 2) * S : (1 * T + 3) * S])  # C order
    w = rand(traj.num_params, F64, 3)
    th = traj.vector_to_theta(w)
    assert list(th) == traj.param_names
    assert torch.equal(traj.theta_to_vector(th), w)
    assert torch.equal(traj.theta_to_vector(traj.vector_to_theta(w.numpy())), w)
    assert torch.equal(traj.theta_to_vector(traj.theta), nn.utils.parameters_to_vector(case.model.parameters()))
    W = rand(4, F64, 4, traj.num_params)
    batched = traj.vector_to_theta(W)
    assert all(batched[n].shape[0] == 4 for n in batched)


def test_observe_reads_the_top_layer_h():
    for kind, H in (("lstm2", 3), ("gru2", 3), ("lstmcell", 3), ("user_tuple", 3), ("rnncell_tanh", 3)):
        traj = make_case(kind, H=H, seed=1).trajectory()
        obs = traj.observe()
        L = 2 if kind in ("lstm2", "gru2") else 1
        assert obs.shape == (*traj.shape[:2], H)
        assert torch.equal(obs, traj.states[..., (L - 1) * H : L * H])
        assert torch.equal(traj.observe(traj.previous_states), traj.previous_states[..., (L - 1) * H : L * H])


def test_user_cell_with_hidden_size_starts_from_zero():
    case = make_case("user_tanh", B=2, T=3, I=2, H=4, seed=3)
    traj = kpflow.Trajectory(case.model, case.inputs)
    assert torch.equal(traj.h0, torch.zeros(2, 4, dtype=F64))
    h = torch.zeros(2, 4, dtype=F64)
    for t in range(3):
        h = case.model(case.inputs[:, t], h)
    torch.testing.assert_close(traj.states[:, -1], h, rtol=0, atol=0)


def test_plain_callable_cell():
    W = torch.randn(3, 3, dtype=F64) / 3
    U = torch.randn(3, 2, dtype=F64)

    def cell(x, h):
        return torch.tanh(h @ W.T + x @ U.T)

    x = torch.randn(2, 4, 2, dtype=F64)
    traj = kpflow.Trajectory(cell, x, h0=torch.zeros(2, 3, dtype=F64))
    assert traj.shape == (2, 4, 3) and traj.num_params == 0
    P = kpflow.PropagationOperator(traj)
    assert P.shape == (24, 24)


@pytest.mark.parametrize("kind", BUILTIN_KINDS)
def test_snapshot_of_parameters_and_inputs(kind):
    case = make_case(kind, B=2, T=3, I=2, H=2, seed=8, random_h0=True)
    traj = case.trajectory()
    states = traj.states.clone()
    with torch.no_grad():
        for p in case.model.parameters():
            p.add_(0.3)
    case.inputs.mul_(-1.0)
    assert torch.equal(traj.states, states)
    assert torch.equal(traj.rollout(), states)
    assert all(not t.requires_grad for t in traj.theta.values())
    assert not traj.states.requires_grad


@pytest.mark.parametrize("kind", MODULE_KINDS)
def test_modules_in_train_mode_without_dropout_are_fine(kind):
    import warnings

    case = make_case(kind, seed=2)
    case.model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        traj = case.trajectory()
    torch.testing.assert_close(traj.states, native_states(case), rtol=0, atol=1e-14)
