"""One-step maps z_t = f(z_{t-1}, x_t; θ) for every supported recurrent model.

Every supported model is reduced to a pure function ``step(params, x, z)`` of
a parameter dictionary, a batch of inputs ``x`` [M, I] and a batch of flat
states ``z`` [M, S], returning the next flat states [M, S]. The operators of
kpflow differentiate exactly this function with ``torch.func``.

torch's own RNN modules are re-implemented here with plain tensor operations
(the same equations and parameter names as the modules). That is deliberate:
the fused/cuDNN kernels behind ``nn.GRU``/``nn.LSTM`` have no forward-mode AD
on CUDA, no double backward, no vmap batching rule and, in older torch, cached
flat weights that ignore ``functional_call`` (PITFALLS 4, 5, 12). The tests
check each plain-op map against the module it replaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

__all__ = ["StepMap", "make_step_map"]

Params = Mapping[str, Tensor]


@dataclass(frozen=True)
class StateLayout:
    """How torch's hidden tuple maps to the flat per-trial state vector.

    Attributes
    ----------
    shapes : tuple of tuple of int
        Per-trial shape of each element of the hidden tuple, in tuple order.
    is_tuple : bool
        Whether the model's own hidden state is a tuple (LSTM) or a tensor.
    layered : bool
        Whether torch stores each element layer-first, as ``[L, B, H]``
        (``nn.RNN``/``nn.GRU``/``nn.LSTM``); the flat state is batch-first.
    """

    shapes: tuple[tuple[int, ...], ...]
    is_tuple: bool
    layered: bool = False

    @property
    def sizes(self) -> tuple[int, ...]:
        out = []
        for shp in self.shapes:
            n = 1
            for d in shp:
                n *= d
            out.append(n)
        return tuple(out)

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def split(self, z: Tensor) -> list[Tensor]:
        """Split flat states [M, S] into the hidden elements, each [M, *shape]."""
        parts = torch.split(z, list(self.sizes), dim=-1)
        return [p.reshape(*z.shape[:-1], *shp) for p, shp in zip(parts, self.shapes)]

    def join(self, parts: Sequence[Tensor], batch_ndim: int = 1) -> Tensor:
        """Concatenate hidden elements (each [M, *shape]) into flat states [M, S]."""
        flat = [p.reshape(*p.shape[:batch_ndim], -1) for p in parts]
        return torch.cat(flat, dim=-1) if len(flat) > 1 else flat[0]


class StepMap:
    """A recurrent model seen as a pure one-step map of flat states.

    Parameters
    ----------
    kind : str
        Human-readable model kind (``"GRUCell"``, ``"LSTM(2 layers)"``, ``"cell"``...).
    layout : StateLayout
        The hidden-state layout.
    step : callable
        ``step(params, x, z) -> z_next`` with ``x`` [M, I], ``z`` [M, S].
    input_size : int or None
        Expected number of input features, when the model declares it.
    observe_slice : slice
        The part of the flat state a readout reads (the hidden output of the
        top layer; the whole state of a user cell with a tensor state).
    """

    def __init__(
        self,
        kind: str,
        layout: StateLayout,
        step: Callable[[Params, Tensor, Tensor], Tensor],
        input_size: int | None,
        observe_slice: slice,
    ) -> None:
        self.kind = kind
        self.layout = layout
        self.step = step
        self.input_size = input_size
        self.observe_slice = observe_slice

    @property
    def state_size(self) -> int:
        return self.layout.size

    def observe(self, z: Tensor) -> Tensor:
        """The readable hidden output (top-layer h) of flat states [..., S]."""
        return z[..., self.observe_slice]

    def unroll(self, params: Params, inputs: Tensor, z0: Tensor, forcing: Tensor | None = None) -> Tensor:
        """Run the map over inputs [B, T, I] from flat z0 [B, S]; returns states [B, T, S].

        Differentiable (autograd or torch.func) with respect to ``params``,
        ``z0`` and ``forcing`` ([B, T, S], added after every step).
        """
        z = z0
        out = []
        for t in range(inputs.shape[1]):
            z = self.step(params, inputs[:, t], z)
            if forcing is not None:
                z = z + forcing[:, t]
            out.append(z)
        return torch.stack(out, dim=1)


# --------------------------------------------------------------------------
# Plain-op cells with torch's equations and parameter names


def _linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return F.linear(x, w, b)


def _rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity: str) -> Tensor:
    pre = _linear(x, w_ih, b_ih) + _linear(h, w_hh, b_hh)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def _gru_cell(x, h, w_ih, w_hh, b_ih, b_hh) -> Tensor:
    gi = _linear(x, w_ih, b_ih)
    gh = _linear(h, w_hh, b_hh)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    u = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - u) * n + u * h


def _lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh) -> tuple[Tensor, Tensor]:
    gates = _linear(x, w_ih, b_ih) + _linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_next = torch.sigmoid(o) * torch.tanh(c_next)
    return h_next, c_next


def _weights(params: Params, suffix: str) -> tuple:
    return (
        params["weight_ih" + suffix],
        params["weight_hh" + suffix],
        params.get("bias_ih" + suffix),
        params.get("bias_hh" + suffix),
    )


def _cell_map(module: nn.Module) -> StepMap:
    H = module.hidden_size
    if isinstance(module, nn.LSTMCell):
        layout = StateLayout(((H,), (H,)), is_tuple=True)

        def step(params: Params, x: Tensor, z: Tensor) -> Tensor:
            h, c = z[..., :H], z[..., H:]
            h2, c2 = _lstm_cell(x, h, c, *_weights(params, ""))
            return torch.cat([h2, c2], dim=-1)

        return StepMap("LSTMCell", layout, step, module.input_size, slice(0, H))

    layout = StateLayout(((H,),), is_tuple=False)
    if isinstance(module, nn.GRUCell):

        def step(params: Params, x: Tensor, z: Tensor) -> Tensor:
            return _gru_cell(x, z, *_weights(params, ""))

        return StepMap("GRUCell", layout, step, module.input_size, slice(0, H))

    nonlinearity = module.nonlinearity

    def step(params: Params, x: Tensor, z: Tensor) -> Tensor:
        return _rnn_cell(x, z, *_weights(params, ""), nonlinearity)

    return StepMap(f"RNNCell({nonlinearity})", layout, step, module.input_size, slice(0, H))


def _module_map(module: nn.RNNBase) -> StepMap:
    if module.bidirectional:
        raise ValueError(
            "model: bidirectional RNN modules are not supported: the state at step t "
            "must depend only on earlier steps for the propagator P to be a forward scan"
        )
    if getattr(module, "proj_size", 0):
        raise ValueError("model: nn.LSTM with proj_size > 0 is not supported")
    L, H = module.num_layers, module.hidden_size
    mode = module.mode  # "RNN_TANH", "RNN_RELU", "GRU", "LSTM"
    name = type(module).__name__ + f"({L} layer{'s' if L > 1 else ''})"

    if mode == "LSTM":
        layout = StateLayout(((L, H), (L, H)), is_tuple=True, layered=True)

        def step(params: Params, x: Tensor, z: Tensor) -> Tensor:
            hs, cs = [], []
            inp = x
            for k in range(L):
                h = z[..., k * H : (k + 1) * H]
                c = z[..., (L + k) * H : (L + k + 1) * H]
                h2, c2 = _lstm_cell(inp, h, c, *_weights(params, f"_l{k}"))
                hs.append(h2)
                cs.append(c2)
                inp = h2
            return torch.cat(hs + cs, dim=-1)

        return StepMap(name, layout, step, module.input_size, slice((L - 1) * H, L * H))

    layout = StateLayout(((L, H),), is_tuple=False, layered=True)
    if mode == "GRU":

        def cell(inp, h, k, params):
            return _gru_cell(inp, h, *_weights(params, f"_l{k}"))

    else:
        nonlinearity = "tanh" if mode == "RNN_TANH" else "relu"

        def cell(inp, h, k, params):
            return _rnn_cell(inp, h, *_weights(params, f"_l{k}"), nonlinearity)

    def step(params: Params, x: Tensor, z: Tensor) -> Tensor:
        hs = []
        inp = x
        for k in range(L):
            inp = cell(inp, z[..., k * H : (k + 1) * H], k, params)
            hs.append(inp)
        return torch.cat(hs, dim=-1) if L > 1 else hs[0]

    return StepMap(name, layout, step, module.input_size, slice((L - 1) * H, L * H))


def _user_map(model: Callable, layout: StateLayout) -> StepMap:
    is_module = isinstance(model, nn.Module)

    def call(params: Params, x: Tensor, h):
        if is_module:
            return functional_call(model, dict(params), (x, h))
        return model(x, h)

    def step(params: Params, x: Tensor, z: Tensor) -> Tensor:
        parts = layout.split(z)
        h = tuple(parts) if layout.is_tuple else parts[0]
        out = call(params, x, h)
        if layout.is_tuple:
            if not isinstance(out, (tuple, list)) or len(out) != len(parts):
                raise TypeError(
                    f"model: the cell returned {type(out).__name__}, expected a tuple of "
                    f"{len(parts)} tensors like its state h"
                )
            return layout.join(list(out))
        if not isinstance(out, Tensor):
            raise TypeError(
                f"model: the cell returned {type(out).__name__}, expected a tensor "
                "h_next like its state h"
            )
        return layout.join([out])

    first = layout.sizes[0]
    return StepMap(
        f"cell({type(model).__name__})",
        layout,
        step,
        getattr(model, "input_size", None),
        slice(0, first),
    )


def user_layout(model: Callable, h0, batch_size: int) -> StateLayout:
    """The state layout of a user cell, from ``h0`` or ``model.hidden_size``."""
    if h0 is None:
        H = getattr(model, "hidden_size", None)
        if not isinstance(H, int) or H <= 0:
            raise ValueError(
                "h0: a user cell without an integer `hidden_size` attribute needs an "
                "explicit initial state h0 of shape [B, H] (or a tuple of such tensors)"
            )
        return StateLayout(((H,),), is_tuple=False)
    if isinstance(h0, Tensor):
        if h0.dim() < 2 or h0.shape[0] != batch_size:
            raise ValueError(
                f"h0: expected a tensor of shape [B={batch_size}, ...] for a user cell, "
                f"got shape {tuple(h0.shape)}"
            )
        return StateLayout((tuple(h0.shape[1:]),), is_tuple=False)
    if isinstance(h0, (tuple, list)) and all(isinstance(h, Tensor) for h in h0) and h0:
        shapes = []
        for i, h in enumerate(h0):
            if h.dim() < 2 or h.shape[0] != batch_size:
                raise ValueError(
                    f"h0[{i}]: expected shape [B={batch_size}, ...], got {tuple(h.shape)}"
                )
            shapes.append(tuple(h.shape[1:]))
        return StateLayout(tuple(shapes), is_tuple=True)
    raise TypeError(f"h0: expected a tensor or a tuple of tensors, got {type(h0).__name__}")


SUPPORTED = (
    "nn.RNNCell, nn.GRUCell, nn.LSTMCell, nn.RNN, nn.GRU, nn.LSTM, or a module/callable "
    "with the cell signature cell(x_t, h) -> h_next"
)


def make_step_map(model: Callable, h0=None, batch_size: int = 1) -> StepMap:
    """Build the :class:`StepMap` of a supported model.

    Parameters
    ----------
    model : nn.Module or callable
        One of torch's RNN cells or modules, or a cell ``cell(x_t, h) -> h_next``.
    h0 : tensor or tuple of tensors, optional
        Only used to infer the state layout of a user cell.
    batch_size : int
        Number of trials B, used to check ``h0`` of a user cell.
    """
    if isinstance(model, (nn.RNNCell, nn.GRUCell, nn.LSTMCell)):
        return _cell_map(model)
    if isinstance(model, (nn.RNN, nn.GRU, nn.LSTM)):
        return _module_map(model)
    if isinstance(model, nn.RNNBase):
        raise TypeError(f"model: unsupported RNN module {type(model).__name__}; supported: {SUPPORTED}")
    if isinstance(model, nn.RNNCellBase):
        raise TypeError(f"model: unsupported RNN cell {type(model).__name__}; supported: {SUPPORTED}")
    if not callable(model):
        raise TypeError(f"model: expected {SUPPORTED}; got {type(model).__name__}")
    return _user_map(model, user_layout(model, h0, batch_size))
