"""``build_model``: one entry point for every recurrent model kind."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._checks import check_float, check_float_dtype, check_int
from .ctrnn import CTRNN
from .gated import GRU, LSTM
from .neural_ode import MLPVectorField, NeuralODECell
from .rnn import VanillaRNN

__all__ = ["MODEL_KINDS", "build_model"]

# kind -> keyword arguments it accepts beyond the common ones
_KIND_OPTIONS: dict[str, tuple[str, ...]] = {
    "rnn": ("bias",),
    "rnn_relu": ("bias",),
    "gru": ("bias",),
    "lstm": ("bias",),
    "ctrnn": ("tau", "dt", "nonlinearity", "bias", "noise_std", "noise_seed"),
    "node": ("dt", "method", "n_substeps", "width", "nonlinearity", "leak", "bias"),
}

#: Kinds accepted by :func:`build_model`.
MODEL_KINDS: tuple[str, ...] = tuple(_KIND_OPTIONS)


def build_model(
    kind: str,
    input_size: int,
    hidden_size: int,
    gain: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    *,
    device: torch.device | str | None = None,
    **kw: Any,
) -> nn.Module:
    """Build a seeded recurrent cell by kind.

    Parameters
    ----------
    kind : str
        ``"rnn"`` (:class:`VanillaRNN`, tanh), ``"rnn_relu"`` (ReLU),
        ``"gru"`` (:func:`GRU`), ``"lstm"`` (:func:`LSTM`), ``"ctrnn"``
        (:class:`CTRNN`) or ``"node"`` (:class:`NeuralODECell` over an
        :class:`MLPVectorField`).
    input_size, hidden_size : int
    gain : float, default 1.0
        Connectivity scale g of the recurrent weights (g/√H).
    seed : int, default 0
        Seeds every parameter through one ``torch.Generator``; the global
        RNG is not touched.
    dtype : torch.dtype, default torch.float32
    device : optional
    **kw
        Kind-specific options: rnn/rnn_relu/gru/lstm: ``bias``; ctrnn:
        ``tau``, ``dt``, ``nonlinearity``, ``bias``, ``noise_std``,
        ``noise_seed``; node: ``dt``, ``method``, ``n_substeps``, ``width``,
        ``nonlinearity``, ``leak``, ``bias``.

    Returns
    -------
    torch.nn.Module
        A cell ``cell(x [B, I], h [B, H]) -> h' [B, H]`` (for ``"lstm"`` an
        ``nn.LSTMCell`` with state ``(h, c)``), with ``input_size`` and
        ``hidden_size`` attributes.

    Raises
    ------
    ValueError
        Unknown ``kind``.
    TypeError
        An option the kind does not accept.

    Examples
    --------
    >>> cell = build_model("ctrnn", 3, 64, gain=1.5, seed=1, tau=10.0)
    >>> cell.hidden_size
    64
    """
    if kind not in _KIND_OPTIONS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    unknown = sorted(set(kw) - set(_KIND_OPTIONS[kind]))
    if unknown:
        raise TypeError(
            f"build_model(kind={kind!r}) got unexpected option(s) {unknown}; "
            f"accepted: {list(_KIND_OPTIONS[kind])}"
        )
    input_size = check_int(input_size, "input_size")
    hidden_size = check_int(hidden_size, "hidden_size")
    gain = check_float(gain, "gain", nonnegative=True)
    seed = check_int(seed, "seed", minimum=0)
    if check_float_dtype(dtype) is None:
        raise TypeError("dtype must be a floating torch.dtype, got None")
    generator = torch.Generator().manual_seed(seed)
    common = dict(gain=gain, generator=generator, dtype=dtype, device=device)
    if kind in ("rnn", "rnn_relu"):
        nonlinearity = "tanh" if kind == "rnn" else "relu"
        return VanillaRNN(input_size, hidden_size, nonlinearity, **common, **kw)
    if kind == "gru":
        return GRU(input_size, hidden_size, **common, **kw)
    if kind == "lstm":
        return LSTM(input_size, hidden_size, **common, **kw)
    if kind == "ctrnn":
        return CTRNN(input_size, hidden_size, **common, **kw)
    # kind == "node"
    field_options = {k: kw[k] for k in ("width", "nonlinearity", "leak", "bias") if k in kw}
    cell_options = {k: kw[k] for k in ("dt", "method", "n_substeps") if k in kw}
    field = MLPVectorField(hidden_size, input_size, **field_options, **common)
    return NeuralODECell(field, **cell_options)
