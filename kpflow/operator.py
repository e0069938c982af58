"""The operator base class: a SciPy ``LinearOperator`` with a torch-native path.

A subclass implements two kernels on single 1-D torch tensors,
``_mv(v)`` (A v) and ``_rmv(v)`` (Aᵀ v); they must be pure functions that
``torch.func.vmap`` can batch. Everything else follows here:

* SciPy's ``matvec``/``rmatvec``/``matmat``/``rmatmat`` (NumPy in, NumPy out,
  in the operator's declared dtype; (N,) and (N, 1) both accepted);
* ``apply``/``apply_adjoint`` and ``op @ tensor`` for torch tensors on the
  operator's device, with no NumPy round trip;
* ``matmat`` batched by ``vmap`` over columns in bounded chunks;
* torch-native algebra between kpflow operators: ``@``, ``+``, ``-``,
  scalar ``*``, ``.H``/``.T``;
* ``to_dense()`` for small checks.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor
from torch.func import vmap

from .trajectory import numpy_dtype

__all__ = ["KPOperator", "SumOperator", "ProductOperator", "ScaledOperator", "AdjointOperator"]

DEFAULT_CHUNK_SIZE = 32

#: Threads NumPy's and SciPy's BLAS may use once SciPy drives a kpflow
#: operator (PITFALLS 13): set to None *before* the first SciPy product to
#: leave the BLAS pools alone. See :func:`limit_blas_threads`.
BLAS_THREADS: int | None = 1

_blas_limited = False


def limit_blas_threads() -> None:
    """Limit the BLAS pools of NumPy/SciPy to :data:`BLAS_THREADS`, once per process.

    SciPy's solvers (ARPACK in ``eigsh``/``svds``, ``lsqr``, ``gmres``...)
    call BLAS on long vectors between products with the operator, and torch
    runs the products on its own intra-op pool. OpenBLAS workers spin for a
    while after each call, so on a small machine the two pools fight for the
    cores and ``eigsh`` on a kpflow operator ran 7× slower than its products
    (measured in ``benchmarks/``). The first time SciPy applies a kpflow
    operator through the NumPy interface, kpflow therefore limits the
    ``blas`` API of threadpoolctl (NumPy's and SciPy's OpenBLAS/MKL; not
    torch's own pool) to ``BLAS_THREADS`` threads for the rest of the
    process. The level-1/2 BLAS work of those solvers gains nothing from
    threads. Restore with ``threadpoolctl.threadpool_limits(None)`` or a
    ``threadpoolctl`` context; opt out with ``kpflow.operator.BLAS_THREADS = None``.
    """
    global _blas_limited
    if _blas_limited:
        return
    _blas_limited = True
    if BLAS_THREADS is None:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return
    threadpool_limits(limits=BLAS_THREADS, user_api="blas")


def _owning(y):
    # SciPy reshapes the kernel's result to (M,) or (M, 1), which returns a
    # view; hand back an array that owns its memory (PITFALLS 2).
    return y if y.flags.owndata else y.copy()


class KPOperator(LinearOperator):
    """Base class of kpflow's matrix-free operators.

    Parameters
    ----------
    shape : tuple of int
        (rows, columns).
    dtype : torch.dtype
        float32 or float64; the NumPy dtype SciPy sees is the matching one.
    device : torch.device
        Where the kernels run and where torch inputs must live.
    chunk_size : int, optional
        Maximum number of columns ``matmat`` pushes through one vmapped
        kernel call (bounds memory); ``None`` for all at once.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device | str,
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__(dtype=numpy_dtype(dtype), shape=shape)
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size: expected a positive int or None, got {chunk_size!r}")
        self.torch_dtype = dtype
        self.device = torch.device(device)
        self.chunk_size = chunk_size

    # ----------------------------------------------------------- kernels
    def _mv(self, v: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _rmv(self, v: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _mm(self, V: Tensor) -> Tensor:
        """A applied to the columns of V [n, k]; vmapped, chunked."""
        return vmap(self._mv, in_dims=1, out_dims=1, chunk_size=self.chunk_size)(V)

    def _rmm(self, V: Tensor) -> Tensor:
        return vmap(self._rmv, in_dims=1, out_dims=1, chunk_size=self.chunk_size)(V)

    # ------------------------------------------------------- torch path
    def _check_tensor(self, x: Tensor, n: int, name: str = "x") -> None:
        if x.dtype != self.torch_dtype:
            raise TypeError(
                f"{name}: expected dtype {self.torch_dtype} (the operator's), got {x.dtype}; "
                "convert explicitly, kpflow does not cast torch tensors"
            )
        if x.device != self.device:
            raise ValueError(f"{name}: expected a tensor on {self.device} (the operator's device), got {x.device}")
        if x.dim() not in (1, 2) or x.shape[0] != n:
            raise ValueError(f"{name}: expected shape ({n},) or ({n}, k), got {tuple(x.shape)}")

    def apply(self, x: Tensor) -> Tensor:
        """A x for a torch tensor x of shape (n,) or (n, k) on the operator's device."""
        self._check_tensor(x, self.shape[1])
        return self._mv(x) if x.dim() == 1 else self._mm(x)

    def apply_adjoint(self, x: Tensor) -> Tensor:
        """Aᵀ x for a torch tensor x of shape (m,) or (m, k) on the operator's device."""
        self._check_tensor(x, self.shape[0])
        return self._rmv(x) if x.dim() == 1 else self._rmm(x)

    # ------------------------------------------------------- NumPy path
    def _to_torch(self, x: np.ndarray, name: str = "x") -> Tensor:
        if not _blas_limited:
            limit_blas_threads()
        x = np.asarray(x)
        if x.dtype.kind == "c":
            raise TypeError(f"{name}: complex input ({x.dtype}) is not supported by a real operator; "
                            "apply it to the real and imaginary parts separately")
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected a numeric array, got dtype {x.dtype}")
        # SciPy probes with int8 and some solvers hand float64 to float32
        # operators: cast to the declared dtype (PITFALLS 1).
        x = np.ascontiguousarray(x, dtype=self.dtype)
        return torch.from_numpy(x).to(self.device)

    def _to_numpy(self, y: Tensor) -> np.ndarray:
        # The array must own its memory: SciPy solvers keep references.
        return y.detach().to("cpu").numpy().copy()

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self._to_numpy(self._mv(self._to_torch(x).reshape(-1)))

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:
        return self._to_numpy(self._rmv(self._to_torch(x).reshape(-1)))

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        return self._to_numpy(self._mm(self._to_torch(X)))

    def _rmatmat(self, X: np.ndarray) -> np.ndarray:
        return self._to_numpy(self._rmm(self._to_torch(X)))

    def _check_numpy(self, x, n: int, name: str, allow_2d: bool) -> None:
        shape = np.shape(x)
        ok = shape == (n,) or (len(shape) == 2 and shape[0] == n and (allow_2d or shape[1] == 1))
        if not ok:
            want = f"({n},) or ({n}, k)" if allow_2d else f"({n},) or ({n}, 1)"
            raise ValueError(f"{name}: expected shape {want}, got {shape}")

    def _check_vector(self, x: Tensor, n: int) -> None:
        if not (x.dim() == 1 or (x.dim() == 2 and x.shape[1] == 1)):
            raise ValueError(f"x: expected shape ({n},) or ({n}, 1) for a matvec, got {tuple(x.shape)}; "
                             "use matmat (or @) for several columns")

    def matvec(self, x):
        """A x. NumPy arrays (N,) or (N, 1) give NumPy; torch tensors give torch."""
        if isinstance(x, Tensor):
            self._check_vector(x, self.shape[1])
            return self.apply(x)
        self._check_numpy(x, self.shape[1], "x", allow_2d=False)
        return _owning(super().matvec(x))

    def rmatvec(self, x):
        """Aᵀ x. NumPy arrays (M,) or (M, 1) give NumPy; torch tensors give torch."""
        if isinstance(x, Tensor):
            self._check_vector(x, self.shape[0])
            return self.apply_adjoint(x)
        self._check_numpy(x, self.shape[0], "x", allow_2d=False)
        return _owning(super().rmatvec(x))

    def matmat(self, X):
        """A X for X of shape (N, k)."""
        if isinstance(X, Tensor):
            if X.dim() != 2:
                raise ValueError(f"X: expected a 2-D tensor (N, k), got shape {tuple(X.shape)}")
            return self.apply(X)
        if np.ndim(X) != 2 or np.shape(X)[0] != self.shape[1]:
            raise ValueError(f"X: expected shape ({self.shape[1]}, k), got {np.shape(X)}")
        return _owning(super().matmat(X))

    def rmatmat(self, X):
        """Aᵀ X for X of shape (M, k)."""
        if isinstance(X, Tensor):
            if X.dim() != 2:
                raise ValueError(f"X: expected a 2-D tensor (M, k), got shape {tuple(X.shape)}")
            return self.apply_adjoint(X)
        if np.ndim(X) != 2 or np.shape(X)[0] != self.shape[0]:
            raise ValueError(f"X: expected shape ({self.shape[0]}, k), got {np.shape(X)}")
        return _owning(super().rmatmat(X))

    # ------------------------------------------------------------ algebra
    def dot(self, x):
        if isinstance(x, KPOperator):
            return ProductOperator([self, x])
        if isinstance(x, Tensor):
            return self.apply(x)
        if isinstance(x, numbers.Number) and not isinstance(x, bool):
            return ScaledOperator(self, x)
        return super().dot(x)

    def __matmul__(self, other):
        if isinstance(other, (KPOperator, Tensor)):
            return self.dot(other)
        return super().__matmul__(other)

    def __rmatmul__(self, other):
        if isinstance(other, Tensor):  # x @ A = (Aᵀ xᵀ)ᵀ
            if other.dim() == 1:  # a 1-D tensor has no transpose (Tensor.T warns)
                return self.apply_adjoint(other)
            return self.apply_adjoint(other.T).T
        return super().__rmatmul__(other)

    def __mul__(self, x):
        return self.dot(x)

    def __rmul__(self, x):
        if isinstance(x, numbers.Number) and not isinstance(x, bool):
            return ScaledOperator(self, x)
        return super().__rmul__(x)

    def __truediv__(self, x):
        if isinstance(x, numbers.Number) and not isinstance(x, bool):
            return ScaledOperator(self, 1.0 / x)
        return super().__truediv__(x)

    def __add__(self, x):
        if isinstance(x, KPOperator):
            return SumOperator([self, x])
        return super().__add__(x)

    def __neg__(self):
        return ScaledOperator(self, -1.0)

    def __sub__(self, x):
        if isinstance(x, KPOperator):
            return SumOperator([self, ScaledOperator(x, -1.0)])
        return super().__sub__(x)

    def _adjoint(self) -> "KPOperator":
        return AdjointOperator(self)

    def _transpose(self) -> "KPOperator":
        return self._adjoint()  # real operators

    # ------------------------------------------------------------ dense
    def to_dense(self) -> Tensor:
        """The operator as a dense torch matrix (m, n); for small checks only."""
        eye = torch.eye(self.shape[1], dtype=self.torch_dtype, device=self.device)
        return self._mm(eye)

    def __repr__(self) -> str:
        m, n = self.shape
        return f"<{m}x{n} {type(self).__name__} dtype={self.torch_dtype} device={self.device}>"


def _common(ops: Sequence[KPOperator]) -> tuple[torch.dtype, torch.device, int | None]:
    dtypes = {op.torch_dtype for op in ops}
    devices = {op.device for op in ops}
    if len(dtypes) > 1:
        raise TypeError(f"operators: cannot combine operators of dtypes {sorted(map(str, dtypes))}")
    if len(devices) > 1:
        raise ValueError(f"operators: cannot combine operators on devices {sorted(map(str, devices))}")
    chunks = [op.chunk_size for op in ops if op.chunk_size is not None]
    return dtypes.pop(), devices.pop(), (min(chunks) if chunks else None)


class SumOperator(KPOperator):
    """A₁ + A₂ + …, torch-native."""

    def __init__(self, operators: Sequence[KPOperator]) -> None:
        shapes = {op.shape for op in operators}
        if len(shapes) != 1:
            raise ValueError(f"operators: cannot add operators of shapes {sorted(shapes)}")
        dtype, device, chunk = _common(operators)
        super().__init__(operators[0].shape, dtype, device, chunk)
        self.operators = list(operators)

    def _mv(self, v):
        out = self.operators[0]._mv(v)
        for op in self.operators[1:]:
            out = out + op._mv(v)
        return out

    def _rmv(self, v):
        out = self.operators[0]._rmv(v)
        for op in self.operators[1:]:
            out = out + op._rmv(v)
        return out

    def _mm(self, V):
        out = self.operators[0]._mm(V)
        for op in self.operators[1:]:
            out = out + op._mm(V)
        return out

    def _rmm(self, V):
        out = self.operators[0]._rmm(V)
        for op in self.operators[1:]:
            out = out + op._rmm(V)
        return out

    def _adjoint(self):
        return SumOperator([op.H for op in self.operators])


class ProductOperator(KPOperator):
    """A₁ A₂ … A_k (applied right to left), torch-native."""

    def __init__(self, operators: Sequence[KPOperator]) -> None:
        flat: list[KPOperator] = []
        for op in operators:
            flat.extend(op.operators if isinstance(op, ProductOperator) else [op])
        for a, b in zip(flat[:-1], flat[1:]):
            if a.shape[1] != b.shape[0]:
                raise ValueError(f"operators: cannot multiply shapes {a.shape} and {b.shape}")
        dtype, device, chunk = _common(flat)
        super().__init__((flat[0].shape[0], flat[-1].shape[1]), dtype, device, chunk)
        self.operators = flat

    def _mv(self, v):
        for op in reversed(self.operators):
            v = op._mv(v)
        return v

    def _rmv(self, v):
        for op in self.operators:
            v = op._rmv(v)
        return v

    def _mm(self, V):
        # Each factor batches (and chunks) its own columns, so a factor with a
        # faster dedicated matmat keeps it inside a product.
        for op in reversed(self.operators):
            V = op._mm(V)
        return V

    def _rmm(self, V):
        for op in self.operators:
            V = op._rmm(V)
        return V

    def _adjoint(self):
        return ProductOperator([op.H for op in reversed(self.operators)])


class ScaledOperator(KPOperator):
    """α A, torch-native."""

    def __init__(self, operator: KPOperator, alpha: float) -> None:
        if isinstance(alpha, complex) or not np.isfinite(alpha):
            raise ValueError(f"alpha: expected a finite real scalar, got {alpha!r}")
        super().__init__(operator.shape, operator.torch_dtype, operator.device, operator.chunk_size)
        self.operator = operator
        self.alpha = float(alpha)

    def _mv(self, v):
        return self.alpha * self.operator._mv(v)

    def _rmv(self, v):
        return self.alpha * self.operator._rmv(v)

    def _mm(self, V):
        return self.alpha * self.operator._mm(V)

    def _rmm(self, V):
        return self.alpha * self.operator._rmm(V)

    def _adjoint(self):
        return ScaledOperator(self.operator.H, self.alpha)


class AdjointOperator(KPOperator):
    """Aᵀ of a kpflow operator, torch-native; its adjoint is A again."""

    def __init__(self, operator: KPOperator) -> None:
        m, n = operator.shape
        super().__init__((n, m), operator.torch_dtype, operator.device, operator.chunk_size)
        self.operator = operator

    def _mv(self, v):
        return self.operator._rmv(v)

    def _rmv(self, v):
        return self.operator._mv(v)

    def _mm(self, V):
        return self.operator._rmm(V)

    def _rmm(self, V):
        return self.operator._mm(V)

    def _adjoint(self):
        return self.operator

    def __repr__(self) -> str:
        return f"{self.operator!r}.H"
