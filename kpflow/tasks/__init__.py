"""Tasks from the KP-flow paper, as seeded, frozen-config batch generators.

>>> from kpflow.tasks import get_task
>>> task = get_task("memory_anti", input_noise_std=0.0)
>>> batch = task.sample(16, seed=0)
>>> tuple(batch.inputs.shape), tuple(batch.targets.shape)
((16, 30, 3), (16, 30, 3))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from .base import SeedLike, Task, TaskBatch, make_rng, masked_mse
from .flip_flop import FlipFlop, flip_flop_targets
from .memory_pro import MEMORY_INPUT_CHANNELS, MEMORY_OUTPUT_CHANNELS, MemoryPro
from .multitask import SUBTASK_NAMES, MultiTask
from .neurogym_adapter import NeurogymTask

__all__ = [
    "SeedLike",
    "Task",
    "TaskBatch",
    "masked_mse",
    "make_rng",
    "MemoryPro",
    "MEMORY_INPUT_CHANNELS",
    "MEMORY_OUTPUT_CHANNELS",
    "FlipFlop",
    "flip_flop_targets",
    "MultiTask",
    "SUBTASK_NAMES",
    "NeurogymTask",
    "TASK_NAMES",
    "get_task",
]

# name -> (class, fields the name fixes)
_REGISTRY: dict[str, tuple[Callable[..., Task], dict[str, Any]]] = {
    "memory_pro": (MemoryPro, {"anti": False, "variant": "memory"}),
    "memory_anti": (MemoryPro, {"anti": True, "variant": "memory"}),
    "delay_pro": (MemoryPro, {"anti": False, "variant": "delay"}),
    "delay_anti": (MemoryPro, {"anti": True, "variant": "delay"}),
    "flip_flop": (FlipFlop, {}),
    "multitask": (MultiTask, {}),
}

#: Names accepted by :func:`get_task`.
TASK_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_task(name: str, **overrides: Any) -> Task:
    """Build a task by name, with configuration overrides.

    Parameters
    ----------
    name : str
        One of :data:`TASK_NAMES`: ``"memory_pro"``, ``"memory_anti"``,
        ``"delay_pro"``, ``"delay_anti"``, ``"flip_flop"``, ``"multitask"``.
    **overrides
        Values for the config fields of the task class (e.g.
        ``memory_steps=20``, ``input_noise_std=0.0``).

    Returns
    -------
    Task
        A frozen config object with ``sample``, ``evaluation_batch`` and
        ``accuracy``.

    Raises
    ------
    ValueError
        Unknown ``name``, or an override contradicting the name (e.g.
        ``get_task("memory_pro", anti=True)``).
    TypeError
        An override that is not a field of the task class.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown task name {name!r}; valid names: {TASK_NAMES}")
    cls, fixed = _REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(
            f"get_task({name!r}): unknown override(s) {unknown}; valid fields: {sorted(fields)}"
        )
    for key, value in fixed.items():
        if key in overrides and overrides[key] != value:
            raise ValueError(
                f"get_task({name!r}) fixes {key}={value!r}; got {key}={overrides[key]!r} "
                "(pick the task name that matches instead)"
            )
    return cls(**{**overrides, **fixed})
