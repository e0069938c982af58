"""Tests of kpflow.models: formulas, integrators, initialisation, seeding and
compatibility with torch.func (functional_call, jvp, vjp, vmap)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from kpflow.models import (
    CTRNN,
    GRU,
    LSTM,
    MODEL_KINDS,
    MLPVectorField,
    NeuralODECell,
    Readout,
    VanillaRNN,
    build_model,
    init_recurrent_,
    recurrent_weights,
)

pytestmark = [
    # emitted by torch internals on the first forward-mode AD call / GRU vmap fallback
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning"),
]

F64 = torch.float64
I, H, B = 3, 12, 5


def state_of(cell: nn.Module, h: torch.Tensor):
    return (h, torch.zeros_like(h)) if isinstance(cell, nn.LSTMCell) else h


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_build_model_shapes_and_attributes(kind):
    cell = build_model(kind, I, H, gain=1.3, seed=0)
    assert cell.input_size == I and cell.hidden_size == H
    x = torch.randn(B, I)
    h = torch.randn(B, H)
    out = cell(x, state_of(cell, h))
    if kind == "lstm":
        assert isinstance(out, tuple) and out[0].shape == out[1].shape == (B, H)
    else:
        assert out.shape == (B, H) and out.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in cell.parameters())
    cell64 = build_model(kind, I, H, seed=0, dtype=F64)
    assert all(p.dtype == F64 for p in cell64.parameters())


@pytest.mark.parametrize("cell", [
    VanillaRNN(I, H, generator=0),
    CTRNN(I, H, generator=0),
    NeuralODECell(MLPVectorField(H, I, width=8, generator=0)),
])
def test_kpflow_cells_accept_any_leading_shape_and_default_state(cell):
    x = torch.randn(2, 4, I)
    h = torch.randn(2, 4, H)
    assert cell(x, h).shape == (2, 4, H)
    assert cell(x[0, 0], h[0, 0]).shape == (H,)
    torch.testing.assert_close(cell(x[0]), cell(x[0], torch.zeros(4, H)))
    with pytest.raises(ValueError, match="input_size"):
        cell(torch.randn(4, I + 1), torch.randn(4, H))
    with pytest.raises(ValueError, match="hidden_size"):
        cell(torch.randn(4, I), torch.randn(4, H + 1))
    with pytest.raises(ValueError, match="leading"):
        cell(torch.randn(4, I), torch.randn(3, H))


# ---------------------------------------------------------------- formulas
@pytest.mark.parametrize("nonlinearity,phi", [("tanh", torch.tanh), ("relu", torch.relu),
                                              ("identity", lambda v: v)])
def test_vanilla_rnn_formula(nonlinearity, phi):
    cell = VanillaRNN(I, H, nonlinearity, generator=1, dtype=F64)
    with torch.no_grad():
        cell.bias.normal_()
    x, h = torch.randn(B, I, dtype=F64), torch.randn(B, H, dtype=F64)
    expected = phi(h @ cell.weight_hh.T + x @ cell.weight_ih.T + cell.bias)
    torch.testing.assert_close(cell(x, h), expected)


def test_ctrnn_euler_step_matches_formula():
    cell = CTRNN(I, H, tau=4.0, dt=0.5, nonlinearity="tanh", gain=1.5, generator=2, dtype=F64)
    with torch.no_grad():
        cell.bias.normal_()
    x, z = torch.randn(B, I, dtype=F64), torch.randn(B, H, dtype=F64)
    W, U, b = cell.weight_hh, cell.weight_ih, cell.bias
    expected = z + (0.5 / 4.0) * (-z + torch.tanh(z) @ W.T + x @ U.T + b)
    torch.testing.assert_close(cell(x, z), expected)
    assert cell.alpha == 0.125


def test_ctrnn_frozen_noise_is_a_deterministic_offset():
    noisy = CTRNN(I, H, noise_std=0.3, noise_seed=7, generator=0, dtype=F64)
    plain = CTRNN(I, H, generator=0, dtype=F64)
    eta = noisy.noise_offset
    assert eta.shape == (H,) and "noise_offset" in dict(noisy.named_buffers())
    assert "noise_offset" not in dict(noisy.named_parameters())
    torch.testing.assert_close(eta, CTRNN(I, H, noise_std=0.3, noise_seed=7, generator=5, dtype=F64).noise_offset)
    assert not torch.equal(eta, CTRNN(I, H, noise_std=0.3, noise_seed=8, dtype=F64).noise_offset)
    x, z = torch.randn(B, I, dtype=F64), torch.randn(B, H, dtype=F64)
    torch.testing.assert_close(noisy(x, z), noisy(x, z))
    torch.testing.assert_close(noisy(x, z) - plain(x, z), (noisy.alpha * eta).expand(B, H))
    big = CTRNN(I, 1500, noise_std=0.3, noise_seed=0, dtype=F64).noise_offset
    assert abs(big.std().item() - 0.3) < 0.03
    assert plain.noise_offset is None


class LinearField(nn.Module):
    """F(z, x) = A z (x ignored)."""

    def __init__(self, A: torch.Tensor, input_size: int) -> None:
        super().__init__()
        self.A = nn.Parameter(A)
        self.hidden_size, self.input_size = A.shape[0], input_size

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return z @ self.A.T


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
@pytest.mark.parametrize("n_substeps", [1, 3])
def test_neural_ode_linear_field_matches_taylor_polynomial(method, order, n_substeps):
    torch.manual_seed(0)
    A = torch.randn(H, H, dtype=F64) / math.sqrt(H)
    dt = 0.7
    cell = NeuralODECell(LinearField(A, I), dt=dt, method=method, n_substeps=n_substeps)
    z, x = torch.randn(B, H, dtype=F64), torch.randn(B, I, dtype=F64)
    hA = (dt / n_substeps) * A
    step = torch.eye(H, dtype=F64)
    term = torch.eye(H, dtype=F64)
    for k in range(1, order + 1):
        term = term @ hA / k
        step = step + term
    M = torch.linalg.matrix_power(step, n_substeps)
    torch.testing.assert_close(cell(x, z), z @ M.T, rtol=1e-12, atol=1e-12)


def test_rk4_converges_to_exact_flow():
    torch.manual_seed(1)
    A = torch.randn(H, H, dtype=F64) / math.sqrt(H) - torch.eye(H, dtype=F64)
    z, x = torch.randn(B, H, dtype=F64), torch.zeros(B, I, dtype=F64)
    exact = z @ torch.linalg.matrix_exp(A).T
    errs = [(NeuralODECell(LinearField(A, I), dt=1.0, method="rk4", n_substeps=n)(x, z) - exact).abs().max()
            for n in (4, 8)]
    assert errs[1] < errs[0] / 12  # fourth order: ratio ~ 16


def test_mlp_vector_field_formula_and_node_steps():
    field = MLPVectorField(H, I, width=7, leak=0.5, generator=0, dtype=F64)
    with torch.no_grad():
        field.bias_hidden.normal_()
        field.bias_out.normal_()
    z, x = torch.randn(B, H, dtype=F64), torch.randn(B, I, dtype=F64)
    hidden = torch.tanh(z @ field.weight_z.T + x @ field.weight_x.T + field.bias_hidden)
    torch.testing.assert_close(field(z, x), -0.5 * z + hidden @ field.weight_out.T + field.bias_out)
    cell = NeuralODECell(field, dt=0.3, method="midpoint")
    torch.testing.assert_close(cell(x, z), z + 0.3 * field(z + 0.15 * field(z, x), x))
    euler = NeuralODECell(field, dt=0.3, method="euler")
    torch.testing.assert_close(euler(x, z), z + 0.3 * field(z, x))


def test_neural_ode_cell_validation():
    field = MLPVectorField(H, I, generator=0)
    with pytest.raises(ValueError, match="method"):
        NeuralODECell(field, method="rk45")
    with pytest.raises(ValueError, match="dt"):
        NeuralODECell(field, dt=0.0)
    with pytest.raises(ValueError, match="n_substeps"):
        NeuralODECell(field, n_substeps=0)
    with pytest.raises(ValueError, match="hidden_size"):
        NeuralODECell(field, hidden_size=H + 1)
    with pytest.raises(ValueError, match="hidden_size"):
        NeuralODECell(nn.Identity())
    with pytest.raises(TypeError, match="vector_field"):
        NeuralODECell(lambda z, x: z)  # type: ignore[arg-type]


# ---------------------------------------------------------- initialisation
def _assert_scale(w: torch.Tensor, std: float, tol: float = 0.05) -> None:
    assert abs(w.std().item() / std - 1) < tol, (w.std().item(), std)
    assert abs(w.mean().item()) < 4 * std / math.sqrt(w.numel())


@pytest.mark.parametrize("gain", [0.5, 1.0, 2.0])
def test_gain_init_std_for_kpflow_cells(gain):
    Hb = 400
    for cell in (VanillaRNN(I, Hb, gain=gain, generator=0), CTRNN(I, Hb, gain=gain, generator=0)):
        _assert_scale(cell.weight_hh, gain / math.sqrt(Hb))
        _assert_scale(cell.weight_ih, 1 / math.sqrt(I))
        assert torch.all(cell.bias == 0)
    field = MLPVectorField(Hb, I, width=300, gain=gain, generator=0)
    _assert_scale(field.weight_z, gain / math.sqrt(Hb))
    _assert_scale(field.weight_out, 1 / math.sqrt(300))
    node = NeuralODECell(field)
    init_recurrent_(node, 3 * gain, generator=1)
    _assert_scale(field.weight_z, 3 * gain / math.sqrt(Hb))


@pytest.mark.parametrize("module,blocks", [
    (nn.RNNCell(4, 300), 1),
    (nn.GRUCell(4, 300), 3),
    (nn.LSTMCell(4, 300), 4),
    (nn.GRU(4, 300, num_layers=2), 3),
    (nn.LSTM(4, 300, num_layers=2, bidirectional=True), 4),
])
def test_init_recurrent_on_torch_modules_scales_each_gate_block(module, blocks):
    gain = 1.7
    before = {n: p.detach().clone() for n, p in module.named_parameters() if not n.startswith("weight_hh")}
    init_recurrent_(module, gain, torch.Generator().manual_seed(0))
    names = [n for n, _ in recurrent_weights(module)]
    assert names and all(n.startswith("weight_hh") for n in names)
    if isinstance(module, nn.RNNBase):
        assert len(names) == module.num_layers * (2 if module.bidirectional else 1)
    for _, w in recurrent_weights(module):
        for block in w.detach().split(300, dim=0):
            _assert_scale(block, gain / math.sqrt(300), tol=0.06)
        assert w.shape[0] == blocks * 300
    for n, p in module.named_parameters():  # other parameters untouched
        if n in before:
            assert torch.equal(p, before[n])


def test_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    for kind in MODEL_KINDS:
        a = build_model(kind, I, H, gain=1.2, seed=3)
        b = build_model(kind, I, H, gain=1.2, seed=3)
        c = build_model(kind, I, H, gain=1.2, seed=4)
        for (na, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
            assert torch.equal(pa, pb), (kind, na)
            if pa.abs().sum() > 0:
                assert not torch.equal(pa, pc), (kind, na)
    Readout(H, 2, generator=0)
    GRU(I, H, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())
    # same seed, different dtype: same weights up to rounding
    w32 = build_model("rnn", I, H, seed=9).weight_hh
    w64 = build_model("rnn", I, H, seed=9, dtype=F64).weight_hh
    torch.testing.assert_close(w32.double(), w64, atol=1e-7, rtol=0)


def test_gated_factories_return_torch_cells():
    gru, lstm = GRU(I, H, gain=0.8, generator=0), LSTM(I, H, gain=0.8, generator=0, dtype=F64)
    assert type(gru) is nn.GRUCell and type(lstm) is nn.LSTMCell
    assert lstm.weight_hh.dtype == F64
    bound = 1 / math.sqrt(H)
    assert gru.weight_ih.abs().max() <= bound and gru.bias_hh.abs().max() <= bound


def test_init_errors():
    with pytest.raises(TypeError, match="Linear"):
        init_recurrent_(nn.Linear(3, 3), 1.0)
    with pytest.raises(ValueError, match="gain"):
        init_recurrent_(VanillaRNN(I, H), -1.0)
    with pytest.raises(TypeError, match="generator"):
        VanillaRNN(I, H, generator=1.5)  # type: ignore[arg-type]


# ----------------------------------------------------------------- readout
def test_readout():
    r = Readout(400, 3, generator=0, dtype=F64)
    assert isinstance(r, nn.Linear) and r.hidden_size == 400 and r.output_size == 3
    _assert_scale(r.weight, 1 / math.sqrt(400), tol=0.08)
    assert torch.all(r.bias == 0)
    h = torch.randn(2, 7, 400, dtype=F64)
    torch.testing.assert_close(r(h), h @ r.weight.T)
    assert torch.equal(Readout(400, 3, generator=0).weight, Readout(400, 3, generator=0).weight)
    assert Readout(8, 2, bias=False).bias is None


# ----------------------------------------------------------- build_model
def test_build_model_options_and_errors():
    ctrnn = build_model("ctrnn", I, H, tau=10.0, dt=2.0, noise_std=0.1, noise_seed=3)
    assert isinstance(ctrnn, CTRNN) and ctrnn.alpha == 0.2 and ctrnn.noise_offset is not None
    node = build_model("node", I, H, dt=0.1, method="euler", n_substeps=2, width=9, leak=0.0)
    assert isinstance(node, NeuralODECell) and node.vector_field.width == 9 and node.method == "euler"
    assert build_model("rnn_relu", I, H).nonlinearity == "relu"
    assert build_model("rnn", I, H, bias=False).bias is None
    with pytest.raises(ValueError, match="kind"):
        build_model("transformer", I, H)
    with pytest.raises(TypeError, match="tau"):
        build_model("rnn", I, H, tau=3.0)
    with pytest.raises(TypeError, match="dtype"):
        build_model("rnn", I, H, dtype=torch.int32)
    with pytest.raises(ValueError, match="hidden_size"):
        build_model("gru", I, 0)
    with pytest.raises(ValueError, match="nonlinearity"):
        build_model("ctrnn", I, H, nonlinearity="gelu")


# ------------------------------------------------------------- torch.func
FUNC_KINDS = ["rnn", "rnn_relu", "gru", "ctrnn", "node"]


def _cell_and_inputs(kind: str):
    cell = build_model(kind, I, H, gain=1.4, seed=0, dtype=F64)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, I, dtype=F64, generator=gen)
    h = torch.randn(B, H, dtype=F64, generator=gen) * 0.5
    return cell, x, h


@pytest.mark.parametrize("kind", FUNC_KINDS)
def test_vmapped_jvp_and_vjp_wrt_state_match_loops(kind):
    cell, x, h = _cell_and_inputs(kind)
    params = dict(cell.named_parameters())

    def step(state):
        return functional_call(cell, params, (x, state))

    tangents = torch.randn(6, B, H, dtype=F64)
    batched = vmap(lambda v: jvp(step, (h,), (v,))[1])(tangents)
    looped = torch.stack([jvp(step, (h,), (v,))[1] for v in tangents])
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)

    out, pullback = vjp(step, h)
    assert out.shape == (B, H)
    cotangents = torch.randn(6, B, H, dtype=F64)
    batched_t = vmap(lambda u: pullback(u)[0])(cotangents)
    looped_t = torch.stack([pullback(u)[0] for u in cotangents])
    torch.testing.assert_close(batched_t, looped_t, rtol=1e-12, atol=1e-12)
    # adjoint identity <J v, u> = <v, J^T u>
    lhs = (batched * cotangents).sum(dim=(1, 2))
    rhs = (tangents * batched_t).sum(dim=(1, 2))
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-12)

    # per-trial Jacobians A_b = d f / d h_b agree with the jvp
    def one(xb, hb):
        return functional_call(cell, params, (xb, hb))

    jac = vmap(jacrev(one, argnums=1))(x, h)  # [B, H, H]
    v = tangents[0]
    torch.testing.assert_close(torch.einsum("bij,bj->bi", jac, v), batched[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", FUNC_KINDS)
def test_parameter_jvp_matches_finite_differences(kind):
    cell, x, h = _cell_and_inputs(kind)
    params = {n: p.detach() for n, p in cell.named_parameters()}
    gen = torch.Generator().manual_seed(2)
    direction = {n: torch.randn(p.shape, dtype=F64, generator=gen) for n, p in params.items()}

    def f(p):
        return functional_call(cell, p, (x, h))

    _, tangent = jvp(f, (params,), (direction,))
    eps = 1e-6
    plus = f({n: p + eps * direction[n] for n, p in params.items()})
    minus = f({n: p - eps * direction[n] for n, p in params.items()})
    torch.testing.assert_close(tangent, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", FUNC_KINDS)
def test_cells_are_pure(kind):
    cell, x, h = _cell_and_inputs(kind)
    x0, h0 = x.clone(), h.clone()
    a, b = cell(x, h), cell(x, h)
    assert torch.equal(a, b) and torch.equal(x, x0) and torch.equal(h, h0)
    # vmap over trials gives the batched call
    torch.testing.assert_close(vmap(cell)(x, h), a, rtol=1e-12, atol=1e-12)


def test_docstrings_have_notes():
    for obj in (VanillaRNN, CTRNN, NeuralODECell, MLPVectorField, Readout, GRU, LSTM, init_recurrent_):
        assert obj.__doc__ and "Notes" in obj.__doc__, obj
