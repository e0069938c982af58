"""Common interface of kpflow's tasks: the :class:`TaskBatch` container, the
:class:`Task` base class, the :func:`masked_mse` loss and seed handling.

Every task is a small frozen dataclass (its configuration) that also knows how
to generate trials from a seed. Trials are generated in NumPy (float64) from a
:class:`numpy.random.Generator` and converted once to torch tensors of the
requested dtype and device, so the same seed gives bit-identical batches on
every device.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch

__all__ = [
    "SeedLike",
    "TaskBatch",
    "Task",
    "masked_mse",
    "make_rng",
]

#: Everything a ``seed=`` argument accepts.
SeedLike = Union[None, int, np.random.Generator, torch.Generator]

# Extra entropy word that separates the evaluation stream from every stream a
# user can reach with ``sample(seed=<int>)``: ``default_rng(k)`` and
# ``default_rng([k, _EVAL_STREAM])`` are different SeedSequences.
_EVAL_STREAM = 0x6B70_6576  # "kpev"


# --------------------------------------------------------------------------
# argument validation (shared by the task modules)
# --------------------------------------------------------------------------
def check_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` as a Python int, or raise naming the argument.

    Booleans and non-integral numbers are rejected (``3.0`` is not a count).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an int >= {minimum}, got {value!r} "
            f"(type {type(value).__name__})"
        )
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def check_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
) -> float:
    """Return ``value`` as a finite float inside the given bounds, or raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None:
        if strict_minimum and value <= minimum:
            raise ValueError(f"{name} must be > {minimum}, got {value}")
        if not strict_minimum and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_duration(value: Any, name: str, *, minimum: int = 1) -> tuple[int, int]:
    """Normalise a duration given as ``int`` (fixed) or ``(low, high)``.

    Returns the inclusive range ``(low, high)``; a fixed duration gives
    ``low == high``.
    """
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(
                f"{name} must be an int or a (low, high) tuple of ints, got {value!r}"
            )
        low = check_int(value[0], f"{name}[0]", minimum=minimum)
        high = check_int(value[1], f"{name}[1]", minimum=minimum)
        if high < low:
            raise ValueError(f"{name} must satisfy low <= high, got {value!r}")
        return low, high
    if isinstance(value, list):
        raise TypeError(
            f"{name} must be an int or a (low, high) tuple (not a list: configs "
            f"are immutable), got {value!r}"
        )
    fixed = check_int(value, name, minimum=minimum)
    return fixed, fixed


def check_float_dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    """Return ``dtype`` if it is a floating torch dtype, else raise."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            f"{name} must be a floating torch.dtype (e.g. torch.float32 or "
            f"torch.float64), got {dtype!r}"
        )
    return dtype


def make_rng(seed: SeedLike) -> np.random.Generator:
    """Turn any accepted ``seed`` into a :class:`numpy.random.Generator`.

    Parameters
    ----------
    seed : None, int, numpy.random.Generator or torch.Generator
        ``None`` draws fresh OS entropy (not reproducible); an ``int >= 0``
        seeds a new generator (reproducible); a NumPy generator is used as is
        (and advanced); a torch generator is advanced by one draw of a 63-bit
        integer that seeds a new NumPy generator (reproducible given the torch
        generator's state).
    """
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, torch.Generator):
        word = torch.randint(
            0, 2**62, (1,), generator=seed, device=seed.device, dtype=torch.int64
        )
        return np.random.default_rng(int(word.cpu()))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            "seed must be None, a non-negative int, a numpy.random.Generator "
            f"or a torch.Generator, got {seed!r} (type {type(seed).__name__})"
        )
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    return np.random.default_rng(int(seed))


def evaluation_rng(eval_seed: int) -> np.random.Generator:
    """The generator of a task's held-out evaluation stream."""
    return np.random.default_rng([int(eval_seed), _EVAL_STREAM])


# --------------------------------------------------------------------------
# the batch container
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TaskBatch:
    """One batch of trials, batch-first.

    Attributes
    ----------
    inputs : torch.Tensor
        ``[B, T, I]`` inputs to the recurrent model.
    targets : torch.Tensor
        ``[B, T, O]`` desired readout outputs.
    mask : torch.Tensor
        ``[B, T, O]`` or ``[B, T, 1]`` loss weights (0/1 for the built-in
        tasks), same dtype and device as ``inputs``.
    groups : torch.Tensor or None
        ``[B]`` int64 trial-group labels (the sub-task of each trial), or None.
    info : dict
        Task-specific per-trial metadata (stimulus angles, period onsets, ...).
        Tensors in it live on the batch's device.

    Notes
    -----
    Equality is identity (``eq=False``): compare tensors explicitly.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    groups: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("inputs", "targets", "mask"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"TaskBatch.{name} must be a torch.Tensor, got {type(value).__name__}")
            if value.ndim != 3:
                raise ValueError(
                    f"TaskBatch.{name} must have shape [B, T, *] (3 dims), got {tuple(value.shape)}"
                )
        B, T, _ = self.inputs.shape
        if self.targets.shape[:2] != (B, T):
            raise ValueError(
                f"TaskBatch.targets must have shape [B={B}, T={T}, O], got {tuple(self.targets.shape)}"
            )
        O = self.targets.shape[2]
        if self.mask.shape[:2] != (B, T) or self.mask.shape[2] not in (1, O):
            raise ValueError(
                f"TaskBatch.mask must have shape [B={B}, T={T}, {O}] or [B, T, 1], "
                f"got {tuple(self.mask.shape)}"
            )
        for name in ("targets", "mask"):
            value = getattr(self, name)
            if value.dtype != self.inputs.dtype or value.device != self.inputs.device:
                raise ValueError(
                    f"TaskBatch.{name} must have the dtype/device of inputs "
                    f"({self.inputs.dtype}, {self.inputs.device}), got ({value.dtype}, {value.device})"
                )
        if self.groups is not None:
            if not isinstance(self.groups, torch.Tensor) or self.groups.dtype != torch.int64:
                raise TypeError("TaskBatch.groups must be an int64 torch.Tensor or None")
            if tuple(self.groups.shape) != (B,):
                raise ValueError(
                    f"TaskBatch.groups must have shape [B={B}], got {tuple(self.groups.shape)}"
                )
        if not isinstance(self.info, dict):
            raise TypeError(f"TaskBatch.info must be a dict, got {type(self.info).__name__}")

    @property
    def batch_size(self) -> int:
        """Number of trials ``B``."""
        return int(self.inputs.shape[0])

    @property
    def n_steps(self) -> int:
        """Number of time steps ``T``."""
        return int(self.inputs.shape[1])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "TaskBatch":
        """Return a copy on ``device`` with floating tensors cast to ``dtype``.

        Integer and boolean tensors (``groups``, onsets in ``info``) keep
        their dtype.
        """
        if dtype is not None:
            check_float_dtype(dtype)

        def move(x: Any) -> Any:
            if not isinstance(x, torch.Tensor):
                return x
            if x.is_floating_point() and dtype is not None:
                return x.to(device=device, dtype=dtype)
            return x.to(device=device)

        return TaskBatch(
            inputs=move(self.inputs),
            targets=move(self.targets),
            mask=move(self.mask),
            groups=move(self.groups),
            info={k: move(v) for k, v in self.info.items()},
        )


def _check_outputs(outputs: torch.Tensor, batch: TaskBatch) -> None:
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(f"outputs must be a torch.Tensor, got {type(outputs).__name__}")
    if not isinstance(batch, TaskBatch):
        raise TypeError(f"batch must be a TaskBatch, got {type(batch).__name__}")
    if outputs.shape != batch.targets.shape:
        raise ValueError(
            f"outputs must have the shape of batch.targets {tuple(batch.targets.shape)} "
            f"([B, T, O]), got {tuple(outputs.shape)}"
        )
    if outputs.device != batch.targets.device:
        raise ValueError(
            f"outputs are on {outputs.device} but the batch is on {batch.targets.device}"
        )


def masked_mse(outputs: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """Mean squared error over the masked entries.

    Parameters
    ----------
    outputs : torch.Tensor
        ``[B, T, O]`` readout outputs, same shape and device as
        ``batch.targets``.
    batch : TaskBatch
        Supplies ``targets`` and ``mask``.

    Returns
    -------
    torch.Tensor
        Scalar loss, differentiable with respect to ``outputs``.

    Notes
    -----
    With mask :math:`m` broadcast to ``[B, T, O]``,

    .. math:: L = \\frac{\\sum_{b,t,o} m_{bto} (y_{bto} - \\hat y_{bto})^2}
                       {\\sum_{b,t,o} m_{bto}}.

    The denominator counts broadcast entries, so a ``[B, T, 1]`` mask of ones
    gives the plain mean. The function has no data-dependent Python control
    flow, so it can be used inside ``torch.func`` transforms. A batch whose
    mask is all zero gives NaN.
    """
    _check_outputs(outputs, batch)
    mask = batch.mask.to(outputs.dtype).expand_as(outputs)
    sq = (outputs - batch.targets.to(outputs.dtype)) ** 2
    return (mask * sq).sum() / mask.sum()


# --------------------------------------------------------------------------
# the task interface
# --------------------------------------------------------------------------
@dataclass
class _NumpyBatch:
    """A batch as float64/int64 NumPy arrays before conversion to torch."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    groups: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def to_torch(self, dtype: torch.dtype, device: torch.device) -> TaskBatch:
        def conv(x: Any) -> Any:
            if not isinstance(x, np.ndarray):
                return x
            if x.dtype == np.bool_:
                return torch.as_tensor(x, device=device)
            if np.issubdtype(x.dtype, np.integer):
                return torch.as_tensor(x.astype(np.int64), device=device)
            return torch.as_tensor(x, dtype=dtype, device=device)

        return TaskBatch(
            inputs=conv(self.inputs),
            targets=conv(self.targets),
            mask=conv(self.mask),
            groups=None if self.groups is None else conv(self.groups.astype(np.int64)),
            info={k: conv(v) for k, v in self.info.items()},
        )


class Task(ABC):
    """Base class of every kpflow task.

    Subclasses are frozen dataclasses (the configuration) that implement
    ``input_size``, ``output_size``, ``n_steps``, ``_generate`` and
    ``accuracy``; the base class supplies seeded sampling, the fixed
    evaluation batch and the loss.
    """

    #: registry name of the task, e.g. ``"memory_pro"``
    name: str = "task"

    @property
    @abstractmethod
    def input_size(self) -> int:
        """Number of input channels ``I``."""

    @property
    @abstractmethod
    def output_size(self) -> int:
        """Number of output channels ``O``."""

    @property
    @abstractmethod
    def n_steps(self) -> int:
        """Number of time steps ``T`` of every trial."""

    @abstractmethod
    def _generate(self, rng: np.random.Generator, batch_size: int) -> _NumpyBatch:
        """Draw ``batch_size`` trials from ``rng`` (float64 NumPy arrays)."""

    @abstractmethod
    def accuracy(self, outputs: torch.Tensor, batch: TaskBatch) -> float:
        """Task-appropriate success rate of ``outputs`` on ``batch``, in [0, 1]."""

    def sample(
        self,
        batch_size: int,
        *,
        seed: SeedLike = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> TaskBatch:
        """Draw a batch of trials.

        Parameters
        ----------
        batch_size : int
            Number of trials ``B`` (positive).
        seed : None, int, numpy.random.Generator or torch.Generator, optional
            Source of randomness; the same int seed gives identical tensors.
            See :func:`make_rng`.
        dtype : torch.dtype, optional
            Floating dtype of inputs, targets, mask and float info entries.
        device : torch.device or str, optional
            Device of every tensor of the batch.

        Returns
        -------
        TaskBatch
        """
        batch_size = check_int(batch_size, "batch_size")
        dtype = check_float_dtype(dtype)
        device = torch.device(device)
        return self._generate(make_rng(seed), batch_size).to_torch(dtype, device)

    def evaluation_batch(
        self,
        batch_size: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> TaskBatch:
        """The held-out evaluation batch, identical on every call.

        It is drawn from a stream fixed by the configuration's ``eval_seed``
        and separated from every stream ``sample(seed=<int>)`` can reach.
        A larger ``batch_size`` is a different batch (not an extension).
        """
        batch_size = check_int(batch_size, "batch_size")
        dtype = check_float_dtype(dtype)
        device = torch.device(device)
        seed = getattr(self, "eval_seed")
        return self._generate(evaluation_rng(seed), batch_size).to_torch(dtype, device)

    def loss(self, outputs: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        """The task's training loss, :func:`masked_mse`."""
        return masked_mse(outputs, batch)
