"""Thread limits around SciPy solvers (PITFALLS 13)."""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["blas_threads"]


@contextlib.contextmanager
def blas_threads(limit: int | None) -> Iterator[None]:
    """Limit the BLAS thread pools of NumPy/SciPy to ``limit`` threads inside the block.

    Parameters
    ----------
    limit : int or None
        Maximum number of BLAS threads; ``None`` leaves them alone.

    Notes
    -----
    SciPy's ARPACK calls BLAS on vectors of length n between products with
    the operator, and torch runs the products on its own thread pool. On small
    machines the two pools oversubscribe the cores and ``eigsh`` runs several
    times slower; one BLAS thread is usually fastest. Only the ``blas`` API of
    threadpoolctl is limited, which covers NumPy's and SciPy's OpenBLAS, not
    torch's intra-op pool.
    """
    if limit is None:
        yield
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"blas_threads: expected a positive int or None, got {limit!r}")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=limit, user_api="blas"):
        yield
