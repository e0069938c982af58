"""A dense matrix seen as a kpflow operator (torch-native, on its device)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..operator import KPOperator

__all__ = ["DenseOperator"]

_FLOATS = (torch.float32, torch.float64)


class DenseOperator(KPOperator):
    """A dense matrix as a :class:`~kpflow.KPOperator`.

    Parameters
    ----------
    matrix : Tensor or numpy.ndarray
        A 2-D float32/float64 matrix (m, n). NumPy arrays are wrapped without
        a copy when possible; integer NumPy arrays become float64 (exact for
        integers below 2⁵³). Torch tensors are used as they are (no cast): an
        integer tensor is refused.
    psd : bool
        Declares the matrix symmetric positive semi-definite (the spectra
        routines then use ``which="LA"`` and never report negative values).

    Notes
    -----
    Products are plain matrix products on the matrix's device; ``matmat``
    is one ``mm`` (no vmap). ``to_dense()`` returns the matrix itself.
    """

    def __init__(self, matrix: Tensor | np.ndarray, psd: bool = False) -> None:
        if isinstance(matrix, np.ndarray):
            if matrix.dtype.kind in "biu":
                matrix = matrix.astype(np.float64)
            elif matrix.dtype not in (np.float32, np.float64):
                raise TypeError(f"matrix: expected a float32/float64 (or integer) array, got dtype {matrix.dtype}")
            matrix = torch.from_numpy(np.ascontiguousarray(matrix))
        if not isinstance(matrix, Tensor):
            raise TypeError(f"matrix: expected a torch.Tensor or numpy.ndarray, got {type(matrix).__name__}")
        if matrix.dim() != 2:
            raise ValueError(f"matrix: expected a 2-D matrix, got shape {tuple(matrix.shape)}")
        if matrix.dtype not in _FLOATS:
            raise TypeError(f"matrix: expected dtype torch.float32 or torch.float64, got {matrix.dtype}")
        super().__init__(tuple(matrix.shape), matrix.dtype, matrix.device, chunk_size=None)
        self.matrix = matrix.detach()
        self.psd = bool(psd)

    def _mv(self, v: Tensor) -> Tensor:
        return self.matrix @ v

    def _rmv(self, v: Tensor) -> Tensor:
        return self.matrix.T @ v

    def _mm(self, V: Tensor) -> Tensor:
        return self.matrix @ V

    def _rmm(self, V: Tensor) -> Tensor:
        return self.matrix.T @ V

    def _adjoint(self) -> "DenseOperator":
        return DenseOperator(self.matrix.T, psd=self.psd)

    def to_dense(self) -> Tensor:
        return self.matrix
