"""Recurrent models for kpflow: cells with the signature
``cell(x_t [B, I], h [B, H]) -> h_next [B, H]`` that are pure functions of
their inputs and parameters (usable under ``torch.func``), a linear readout,
and seeded gain-scaled initialisation.

>>> from kpflow.models import build_model, Readout
>>> cell = build_model("rnn", input_size=3, hidden_size=32, gain=1.2, seed=0)
>>> readout = Readout(32, 3, generator=0)
"""

from .build import MODEL_KINDS, build_model
from .ctrnn import CTRNN
from .gated import GRU, LSTM
from .initialization import GeneratorLike, as_generator, init_recurrent_, recurrent_weights
from .neural_ode import ODE_METHODS, MLPVectorField, NeuralODECell, euler_step, midpoint_step, rk4_step
from .nonlinearities import NONLINEARITIES, get_nonlinearity
from .readout import Readout
from .rnn import VanillaRNN

__all__ = [
    "VanillaRNN",
    "GRU",
    "LSTM",
    "CTRNN",
    "NeuralODECell",
    "MLPVectorField",
    "ODE_METHODS",
    "euler_step",
    "midpoint_step",
    "rk4_step",
    "Readout",
    "init_recurrent_",
    "recurrent_weights",
    "as_generator",
    "GeneratorLike",
    "NONLINEARITIES",
    "get_nonlinearity",
    "build_model",
    "MODEL_KINDS",
]
