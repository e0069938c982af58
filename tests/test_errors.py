"""Bad input gets a clear error naming the argument (DESIGN.md §6), and the
traps of PITFALLS 6 (dropout) and of untransformable user cells."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from helpers import make_case, rand
from torch import nn

import kpflow
from kpflow import GradientFlowOperator, ParameterJacobian, ParameterOperator, PropagationOperator

F64 = torch.float64


@pytest.fixture
def gru():
    return make_case("grucell", B=2, T=3, I=2, H=3, seed=0)


# ------------------------------------------------------------------ inputs
def test_inputs_must_be_3d_batch_first(gru):
    with pytest.raises(ValueError, match="inputs"):
        kpflow.Trajectory(gru.model, gru.inputs[0])
    with pytest.raises(ValueError, match="inputs"):
        kpflow.Trajectory(gru.model, gru.inputs[..., None])
    with pytest.raises(TypeError, match="inputs"):
        kpflow.Trajectory(gru.model, gru.inputs.numpy())
    with pytest.raises(ValueError, match="inputs"):
        kpflow.Trajectory(gru.model, gru.inputs[:, :0])


def test_inputs_feature_size(gru):
    with pytest.raises(ValueError, match="inputs.*input_size"):
        kpflow.Trajectory(gru.model, torch.zeros(2, 3, 5, dtype=F64))
    lstm = make_case("lstm2", I=2)
    with pytest.raises(ValueError, match="inputs"):
        kpflow.Trajectory(lstm.model, torch.zeros(2, 3, 3, dtype=F64))


def test_inputs_dtype(gru):
    with pytest.raises(TypeError, match="inputs"):
        kpflow.Trajectory(gru.model, gru.inputs.to(torch.float32))  # model is float64
    with pytest.raises(TypeError, match="inputs"):
        kpflow.Trajectory(gru.model.float(), gru.inputs)
    with pytest.raises(TypeError, match="inputs"):
        kpflow.Trajectory(gru.model, gru.inputs.to(torch.int64))
    with pytest.raises(TypeError, match="inputs"):
        kpflow.Trajectory(gru.model.half(), gru.inputs.half())


# ---------------------------------------------------------------------- h0
def test_h0_wrong_shape(gru):
    with pytest.raises(ValueError, match="h0"):
        kpflow.Trajectory(gru.model, gru.inputs, h0=torch.zeros(2, 4, dtype=F64))
    with pytest.raises(ValueError, match="h0"):
        kpflow.Trajectory(gru.model, gru.inputs, h0=torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ValueError, match="h0"):
        kpflow.Trajectory(gru.model, gru.inputs, h0=torch.zeros(1, 2, 3, dtype=F64))
    lstm = make_case("lstm2", B=4, H=3)
    good = torch.zeros(2, 4, 3, dtype=F64)  # torch's [L, B, H]
    kpflow.Trajectory(lstm.model, lstm.inputs, h0=(good, good))
    with pytest.raises(ValueError, match="h0"):
        kpflow.Trajectory(lstm.model, lstm.inputs, h0=(good, torch.zeros(1, 4, 3, dtype=F64)))
    with pytest.raises(ValueError, match="h0"):
        kpflow.Trajectory(lstm.model, lstm.inputs, h0=good)  # h without c
    with pytest.raises(ValueError, match="h0"):
        kpflow.Trajectory(lstm.model, lstm.inputs, h0=(good.transpose(0, 1), good.transpose(0, 1)))


def test_h0_wrong_type_or_dtype(gru):
    with pytest.raises(TypeError, match="h0"):
        kpflow.Trajectory(gru.model, gru.inputs, h0=torch.zeros(2, 3, dtype=torch.float32))
    with pytest.raises(TypeError, match="h0"):
        kpflow.Trajectory(gru.model, gru.inputs, h0=[np.zeros((2, 3))])


def test_user_cell_needs_h0_or_hidden_size():
    def cell(x, h):
        return torch.tanh(h + x.sum(-1, keepdim=True))

    x = torch.zeros(2, 3, 1, dtype=F64)
    with pytest.raises(ValueError, match="h0"):
        kpflow.Trajectory(cell, x)
    with pytest.raises(ValueError, match="h0"):
        kpflow.Trajectory(cell, x, h0=torch.zeros(3, 4, dtype=F64))
    with pytest.raises(TypeError, match="h0"):
        kpflow.Trajectory(cell, x, h0="zeros")


class _LSTMLike(nn.Module):
    """A user cell whose state is a tuple (h, c), like an LSTM."""

    hidden_size = 3

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2 + 3, 2 * 3).double()

    def forward(self, x, state):
        h, c = state
        a, b = self.lin(torch.cat([x, h], -1)).chunk(2, -1)
        c = torch.sigmoid(a) * c + torch.tanh(b)
        return torch.tanh(c), c


def test_tuple_state_cell_without_h0_names_h0():
    cell, x = _LSTMLike(), torch.zeros(4, 3, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"h0.*tuple.*\(h, c\).*h0=\(torch\.zeros\(4, 3, dtype=torch\.float64\), "
                                         r"torch\.zeros\(4, 3, dtype=torch\.float64\)\)"):
        kpflow.Trajectory(cell, x)
    with pytest.raises(ValueError, match="h0 is a single tensor"):  # h without c
        kpflow.Trajectory(cell, x, h0=torch.zeros(4, 3, dtype=F64))
    h0 = (torch.zeros(4, 3, dtype=F64), torch.zeros(4, 3, dtype=F64))
    assert kpflow.Trajectory(cell, x, h0=h0).shape == (4, 3, 6)  # the fix the message names works


def test_cell_returning_a_tuple_without_h0_names_h0_and_shapes():
    class ReturnsPair(nn.Module):
        hidden_size = 3

        def forward(self, x, h):  # accepts a tensor but returns (h, c) with c of another size
            return torch.tanh(h), torch.zeros(h.shape[0], 5, dtype=h.dtype)

    with pytest.raises(ValueError, match=r"h0.*returned a tuple of 2 tensors.*torch\.zeros\(2, 3, dtype=torch\.float64\), "
                                         r"torch\.zeros\(2, 5, dtype=torch\.float64\)"):
        kpflow.Trajectory(ReturnsPair(), torch.zeros(2, 3, 2, dtype=F64))


# ------------------------------------------------------------------ vectors
@pytest.mark.parametrize("which", ["J", "K", "P", "Pinv", "G"])
def test_vectors_wrong_length(gru, which):
    traj = gru.trajectory()
    P = PropagationOperator(traj)
    op = {"J": ParameterJacobian(traj), "K": ParameterOperator(traj), "P": P, "Pinv": P.inverse(),
          "G": GradientFlowOperator(traj)}[which]
    m, n = op.shape
    with pytest.raises(ValueError, match="x"):
        op.matvec(np.ones(n + 1))
    with pytest.raises(ValueError, match="x"):
        op.matvec(np.ones((n, 2)))  # matvec is for one vector
    with pytest.raises(ValueError, match="x"):
        op.rmatvec(np.ones(m - 1))
    with pytest.raises(ValueError, match="x"):
        op.matvec(np.ones((1, n)))
    with pytest.raises(ValueError, match="X"):
        op.matmat(np.ones((n + 1, 2)))
    with pytest.raises(ValueError, match="X"):
        op.matmat(np.ones(n))
    with pytest.raises(ValueError, match="X"):
        op.rmatmat(np.ones((m + 2, 2)))
    with pytest.raises(ValueError, match="x"):
        op @ torch.ones(n + 1, dtype=F64)
    with pytest.raises(ValueError, match="x"):
        op.apply_adjoint(torch.ones(m, 2, 1, dtype=F64))
    with pytest.raises(ValueError, match="X"):
        op.matmat(torch.ones(n, dtype=F64))


def test_vectors_non_numeric_or_complex(gru):
    traj = gru.trajectory()
    P = PropagationOperator(traj)
    J = ParameterJacobian(traj)
    n = P.shape[1]
    with pytest.raises(TypeError, match="x.*numeric"):
        P.matvec(np.array([object()] * n))
    with pytest.raises(TypeError, match="x.*numeric"):
        P.matvec(np.array(["1.0"] * n))
    with pytest.raises(TypeError, match="x.*numeric"):
        J.rmatvec(np.array(["a"] * n))
    with pytest.raises(TypeError, match="x.*numeric"):
        P.matmat(np.array([["a", "b"]] * n))
    with pytest.raises(TypeError, match="x.*complex"):
        P.matvec(np.ones(n) + 1j * np.ones(n))
    with pytest.raises(TypeError, match="x.*complex"):
        J.matvec(np.ones(J.shape[1]) * (1 + 2j))
    with pytest.raises(TypeError, match="x.*dtype"):
        P @ torch.ones(n, dtype=torch.complex128)
    with pytest.raises(TypeError, match="x.*dtype"):
        P @ torch.ones(n, dtype=torch.int64)


def test_trajectory_vector_helpers_check_shapes(gru):
    traj = gru.trajectory()
    with pytest.raises(ValueError, match="vector"):
        traj.to_trajectory(torch.zeros(traj.size + 1, dtype=F64))
    with pytest.raises(ValueError, match="vector"):
        traj.vector_to_theta(torch.zeros(traj.num_params - 1, dtype=F64))
    with pytest.raises(ValueError, match="tensor"):
        traj.flatten(torch.zeros(traj.size, dtype=F64))
    with pytest.raises(ValueError, match="theta"):
        traj.theta_to_vector({})
    bad = dict(traj.theta)
    bad["weight_hh"] = bad["weight_hh"].T.contiguous()
    with pytest.raises(ValueError, match="theta"):
        traj.theta_to_vector(bad)


# ------------------------------------------------------------------ models
def test_nn_linear_is_not_a_cell():
    lin = nn.Linear(2, 3).double()
    x = torch.zeros(2, 3, 2, dtype=F64)
    with pytest.raises((TypeError, RuntimeError), match="cell"):
        kpflow.Trajectory(lin, x, h0=torch.zeros(2, 3, dtype=F64))
    with pytest.raises((TypeError, ValueError), match="cell"):
        kpflow.Trajectory(lin, x)


def test_unsupported_models():
    x = torch.zeros(2, 3, 2, dtype=F64)
    with pytest.raises(ValueError, match="model.*bidirectional"):
        kpflow.Trajectory(nn.GRU(2, 3, bidirectional=True).double(), x)
    with pytest.raises(ValueError, match="model.*proj_size"):
        kpflow.Trajectory(nn.LSTM(2, 3, proj_size=2).double(), x)
    with pytest.raises(TypeError, match="model"):
        kpflow.Trajectory(3, x)
    with pytest.raises(TypeError, match="model"):
        kpflow.Trajectory(None, x)


def test_cell_returning_the_wrong_type():
    class Bad(nn.Module):
        hidden_size = 3

        def forward(self, x, h):
            return [h]

    with pytest.raises(TypeError, match="model"):
        kpflow.Trajectory(Bad(), torch.zeros(2, 3, 2, dtype=F64))


def test_multilayer_lstm_with_dropout_in_train_mode_uses_eval_semantics():
    torch.manual_seed(0)
    model = nn.LSTM(2, 3, num_layers=2, dropout=0.5, batch_first=True).double().train()
    x = torch.randn(2, 4, 2, dtype=F64)
    with pytest.warns(UserWarning, match="dropout"):
        traj = kpflow.Trajectory(model, x)
    assert model.training  # the user's model is left as it was
    P, G = PropagationOperator(traj), GradientFlowOperator(traj)
    q = rand(traj.size, F64, 1)
    assert torch.equal(P @ q, P @ q)
    assert torch.equal(G @ q, G @ q)
    # equals the eval-mode module
    ev = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        traj_eval = kpflow.Trajectory(ev, x)
    assert torch.equal(traj.states, traj_eval.states)
    out, _ = ev(x)
    torch.testing.assert_close(traj.observe(), out, rtol=0, atol=1e-14)
    assert torch.equal(G @ q, GradientFlowOperator(traj_eval) @ q)
    # and not the train-mode module, which drops units at random
    out_train, _ = model(x)
    assert not torch.allclose(out_train, out)


def test_user_cell_with_active_dropout_is_refused():
    class DropCell(nn.Module):
        hidden_size = 3

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 3)
            self.drop = nn.Dropout(0.3)

        def forward(self, x, h):
            return torch.tanh(self.drop(self.lin(torch.cat([x, h], -1))))

    cell = DropCell().double().train()
    x = torch.zeros(2, 3, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"eval\(\)"):
        kpflow.Trajectory(cell, x)
    kpflow.Trajectory(cell.eval(), x)  # fine in eval mode


class _Base(nn.Module):
    hidden_size = 3

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.W = nn.Parameter(torch.randn(3, 3, dtype=F64) / 3)
        self.U = nn.Parameter(torch.randn(3, 2, dtype=F64))


class _InPlaceCell(_Base):
    def forward(self, x, h):
        h.add_(x @ self.U.T)  # mutates the state it was given
        return torch.tanh(h @ self.W.T)


class _ItemCell(_Base):
    def forward(self, x, h):
        gain = self.W[0, 0].item()  # silently drops a derivative under jvp/vjp
        return torch.tanh(gain * (h @ self.W.T) + x @ self.U.T)


class _StateItemCell(_Base):
    def forward(self, x, h):
        return torch.tanh(h @ self.W.T + x @ self.U.T) * (1.0 + 0.0 * h.sum().item())


@pytest.mark.parametrize("cell_cls", [_InPlaceCell, _ItemCell, _StateItemCell])
def test_untransformable_user_cells_are_refused(cell_cls):
    x = torch.randn(2, 3, 2, dtype=F64)
    with pytest.raises(RuntimeError, match=r"torch\.func\.(jvp|vjp|vmap)") as info:
        kpflow.Trajectory(cell_cls(), x)
    msg = str(info.value)
    assert msg.startswith("model")
    assert "out-of-place" in msg and ".item()" in msg  # says how to fix it


def test_params_selection_errors(gru):
    with pytest.raises(ValueError, match="params.*nope"):
        gru.trajectory(params=["weight_hh", "nope"])
    with pytest.raises(TypeError, match="params"):
        gru.trajectory(params="weight_hh")
    with pytest.raises(ValueError, match="params"):
        gru.trajectory(params=["weight_hh", "weight_hh"])


# -------------------------------------------------------------- operators
def test_operator_arguments(gru):
    traj = gru.trajectory()
    for cls in (ParameterJacobian, ParameterOperator, PropagationOperator, GradientFlowOperator):
        with pytest.raises(TypeError, match="trajectory"):
            cls(traj.states)
    with pytest.raises(ValueError, match="jacobians"):
        PropagationOperator(traj, jacobians="dense")
    with pytest.raises(ValueError, match="jacobians"):
        GradientFlowOperator(traj, jacobians="dense")
    with pytest.raises(ValueError, match="normalization"):
        ParameterOperator(traj, normalization="avg")
    with pytest.raises(ValueError, match="normalization"):
        GradientFlowOperator(traj, normalization="avg")


def test_error_signal_arguments(gru):
    traj = gru.trajectory()
    readout = nn.Linear(3, 1).double()
    targets = torch.zeros(2, 3, 1, dtype=F64)
    with pytest.raises(TypeError, match="trajectory"):
        kpflow.error_signal(traj.states, readout, nn.MSELoss(), targets)
    with pytest.raises(TypeError, match="readout"):
        kpflow.error_signal(traj, 3, nn.MSELoss(), targets)
    with pytest.raises(TypeError, match="loss_fn"):
        kpflow.bptt_gradient(traj, readout, "mse", targets)
    with pytest.raises(ValueError, match="loss_fn"):
        kpflow.error_signal(traj, readout, nn.MSELoss(reduction="none"), targets)


def test_complex_with_zero_imaginary_part_is_refused_not_cast(gru):
    P = PropagationOperator(gru.trajectory())
    n = P.shape[1]
    with pytest.raises(TypeError, match="x.*complex"):
        P.matvec(np.ones(n, dtype=np.complex128))


def test_torch_matvec_refuses_several_columns(gru):
    P = PropagationOperator(gru.trajectory())
    n = P.shape[1]
    with pytest.raises(ValueError, match="matmat"):
        P.matvec(torch.ones(n, 3, dtype=F64))
    with pytest.raises(ValueError, match="matmat"):
        P.rmatvec(torch.ones(n, 2, dtype=F64))
    assert P.matvec(torch.ones(n, 1, dtype=F64)).shape == (n, 1)
