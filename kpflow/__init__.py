"""kpflow: the operators of KP-flow (K, P, P*, P⁻¹, J_θ, P K P*) as SciPy LinearOperators.

Core: :class:`Trajectory` (the linearization point) and the operators
:class:`ParameterJacobian` (J_θ), :class:`ParameterOperator` (K = J_θ J_θᵀ),
:class:`PropagationOperator` (P; ``P.H`` is P*, ``P.inverse()`` is P⁻¹) and
:class:`GradientFlowOperator` (P K P*); :func:`error_signal` (e = ∂L/∂Z).
Analysis: spectra, randomized traces, effective rank, alignment, partial
traces, Lyapunov spectra (:mod:`kpflow.analysis`). Tasks and models for the
main job: :mod:`kpflow.tasks`, :mod:`kpflow.models`. See ``docs/``.
"""

from .analysis import (
    DenseOperator,
    Estimate,
    LyapunovResult,
    PartialTraceOperator,
    SpectrumResult,
    alignment,
    effective_dimensions,
    effective_rank,
    frobenius_norm,
    gradient_flow_alignment,
    group_block,
    interference,
    kaplan_yorke_dimension,
    lyapunov_spectrum,
    misdirection,
    partial_trace,
    singular_values,
    top_eigs,
    trace,
)
from .error_signal import bptt_gradient, error_signal
from .gradient_flow import GradientFlowOperator
from .operator import AdjointOperator, KPOperator, ProductOperator, ScaledOperator, SumOperator
from .parameter import ParameterJacobian, ParameterOperator
from .propagation import InversePropagationOperator, PropagationOperator, state_jacobians
from .trajectory import Trajectory

__version__ = "0.1.0"

__all__ = [
    "Trajectory",
    "KPOperator",
    "ParameterJacobian",
    "ParameterOperator",
    "PropagationOperator",
    "InversePropagationOperator",
    "GradientFlowOperator",
    "SumOperator",
    "ProductOperator",
    "ScaledOperator",
    "AdjointOperator",
    "state_jacobians",
    "error_signal",
    "bptt_gradient",
    "top_eigs",
    "singular_values",
    "SpectrumResult",
    "trace",
    "frobenius_norm",
    "Estimate",
    "effective_rank",
    "alignment",
    "misdirection",
    "partial_trace",
    "PartialTraceOperator",
    "DenseOperator",
    "effective_dimensions",
    "lyapunov_spectrum",
    "kaplan_yorke_dimension",
    "LyapunovResult",
    "interference",
    "group_block",
    "gradient_flow_alignment",
]
