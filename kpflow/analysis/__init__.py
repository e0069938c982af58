"""kpflow.analysis: the measurements of the KP-flow paper on kpflow operators.

Spectra (:func:`top_eigs`, :func:`singular_values`), randomized traces and
norms (:func:`trace`, :func:`frobenius_norm`), effective rank and alignment
(:func:`effective_rank`, :func:`alignment`, :func:`misdirection`), partial
traces over the named axes of trajectory space (:func:`partial_trace`,
:func:`effective_dimensions`), Lyapunov spectra
(:func:`lyapunov_spectrum`, :func:`kaplan_yorke_dimension`) and multi-task
structure (:func:`interference`, :func:`group_block`,
:func:`gradient_flow_alignment`).

Every function accepts kpflow operators (torch-native, on their device),
SciPy ``LinearOperator`` objects and dense NumPy arrays / torch tensors.
"""

from .dense import DenseOperator
from .estimate import Estimate
from .lyapunov import LyapunovResult, kaplan_yorke_dimension, lyapunov_spectrum, positive_qr
from .multitask import (
    GradientFlowAlignment,
    GroupBlockOperator,
    InterferenceResult,
    gradient_flow_alignment,
    group_block,
    interference,
)
from .partial_trace import AXES, PartialTraceOperator, effective_dimensions, partial_trace
from .rank import alignment, effective_rank, misdirection
from .spectra import SpectrumResult, singular_values, top_eigs
from .trace import frobenius_norm, trace

__all__ = [
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
    "effective_dimensions",
    "AXES",
    "lyapunov_spectrum",
    "kaplan_yorke_dimension",
    "LyapunovResult",
    "positive_qr",
    "interference",
    "InterferenceResult",
    "group_block",
    "GroupBlockOperator",
    "gradient_flow_alignment",
    "GradientFlowAlignment",
    "DenseOperator",
]
