"""kpflow: the operators of KP-flow (K, P, P*, P⁻¹, J_θ, P K P*) as SciPy LinearOperators.

See DESIGN notes in the documentation for the mathematics and conventions.
"""

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
]
