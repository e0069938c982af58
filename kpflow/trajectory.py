"""The recorded trajectory: the linearization point of every kpflow operator."""

from __future__ import annotations

import warnings
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import jvp, vjp, vmap

from .cells import SUPPORTED, StepMap, make_step_map

__all__ = ["Trajectory"]

_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The NumPy dtype matching a supported torch floating dtype."""
    try:
        return _NUMPY_DTYPES[dtype]
    except KeyError:
        raise TypeError(f"dtype: expected torch.float32 or torch.float64, got {dtype}") from None


def _active_dropout(model: nn.Module) -> list[str]:
    """Names of submodules that would draw random dropout masks in this mode."""
    found = []
    for name, mod in model.named_modules():
        if not mod.training:
            continue
        if isinstance(mod, nn.modules.dropout._DropoutNd) and mod.p > 0:
            found.append(name or type(mod).__name__)
        elif isinstance(mod, nn.RNNBase) and mod.dropout > 0 and mod.num_layers > 1:
            found.append(name or type(mod).__name__)
    return found


def _tuple_state_error(
    model: Callable, x: Tensor, h: Tensor, exc: Exception, batch_size: int, h0_given: bool
) -> ValueError | None:
    """The error for a cell with a tuple state (e.g. LSTM-like (h, c)) given a single-tensor state.

    Without h0 a user cell's state is one tensor [B, hidden_size]; a cell that
    unpacks its state, or returns a tuple, then fails deep inside. Returns
    None when the failure does not look like that. ``h`` is the state as the
    cell received it, [1, ...].
    """
    shape = ", ".join(["B", *map(str, h.shape[1:])])
    state = (f"h0 is a single tensor, so the cell {type(model).__name__} was called with a state of shape "
             f"[{shape}]" if h0_given else
             f"no h0 was given, so the cell {type(model).__name__} was called with a single state tensor of "
             f"shape [{shape}] (from its hidden_size)")
    shapes = None
    if isinstance(exc, (ValueError, TypeError)) and "unpack" in str(exc):
        why = f"it failed unpacking that state ({type(exc).__name__}: {exc})"
    else:
        try:
            with torch.no_grad():
                out = model(x, h)
        except Exception:  # noqa: BLE001 - only a diagnosis
            return None
        if not (isinstance(out, (tuple, list)) and len(out) >= 2 and all(isinstance(o, Tensor) for o in out)):
            return None
        shapes = [tuple(o.shape[1:]) for o in out]
        why = f"it returned a {type(out).__name__} of {len(out)} tensors"
    dtype = "" if h.dtype == torch.float32 else f", dtype={h.dtype}"
    example = ", ".join(f"torch.zeros({', '.join(map(str, (batch_size, *s)))}{dtype})"
                        for s in (shapes or [tuple(h.shape[1:])] * 2))
    return ValueError(
        f"h0: {state}, but {why}. A cell whose state is a tuple, such as an "
        "LSTM-like (h, c), needs an explicit h0: a tuple with one tensor [B, ...] per state element, "
        f"e.g. h0=({example})" + ("" if shapes else " for (h, c)")
    )


def _probe_transforms(
    step: Callable,
    theta: dict,
    x: Tensor,
    z: Tensor,
    *,
    model: Callable | None = None,
    state: Tensor | None = None,
    batch_size: int = 1,
    h0_given: bool = True,
) -> None:
    """Run jvp, vjp and vmap once on a user cell so failures are named early.

    ``model`` and ``state`` (the state as the cell receives it) are given when
    the cell's state is a single tensor (h0 a tensor, or none and
    ``model.hidden_size``): a failure is then checked for a cell that expects
    a tuple state.
    """
    try:
        step(theta, x, z)
    except Exception as exc:  # noqa: BLE001 - re-raised with a diagnosis
        if model is not None and state is not None:
            tuple_error = _tuple_state_error(model, x, state, exc, batch_size, h0_given)
            if tuple_error is not None:
                raise tuple_error from exc
        raise TypeError(
            f"model: calling it as a cell, model(x_t, h) -> h_next, failed ({type(exc).__name__}: {exc}); "
            f"expected {SUPPORTED}"
        ) from exc
    tangent = {k: torch.zeros_like(v) for k, v in theta.items()}
    checks = [
        ("torch.func.jvp", lambda: jvp(lambda th, zz: step(th, x, zz), (theta, z), (tangent, z))),
        ("torch.func.vjp", lambda: vjp(lambda th, zz: step(th, x, zz), theta, z)[1](z)),
        (
            "torch.func.vmap",
            lambda: vmap(lambda d: jvp(lambda zz: step(theta, x, zz), (z,), (d,))[1])(
                torch.stack([z, z])
            ),
        ),
        # jvp and vjp silently drop the derivative through .item(); only vmap
        # over the primals (parameters, inputs, states) rejects it.
        (
            "torch.func.vmap",
            lambda: vmap(step)(
                {k: torch.stack([v, v]) for k, v in theta.items()}, torch.stack([x, x]), torch.stack([z, z])
            ),
        ),
    ]
    for transform, run in checks:
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - re-raised with a diagnosis
            raise RuntimeError(
                f"model: {transform} cannot transform this cell ({type(exc).__name__}: {exc}). "
                "The cell must be a pure tensor function: use out-of-place operations "
                "(h = h + u, not h += u or h[...] = u), no .item()/.tolist()/.numpy(), "
                "no Python branches on tensor values, and no in-place RNG."
            ) from exc


class Trajectory:
    """A recurrent model run over a batch of inputs, frozen as a linearization point.

    Parameters
    ----------
    model : nn.Module or callable
        ``nn.RNNCell`` (tanh or relu), ``nn.GRUCell``, ``nn.LSTMCell``,
        ``nn.RNN``/``nn.GRU``/``nn.LSTM`` (any number of layers, unidirectional),
        or any module/callable with the cell signature ``cell(x_t, h) -> h_next``.
    inputs : Tensor
        Inputs of shape [B, T, I], always batch-first (whatever a module's own
        ``batch_first`` flag), on the model's device, in the model's dtype
        (float32 or float64).
    h0 : Tensor or tuple of Tensor, optional
        Initial state: either the flat state [B, S] or torch's own hidden
        format for the model ([B, H] for cells, [L, B, H] for modules, a tuple
        (h, c) for LSTMs). Zeros when omitted.
    params : sequence of str, optional
        Names (as in ``model.named_parameters()``) of the parameters that form
        θ. Default: every parameter that requires grad.

    Attributes
    ----------
    states : Tensor
        The trajectory Z, [B, T, S]: ``states[:, t]`` is z_{t+1} in the
        1-based notation of the paper.
    previous_states : Tensor
        [B, T, S], the state each step starts from: z_0, z_1, ..., z_{T-1}.
    theta : dict of str to Tensor
        Snapshot of the parameters that form θ, in ``named_parameters()`` order.

    Notes
    -----
    The model is the one-step map z_t = f(z_{t-1}, x_t; θ), z_0 = h0. The
    state vector at each step is torch's hidden tuple, each element
    batch-first and flattened per trial, concatenated in tuple order, so S is
    H (RNN/GRU cells), 2H (LSTMCell), L·H (L-layer RNN/GRU), 2·L·H (L-layer
    LSTM). Everything (parameters, buffers, inputs, h0) is copied at
    construction: training the model afterwards changes nothing here.

    Dropout never enters: torch's multi-layer RNN modules are evaluated with
    eval semantics (a warning says so when the module is in train mode); a
    user cell with an active dropout layer is refused, since its "operator"
    would be random.
    """

    def __init__(
        self,
        model: Callable,
        inputs: Tensor,
        h0: Tensor | Sequence[Tensor] | None = None,
        params: Iterable[str] | None = None,
    ) -> None:
        if not isinstance(inputs, Tensor):
            raise TypeError(f"inputs: expected a torch.Tensor of shape [B, T, I], got {type(inputs).__name__}")
        if inputs.dim() != 3:
            raise ValueError(
                f"inputs: expected a 3-D tensor [B, T, I] (batch-first), got shape {tuple(inputs.shape)}"
            )
        B, T, I = inputs.shape
        if B == 0 or T == 0:
            raise ValueError(f"inputs: need at least one trial and one step, got shape {tuple(inputs.shape)}")
        if inputs.dtype not in _NUMPY_DTYPES:
            raise TypeError(f"inputs: expected dtype torch.float32 or torch.float64, got {inputs.dtype}")
        dtype, device = inputs.dtype, inputs.device

        self.model = model
        self.step_map: StepMap = make_step_map(model, h0, B)
        if self.step_map.input_size is not None and I != self.step_map.input_size:
            raise ValueError(
                f"inputs: expected {self.step_map.input_size} features in the last dimension "
                f"(the model's input_size), got shape {tuple(inputs.shape)}"
            )

        named_params: dict[str, Tensor] = {}
        buffers: dict[str, Tensor] = {}
        if isinstance(model, nn.Module):
            named_params = dict(model.named_parameters())
            buffers = dict(model.named_buffers())
            active = _active_dropout(model)
            if active:
                if isinstance(model, nn.RNNBase):
                    warnings.warn(
                        f"model: {type(model).__name__} is in train mode with dropout="
                        f"{model.dropout}; kpflow linearizes the deterministic (eval-mode) map, "
                        "without dropout.",
                        stacklevel=2,
                    )
                else:
                    raise ValueError(
                        f"model: dropout is active in train mode ({', '.join(active)}), so the "
                        "one-step map is random and its operators would not be deterministic; "
                        "call model.eval() before building the trajectory"
                    )
        for name, t in list(named_params.items()) + list(buffers.items()):
            if t.is_floating_point() and t.dtype != dtype:
                raise TypeError(
                    f"inputs: dtype {dtype} does not match the model's {name} ({t.dtype}); "
                    f"convert one of them (e.g. model.to({dtype}) or inputs.to({t.dtype}))"
                )
            if t.device != device:
                raise ValueError(
                    f"inputs: device {device} does not match the model's {name} on {t.device}; "
                    "move the inputs to the model's device"
                )

        if params is None:
            names = [n for n, t in named_params.items() if t.requires_grad]
        else:
            if isinstance(params, str):
                raise TypeError("params: expected a sequence of parameter names, got a single str")
            wanted = list(params)
            unknown = [n for n in wanted if n not in named_params]
            if unknown:
                raise ValueError(
                    f"params: unknown parameter name(s) {unknown}; the model has {list(named_params)}"
                )
            if len(set(wanted)) != len(wanted):
                raise ValueError(f"params: duplicate names in {wanted}")
            # θ keeps named_parameters() order whatever order the user gave.
            names = [n for n in named_params if n in set(wanted)]

        snap = {n: t.detach().clone() for n, t in named_params.items()}
        self.theta: dict[str, Tensor] = {n: snap[n] for n in names}
        self._frozen: dict[str, Tensor] = {n: t for n, t in snap.items() if n not in self.theta}
        self._frozen.update({n: t.detach().clone() for n, t in buffers.items()})

        self.inputs: Tensor = inputs.detach().clone()
        self.h0: Tensor = self._flat_h0(h0, B, dtype, device)
        self.dtype: torch.dtype = dtype
        self.numpy_dtype: np.dtype = numpy_dtype(dtype)
        self.device: torch.device = device

        if not isinstance(model, (nn.RNNBase, nn.RNNCellBase)):
            single = not self.step_map.layout.is_tuple
            _probe_transforms(self.step, self.theta, self.inputs[:1, 0], self.h0[:1],
                              model=model if single else None,
                              state=self.step_map.layout.split(self.h0[:1])[0] if single else None,
                              batch_size=B, h0_given=h0 is not None)

        with torch.no_grad():
            self.states: Tensor = self.rollout()
        self.previous_states: Tensor = torch.cat([self.h0[:, None], self.states[:, :-1]], dim=1)
        self._cache: dict[str, object] = {}

    def cached(self, key: str, factory: Callable[[], object]) -> object:
        """A linearization shared by all operators of this trajectory, built once on demand."""
        if key not in self._cache:
            self._cache[key] = factory()
        return self._cache[key]

    # ------------------------------------------------------------------ sizes
    @property
    def batch_size(self) -> int:
        """B, the number of trials."""
        return self.inputs.shape[0]

    @property
    def num_steps(self) -> int:
        """T, the number of steps."""
        return self.inputs.shape[1]

    @property
    def input_size(self) -> int:
        """I, the number of input features."""
        return self.inputs.shape[2]

    @property
    def state_size(self) -> int:
        """S, the size of the flat state of one trial."""
        return self.step_map.state_size

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, T, S), the shape of a trajectory-space tensor."""
        return (self.batch_size, self.num_steps, self.state_size)

    @property
    def size(self) -> int:
        """N = B·T·S, the dimension of trajectory space."""
        B, T, S = self.shape
        return B * T * S

    @property
    def param_names(self) -> list[str]:
        """Names of the parameters forming θ, in order."""
        return list(self.theta)

    @property
    def num_params(self) -> int:
        """p, the dimension of parameter space."""
        return sum(t.numel() for t in self.theta.values())

    def __repr__(self) -> str:
        B, T, S = self.shape
        return (
            f"Trajectory({self.step_map.kind}, B={B}, T={T}, S={S}, I={self.input_size}, "
            f"p={self.num_params}, dtype={self.dtype}, device={self.device})"
        )

    # ------------------------------------------------------------ dynamics
    def _flat_h0(self, h0, B: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        layout = self.step_map.layout
        S = layout.size
        if h0 is None:
            return torch.zeros(B, S, dtype=dtype, device=device)
        parts = list(h0) if isinstance(h0, (tuple, list)) else [h0]
        for i, h in enumerate(parts):
            if not isinstance(h, Tensor):
                raise TypeError(f"h0: expected tensors, element {i} is {type(h).__name__}")
            if h.dtype != dtype:
                raise TypeError(f"h0: dtype {h.dtype} does not match the inputs' {dtype}")
            if h.device != device:
                raise ValueError(f"h0: device {h.device} does not match the inputs' {device}")
        if len(parts) == 1 and tuple(parts[0].shape) == (B, S):
            return parts[0].detach().clone()
        if len(parts) == len(layout.shapes):
            flat = []
            for h, shp in zip(parts, layout.shapes):
                if layout.layered:  # torch stores [L, B, H]
                    if tuple(h.shape) != (shp[0], B, *shp[1:]):
                        break
                    h = h.transpose(0, 1)
                elif tuple(h.shape) != (B, *shp):
                    break
                flat.append(h.reshape(B, -1))
            else:
                return torch.cat(flat, dim=-1).detach().clone()
        expected = " or ".join(
            [f"[B, S] = [{B}, {S}]"]
            + [
                ("a tuple of " if layout.is_tuple else "")
                + ", ".join(
                    str([s[0], B, *s[1:]] if layout.layered else [B, *s]) for s in layout.shapes
                )
            ]
        )
        got = [tuple(h.shape) for h in parts]
        raise ValueError(f"h0: expected {expected}; got shape(s) {got}")

    def parameters(self, theta: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """All parameters and buffers of the model, with θ replaced by ``theta``."""
        merged = dict(self._frozen)
        merged.update(self.theta if theta is None else theta)
        return merged

    def step(self, theta: Mapping[str, Tensor], x: Tensor, z: Tensor) -> Tensor:
        """The one-step map f(z, x; θ) on flat states: ``z`` [M, S], ``x`` [M, I]."""
        return self.step_map.step(self.parameters(theta), x, z)

    def rollout(
        self,
        theta: Mapping[str, Tensor] | None = None,
        forcing: Tensor | None = None,
        h0: Tensor | None = None,
    ) -> Tensor:
        """Run the model over the recorded inputs, differentiably.

        Parameters
        ----------
        theta : dict, optional
            Parameters θ to use instead of the snapshot.
        forcing : Tensor, optional
            [B, T, S] perturbation q added after every step:
            z_t = f(z_{t-1}, x_t; θ) + q_t. Its derivative at q = 0 is P.
        h0 : Tensor, optional
            Flat initial state [B, S] instead of the recorded one.

        Returns
        -------
        Tensor
            The states [B, T, S].
        """
        params = self.parameters(theta)
        return self.step_map.unroll(params, self.inputs, self.h0 if h0 is None else h0, forcing)

    def observe(self, states: Tensor | None = None) -> Tensor:
        """The readable hidden output (top-layer h) of states [..., S]; default: the trajectory."""
        return self.step_map.observe(self.states if states is None else states)

    def step_all(self, theta: Mapping[str, Tensor] | None = None, previous: Tensor | None = None) -> Tensor:
        """f applied at every (b, t) at once from the recorded z_{t-1}; returns [B, T, S]."""
        B, T, S = self.shape
        prev = self.previous_states if previous is None else previous
        z = self.step(
            self.theta if theta is None else theta,
            self.inputs.reshape(B * T, -1),
            prev.reshape(B * T, S),
        )
        return z.reshape(B, T, S)

    # ------------------------------------------------------------- helpers
    def to_trajectory(self, vector: Tensor | np.ndarray) -> Tensor:
        """Reshape a flat trajectory-space vector [N] (C order) to [B, T, S]."""
        if isinstance(vector, np.ndarray):
            vector = torch.as_tensor(vector, device=self.device)
        if vector.shape != (self.size,):
            raise ValueError(f"vector: expected shape ({self.size},) = B·T·S, got {tuple(vector.shape)}")
        return vector.reshape(self.shape)

    def flatten(self, tensor: Tensor) -> Tensor:
        """Flatten a trajectory-space tensor [B, T, S] to [N] (C order)."""
        if tuple(tensor.shape) != self.shape:
            raise ValueError(f"tensor: expected shape [B, T, S] = {list(self.shape)}, got {tuple(tensor.shape)}")
        return tensor.reshape(-1)

    def theta_to_vector(self, theta: Mapping[str, Tensor]) -> Tensor:
        """Concatenate a named-parameter dict into a flat θ vector [p]."""
        missing = [n for n in self.theta if n not in theta]
        if missing:
            raise ValueError(f"theta: missing parameter(s) {missing}")
        for n, ref in self.theta.items():
            if tuple(theta[n].shape) != tuple(ref.shape):
                raise ValueError(f"theta: {n} has shape {tuple(theta[n].shape)}, expected {tuple(ref.shape)}")
        return torch.cat([theta[n].reshape(-1) for n in self.theta]) if self.theta else self.h0.new_zeros(0)

    def vector_to_theta(self, vector: Tensor | np.ndarray) -> dict[str, Tensor]:
        """Split a flat θ vector [p] into a named-parameter dict (views)."""
        if isinstance(vector, np.ndarray):
            vector = torch.as_tensor(vector, device=self.device)
        if vector.shape[-1:] != (self.num_params,):
            raise ValueError(f"vector: expected last dimension p = {self.num_params}, got shape {tuple(vector.shape)}")
        lead = vector.shape[:-1]
        out, i = {}, 0
        for n, ref in self.theta.items():
            out[n] = vector[..., i : i + ref.numel()].reshape(*lead, *ref.shape)
            i += ref.numel()
        return out
