"""A mix of the four Memory-Pro-family tasks with a one-hot context cue."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import TaskBatch, _NumpyBatch
from .memory_pro import _MemoryFamily

__all__ = ["MultiTask", "SUBTASK_NAMES"]

#: The sub-tasks of :class:`MultiTask`, in cue order by default.
SUBTASK_NAMES: tuple[str, ...] = ("memory_pro", "memory_anti", "delay_pro", "delay_anti")

_FLAGS = {  # name -> (anti, delay)
    "memory_pro": (False, False),
    "memory_anti": (True, False),
    "delay_pro": (False, True),
    "delay_anti": (True, True),
}


@dataclass(frozen=True, kw_only=True)
class MultiTask(_MemoryFamily):
    """Memory-Pro, Memory-Anti, Delay-Pro and Delay-Anti trials, mixed.

    Every field of :class:`~kpflow.tasks.MemoryPro` except ``anti`` and
    ``variant`` is accepted and shared by all sub-tasks, plus:

    Parameters
    ----------
    subtasks : tuple of str, default ``SUBTASK_NAMES``
        The sub-tasks to mix, in cue order (any non-empty subset of
        ``("memory_pro", "memory_anti", "delay_pro", "delay_anti")``).

    Notes
    -----
    Inputs are ``[fixation, cos θ, sin θ, cue_0, ..., cue_{K-1}]`` with
    ``K = len(subtasks)``: the three Memory-Pro channels (noise included)
    followed by a noise-free one-hot cue of the trial's sub-task, on at every
    step. Outputs and loss mask are those of the sub-task.

    Sub-tasks are balanced: in a batch of ``B`` trials every sub-task gets
    ``floor(B/K)`` or ``ceil(B/K)`` trials, at random positions.
    ``batch.groups[b]`` is the index of trial ``b``'s sub-task in
    :attr:`subtask_names`. :meth:`accuracy` uses the Memory-Pro rule per
    trial; :meth:`accuracy_by_subtask` reports it per sub-task.

    Examples
    --------
    >>> task = MultiTask(input_noise_std=0.0)
    >>> batch = task.sample(8, seed=0)
    >>> tuple(batch.inputs.shape), batch.groups.bincount().tolist()
    ((8, 30, 7), [2, 2, 2, 2])
    """

    subtasks: tuple[str, ...] = SUBTASK_NAMES

    name = "multitask"

    def __post_init__(self) -> None:
        if not isinstance(self.subtasks, tuple) or len(self.subtasks) == 0:
            raise TypeError(
                f"subtasks must be a non-empty tuple of names from {SUBTASK_NAMES}, "
                f"got {self.subtasks!r}"
            )
        unknown = [s for s in self.subtasks if s not in _FLAGS]
        if unknown:
            raise ValueError(f"subtasks has unknown names {unknown}; valid: {SUBTASK_NAMES}")
        if len(set(self.subtasks)) != len(self.subtasks):
            raise ValueError(f"subtasks must not repeat a name, got {self.subtasks!r}")
        super().__post_init__()

    @property
    def subtask_names(self) -> tuple[str, ...]:
        """Sub-task names; ``groups`` and the cue index into this tuple."""
        return self.subtasks

    @property
    def input_size(self) -> int:
        """3 Memory-Pro channels + one cue channel per sub-task."""
        return 3 + len(self.subtasks)

    def _generate(self, rng: np.random.Generator, batch_size: int) -> _NumpyBatch:
        K = len(self.subtasks)
        groups = rng.permutation(np.arange(batch_size) % K)
        anti = np.array([_FLAGS[s][0] for s in self.subtasks])[groups]
        delay = np.array([_FLAGS[s][1] for s in self.subtasks])[groups]
        base = self._family_arrays(rng, anti, delay)
        cue = np.zeros((batch_size, self.n_steps, K))
        cue[np.arange(batch_size), :, groups] = 1.0
        base.inputs = np.concatenate([base.inputs, cue], axis=-1)
        base.groups = groups.astype(np.int64)
        return base

    def accuracy_by_subtask(self, outputs: torch.Tensor, batch: TaskBatch) -> dict[str, float]:
        """Accuracy (rule of :meth:`accuracy`) of each sub-task's trials.

        A sub-task absent from the batch gets NaN.
        """
        if batch.groups is None:
            raise ValueError("batch.groups is None: the batch was not made by MultiTask")
        correct = self.trial_correct(outputs, batch).to(torch.float64)
        groups = batch.groups.to(correct.device)
        result = {}
        for k, name in enumerate(self.subtasks):
            sel = groups == k
            n = int(sel.sum())
            result[name] = float(correct[sel].mean()) if n > 0 else float("nan")
        return result
