"""Shared model factories, native (torch-module) runs, dense references and tolerances.

The dense references here are built independently of kpflow's operators:
``torch.func.jacrev`` of the one-step map or of the whole rollout, or the
torch module run as itself. Tolerances are scaled from machine epsilon and
the norms involved, tight enough that an off-by-one-step adjoint fails.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.func import jacrev

import kpflow

# --------------------------------------------------------------------------
# Model kinds

#: torch's built-in models: kind -> (class, num_layers, extra constructor kwargs)
BUILTIN_SPECS = {
    "rnncell_tanh": (nn.RNNCell, 1, {"nonlinearity": "tanh"}),
    "rnncell_relu": (nn.RNNCell, 1, {"nonlinearity": "relu"}),
    "grucell": (nn.GRUCell, 1, {}),
    "lstmcell": (nn.LSTMCell, 1, {}),
    "grucell_nobias": (nn.GRUCell, 1, {"bias": False}),
    "lstmcell_nobias": (nn.LSTMCell, 1, {"bias": False}),
    "rnn1": (nn.RNN, 1, {}),
    "rnn2": (nn.RNN, 2, {}),
    "rnn2_relu": (nn.RNN, 2, {"nonlinearity": "relu"}),
    "gru1": (nn.GRU, 1, {}),
    "gru2": (nn.GRU, 2, {}),
    "lstm1": (nn.LSTM, 1, {}),
    "lstm2": (nn.LSTM, 2, {}),
    "gru2_nobias": (nn.GRU, 2, {"bias": False}),
    "lstm2_nobias": (nn.LSTM, 2, {"bias": False}),
}
CELL_KINDS = tuple(k for k, (cls, _, _) in BUILTIN_SPECS.items() if cls in (nn.RNNCell, nn.GRUCell, nn.LSTMCell))
MODULE_KINDS = tuple(k for k in BUILTIN_SPECS if k not in CELL_KINDS)
USER_KINDS = ("user_tanh", "user_tuple", "linear")
BUILTIN_KINDS = CELL_KINDS + MODULE_KINDS
ALL_KINDS = BUILTIN_KINDS + USER_KINDS
#: Kinds whose one-step map is smooth (no ReLU kinks) and not linear.
SMOOTH_KINDS = tuple(k for k in ALL_KINDS if "relu" not in k and k != "linear")


def num_layers(kind: str) -> int:
    return BUILTIN_SPECS[kind][1] if kind in BUILTIN_SPECS else 1


def is_lstm(kind: str) -> bool:
    return kind in BUILTIN_SPECS and BUILTIN_SPECS[kind][0] in (nn.LSTM, nn.LSTMCell)


class TanhCell(nn.Module):
    """A user cell h' = tanh(W h + U x + b)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.W = nn.Parameter(torch.randn(hidden_size, hidden_size) / hidden_size**0.5)
        self.U = nn.Parameter(torch.randn(hidden_size, input_size))
        self.b = nn.Parameter(0.1 * torch.randn(hidden_size))

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return torch.tanh(h @ self.W.T + x @ self.U.T + self.b)


class LinearCell(nn.Module):
    """A user cell f = W z + U x: A_t = W at every step (DESIGN.md §2.5)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.W = nn.Parameter(torch.randn(hidden_size, hidden_size) / hidden_size**0.5)
        self.U = nn.Parameter(torch.randn(hidden_size, input_size))

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return h @ self.W.T + x @ self.U.T


class TupleCell(nn.Module):
    """A user cell with a tuple state (h [B, H], m [B, 2, H]).

    h' = tanh(W h + U x + Σ_rows m),  m' = 0.8 m + 0.2 tanh(M m + h').
    The second element is 2-D per trial, so the flat state exercises the
    per-trial flattening of the layout; S = 3H.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.W = nn.Parameter(torch.randn(hidden_size, hidden_size) / hidden_size**0.5)
        self.U = nn.Parameter(torch.randn(hidden_size, input_size))
        self.M = nn.Parameter(torch.randn(2, 2) / 2**0.5)

    def forward(self, x: Tensor, state):
        h, m = state
        h2 = torch.tanh(h @ self.W.T + x @ self.U.T + m.sum(dim=-2))
        m2 = 0.8 * m + 0.2 * torch.tanh(torch.einsum("ij,...jh->...ih", self.M, m) + h2.unsqueeze(-2))
        return h2, m2


@dataclass
class Case:
    """A model, its inputs and initial state, ready for ``kpflow.Trajectory``."""

    kind: str
    model: nn.Module
    inputs: Tensor  # [B, T, I], batch-first
    h0: object  # None, a flat [B, S] tensor, or a tuple (user_tuple)
    hidden_size: int
    num_layers: int = 1
    #: build operators on the torch.func reference path (see use_reference_path)
    reference: bool = False

    def trajectory(self, reference: bool | None = None, **kwargs) -> kpflow.Trajectory:
        traj = kpflow.Trajectory(self.model, self.inputs, h0=self.h0, **kwargs)
        if self.reference if reference is None else reference:
            use_reference_path(traj)
        return traj


def use_reference_path(traj: kpflow.Trajectory) -> kpflow.Trajectory:
    """Make the operators of ``traj`` use torch.func jvp/vjp of the step.

    For torch's built-in cells the operators use hand-derived tangent maps
    (kpflow.linearization) by default; the reference path must agree with
    them, so both are tested. Call before building any operator.
    """
    traj._cell_linearization = False
    find = getattr(kpflow.parameter, "cell_linearization", None)
    if find is not None:
        assert find(traj) is None
    return traj


def state_size(kind: str, H: int) -> int:
    """S of a model kind, as DESIGN.md §2 fixes it."""
    if kind == "user_tuple":
        return 3 * H
    return (2 if is_lstm(kind) else 1) * num_layers(kind) * H


def make_model(kind: str, I: int, H: int, dtype=torch.float64, seed: int = 0, batch_first: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    if kind in CELL_KINDS:
        cls, _, kwargs = BUILTIN_SPECS[kind]
        m = cls(I, H, **kwargs)
    elif kind in MODULE_KINDS:
        cls, L, kwargs = BUILTIN_SPECS[kind]
        m = cls(I, H, num_layers=L, batch_first=batch_first, **kwargs)
    elif kind == "user_tanh":
        m = TanhCell(I, H)
    elif kind == "user_tuple":
        m = TupleCell(I, H)
    elif kind == "linear":
        m = LinearCell(I, H)
    else:  # pragma: no cover
        raise ValueError(kind)
    if kind in CELL_KINDS or kind in MODULE_KINDS:
        # Spread the weights a little beyond torch's U(-1/√H, 1/√H) init so that
        # the Jacobians vary clearly along the trajectory (PITFALLS 3).
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(1.5)
    return m.to(dtype).eval()


def make_case(
    kind: str,
    B: int = 2,
    T: int = 4,
    I: int = 2,
    H: int = 3,
    dtype=torch.float64,
    seed: int = 0,
    random_h0: bool = False,
    batch_first: bool = True,
) -> Case:
    model = make_model(kind, I, H, dtype, seed, batch_first)
    g = torch.Generator().manual_seed(seed + 1)
    inputs = torch.randn(B, T, I, generator=g, dtype=torch.float64).to(dtype)
    S = state_size(kind, H)
    if kind == "user_tuple":
        h0 = (
            0.5 * torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype),
            0.5 * torch.randn(B, 2, H, generator=g, dtype=torch.float64).to(dtype),
        )
    elif random_h0:
        h0 = (0.5 * torch.randn(B, S, generator=g, dtype=torch.float64)).to(dtype)
    else:
        h0 = None
    return Case(kind, model, inputs, h0, H, num_layers(kind))


@st.composite
def cases(draw, kinds=ALL_KINDS, dtype=torch.float64, max_B=3, max_T=6, max_H=4, max_I=3):
    """Random (kind, B, T, S, I, seed, h0) for the identity tests."""
    kind = draw(st.sampled_from(kinds))
    B = draw(st.integers(1, max_B))
    T = draw(st.integers(1, max_T))
    H = draw(st.integers(1, max_H))
    I = draw(st.integers(1, max_I))
    seed = draw(st.integers(0, 2**16))
    random_h0 = draw(st.booleans())
    case = make_case(kind, B, T, I, H, dtype, seed, random_h0)
    case.reference = draw(st.booleans())
    return case


def rand(n, dtype=torch.float64, seed=0, *shape) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64).to(dtype)


# --------------------------------------------------------------------------
# The torch module run as itself


def _split_flat(case: Case, z: Tensor):
    """Flat [B, S] -> the model's own hidden format."""
    kind, H, L = case.kind, case.hidden_size, case.num_layers
    B = z.shape[0]
    if kind in CELL_KINDS and is_lstm(kind):
        return (z[:, :H].contiguous(), z[:, H:].contiguous())
    if kind in MODULE_KINDS:
        if is_lstm(kind):
            h = z[:, : L * H].reshape(B, L, H).transpose(0, 1).contiguous()
            c = z[:, L * H :].reshape(B, L, H).transpose(0, 1).contiguous()
            return (h, c)
        return z.reshape(B, L, H).transpose(0, 1).contiguous()
    if kind == "user_tuple":
        return (z[:, :H], z[:, H:].reshape(B, 2, H))
    return z


def _join_flat(case: Case, state) -> Tensor:
    """The model's own hidden format -> flat [B, S] (DESIGN.md §2)."""
    kind = case.kind
    if kind in MODULE_KINDS:
        parts = state if isinstance(state, tuple) else (state,)
        return torch.cat([p.transpose(0, 1).reshape(p.shape[1], -1) for p in parts], dim=-1)
    if isinstance(state, tuple):
        return torch.cat([p.reshape(p.shape[0], -1) for p in state], dim=-1)
    return state


def initial_flat(case: Case) -> Tensor:
    B = case.inputs.shape[0]
    S = state_size(case.kind, case.hidden_size)
    if case.h0 is None:
        return torch.zeros(B, S, dtype=case.inputs.dtype)
    if isinstance(case.h0, tuple):
        return torch.cat([h.reshape(B, -1) for h in case.h0], dim=-1)
    return case.h0


def native_states(case: Case, model: nn.Module | None = None) -> Tensor:
    """Flat states [B, T, S] from calling the torch module itself step by step."""
    model = case.model if model is None else model
    x = case.inputs
    state = _split_flat(case, initial_flat(case))
    out = []
    for t in range(x.shape[1]):
        if case.kind in MODULE_KINDS:
            xt = x[:, t : t + 1] if model.batch_first else x[:, t][None]
            _, state = model(xt, state)
        else:
            state = model(x[:, t], state)
        out.append(_join_flat(case, state))
    return torch.stack(out, dim=1)


def native_outputs(case: Case, model: nn.Module | None = None) -> Tensor:
    """The top-layer hidden output [B, T, H] from the module's own forward.

    Whole-sequence call for nn.RNN/GRU/LSTM (honouring batch_first); a time
    loop for cells.
    """
    model = case.model if model is None else model
    if case.kind in MODULE_KINDS:
        state = _split_flat(case, initial_flat(case))
        if model.batch_first:
            out, _ = model(case.inputs, state)
        else:
            out, _ = model(case.inputs.transpose(0, 1), state)
            out = out.transpose(0, 1)
        return out
    states = native_states(case, model)
    return states[..., : case.hidden_size]


def native_gradient(case: Case, readout: nn.Module, loss_fn, targets: Tensor) -> Tensor:
    """∇_θ L by plain torch autograd through the module itself, flat in named_parameters order."""
    model = copy.deepcopy(case.model)
    model.zero_grad()
    loss = loss_fn(readout(native_outputs(case, model)), targets)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in grads]).detach()


# --------------------------------------------------------------------------
# Dense references by jacrev


def theta_vector(traj: kpflow.Trajectory) -> Tensor:
    return traj.theta_to_vector(traj.theta).clone()


def dense_J(traj: kpflow.Trajectory) -> Tensor:
    """J_θ (N, p): jacrev of the batched one-step map w.r.t. θ."""
    return jacrev(lambda v: traj.step_all(traj.vector_to_theta(v)).reshape(-1))(theta_vector(traj))


def dense_P(traj: kpflow.Trajectory) -> Tensor:
    """P (N, N): jacrev of the forced rollout w.r.t. the forcing q at q = 0."""
    q0 = torch.zeros(traj.size, dtype=traj.dtype)
    return jacrev(lambda q: traj.rollout(forcing=q.reshape(traj.shape)).reshape(-1))(q0)


def dense_dZdtheta(traj: kpflow.Trajectory) -> Tensor:
    """dZ/dθ (N, p): jacrev of the whole rollout w.r.t. θ."""
    return jacrev(lambda v: traj.rollout(traj.vector_to_theta(v)).reshape(-1))(theta_vector(traj))


def dense_state_jacobians(traj: kpflow.Trajectory) -> Tensor:
    """A_t [B, T, S, S] by one jacrev per (b, t) of the single-trial step."""
    B, T, S = traj.shape
    out = torch.empty(B, T, S, S, dtype=traj.dtype)
    for b in range(B):
        for t in range(T):
            x = traj.inputs[b : b + 1, t]
            z = traj.previous_states[b, t]
            out[b, t] = jacrev(lambda zz: traj.step(traj.theta, x, zz[None])[0])(z)
    return out


# --------------------------------------------------------------------------
# Tolerances

EPS = {torch.float64: float(np.finfo(np.float64).eps), torch.float32: float(np.finfo(np.float32).eps)}


def eps_of(dtype) -> float:
    if isinstance(dtype, np.dtype) or dtype in (np.float32, np.float64):
        return float(np.finfo(dtype).eps)
    return EPS[dtype]


def fnorm(x) -> float:
    if isinstance(x, Tensor):
        return float(torch.linalg.vector_norm(x.double()))
    return float(np.linalg.norm(np.asarray(x, dtype=np.float64)))


def dot_test(op, seed: int = 0, c: float = 10.0) -> tuple[float, float]:
    """PyLops-style dottest: |⟨A u, v⟩ − ⟨u, Aᵀ v⟩| and its eps-scaled bound.

    The bound is c·eps·n·(‖A u‖‖v‖ + ‖u‖‖Aᵀ v‖) with n the larger dimension.
    Uses the torch path (apply / apply_adjoint).
    """
    m, n = op.shape
    dtype = op.torch_dtype
    u = rand(n, dtype, seed)
    v = rand(m, dtype, seed + 7)
    Au = op.apply(u)
    ATv = op.apply_adjoint(v)
    lhs = float(torch.dot(Au.double(), v.double()))
    rhs = float(torch.dot(u.double(), ATv.double()))
    bound = c * eps_of(dtype) * max(m, n) * (fnorm(Au) * fnorm(v) + fnorm(u) * fnorm(ATv))
    return abs(lhs - rhs), bound


def assert_dot_test(op, seed: int = 0, c: float = 10.0, name: str = "") -> None:
    err, bound = dot_test(op, seed, c)
    assert err <= bound, f"{name or op!r}: |<Au,v> - <u,A^T v>| = {err:.3e} > {bound:.3e}"


def assert_close(actual, expected, dtype, scale: float | None = None, n: int = 1, c: float = 10.0, msg: str = ""):
    """max |actual − expected| ≤ c·eps·n·scale, scale defaulting to max |expected| (and 1e-300)."""
    a, e = (
        x.detach().double() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
        for x in (actual, expected)
    )
    assert a.shape == e.shape, f"{msg}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    if scale is None:
        scale = float(e.abs().max()) if e.numel() else 0.0
    err = float((a - e).abs().max()) if a.numel() else 0.0
    bound = c * eps_of(dtype) * max(n, 1) * max(scale, 1e-300)
    assert err <= bound, f"{msg}: max error {err:.3e} > bound {bound:.3e} (scale {scale:.3e}, n {n})"
    return err / max(bound, 1e-300)
