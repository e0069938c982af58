"""The Memory-Pro family: Memory-Pro, Memory-Anti, Delay-Pro, Delay-Anti.

After Yang et al. (2019), "Task representations in neural networks trained to
perform many cognitive tasks", and Driscoll et al. (2024), "Flexible multitask
computation in recurrent networks utilizes shared dynamical motifs", as used
in the KP-flow paper (Hazelden et al. 2025, arXiv 2507.06381).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .base import (
    Task,
    TaskBatch,
    _check_outputs,
    _NumpyBatch,
    check_duration,
    check_float,
    check_int,
)

__all__ = ["MemoryPro", "MEMORY_INPUT_CHANNELS", "MEMORY_OUTPUT_CHANNELS"]

#: Names of the three Memory-Pro input channels, in order.
MEMORY_INPUT_CHANNELS = ("fixation", "stimulus_cos", "stimulus_sin")
#: Names of the three Memory-Pro output channels, in order.
MEMORY_OUTPUT_CHANNELS = ("fixation", "response_cos", "response_sin")

_DEFAULT_NOISE_STD = 0.1 * math.sqrt(2.0)


@dataclass(frozen=True, kw_only=True)
class _MemoryFamily(Task):
    """Fields and trial generation shared by :class:`MemoryPro` and
    :class:`~kpflow.tasks.multitask.MultiTask` (see :class:`MemoryPro`)."""

    fixation_steps: int | tuple[int, int] = 0
    stimulus_steps: int | tuple[int, int] = 10
    memory_steps: int | tuple[int, int] = 10
    response_steps: int = 10
    response_grace_steps: int = 0
    stimulus_amplitude: float = 1.0
    input_noise_std: float = _DEFAULT_NOISE_STD
    accuracy_tolerance: float = math.pi / 10
    fixation_threshold: float = 0.5
    response_magnitude_threshold: float = 0.5
    eval_seed: int = 2507_06381

    def __post_init__(self) -> None:
        check_duration(self.fixation_steps, "fixation_steps", minimum=0)
        check_duration(self.stimulus_steps, "stimulus_steps")
        check_duration(self.memory_steps, "memory_steps")
        check_int(self.response_steps, "response_steps")
        check_int(self.response_grace_steps, "response_grace_steps", minimum=0)
        if self.response_grace_steps >= self.response_steps:
            raise ValueError(
                "response_grace_steps must be < response_steps "
                f"({self.response_steps}), got {self.response_grace_steps}"
            )
        check_float(self.stimulus_amplitude, "stimulus_amplitude", minimum=0.0, strict_minimum=True)
        check_float(self.input_noise_std, "input_noise_std", minimum=0.0)
        check_float(self.accuracy_tolerance, "accuracy_tolerance", minimum=0.0,
                    maximum=math.pi, strict_minimum=True)
        check_float(self.fixation_threshold, "fixation_threshold")
        check_float(self.response_magnitude_threshold, "response_magnitude_threshold", minimum=0.0)
        check_int(self.eval_seed, "eval_seed", minimum=0)

    # ------------------------------------------------------------------ sizes
    @property
    def output_size(self) -> int:
        """3: fixation output, cos and sin of the response angle."""
        return 3

    @property
    def n_steps(self) -> int:
        """``T`` = max fixation + max stimulus + max memory + response steps."""
        return (
            check_duration(self.fixation_steps, "fixation_steps", minimum=0)[1]
            + check_duration(self.stimulus_steps, "stimulus_steps")[1]
            + check_duration(self.memory_steps, "memory_steps")[1]
            + self.response_steps
        )

    # ------------------------------------------------------------- generation
    def _draw_duration(self, rng: np.random.Generator, value: int | tuple[int, int],
                       name: str, batch_size: int, minimum: int) -> np.ndarray:
        low, high = check_duration(value, name, minimum=minimum)
        if low == high:
            return np.full(batch_size, low, dtype=np.int64)
        return rng.integers(low, high + 1, size=batch_size, dtype=np.int64)

    def _family_arrays(self, rng: np.random.Generator, anti: np.ndarray,
                       delay: np.ndarray) -> _NumpyBatch:
        """Trials with per-trial ``anti`` and ``delay`` flags (bool ``[B]``).

        Random draws, in order: durations (only the randomised ones), stimulus
        angles, input noise. So a noise-free config and a noisy one with the
        same seed share angles and periods.
        """
        B = anti.shape[0]
        T = self.n_steps
        fix = self._draw_duration(rng, self.fixation_steps, "fixation_steps", B, 0)
        stim = self._draw_duration(rng, self.stimulus_steps, "stimulus_steps", B, 1)
        mem = self._draw_duration(rng, self.memory_steps, "memory_steps", B, 1)
        stim_on = fix
        mem_on = fix + stim
        resp_on = mem_on + mem

        theta = rng.uniform(0.0, 2.0 * np.pi, size=B)
        target_angle = np.mod(theta + np.pi * anti, 2.0 * np.pi)

        t = np.arange(T)[None, :]
        before_response = t < resp_on[:, None]
        in_stimulus = (t >= stim_on[:, None]) & (t < mem_on[:, None])
        # Delay variant: the stimulus stays on from onset to the end of the
        # trial (through the delay and the response, as Yang et al.'s "Go").
        visible = in_stimulus | (delay[:, None] & (t >= stim_on[:, None]))
        in_response = ~before_response

        inputs = np.zeros((B, T, 3))
        inputs[..., 0] = before_response
        inputs[..., 1] = visible * (self.stimulus_amplitude * np.cos(theta))[:, None]
        inputs[..., 2] = visible * (self.stimulus_amplitude * np.sin(theta))[:, None]

        targets = np.zeros((B, T, 3))
        targets[..., 0] = before_response
        targets[..., 1] = in_response * np.cos(target_angle)[:, None]
        targets[..., 2] = in_response * np.sin(target_angle)[:, None]

        grace = (t >= resp_on[:, None]) & (t < resp_on[:, None] + self.response_grace_steps)
        mask = (~grace).astype(np.float64)[..., None]

        if self.input_noise_std > 0:
            inputs = inputs + self.input_noise_std * rng.standard_normal(inputs.shape)

        info = {
            "stimulus_angle": theta,
            "target_angle": target_angle,
            "stimulus_onset": stim_on,
            "memory_onset": mem_on,
            "response_onset": resp_on,
            "anti": anti.astype(bool),
            "delay": delay.astype(bool),
        }
        return _NumpyBatch(inputs=inputs, targets=targets, mask=mask, info=info)

    # --------------------------------------------------------------- accuracy
    def trial_correct(self, outputs: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        """Per-trial success (bool ``[B]``) under the rule of :meth:`accuracy`."""
        _check_outputs(outputs, batch)
        for key in ("response_onset", "target_angle"):
            if key not in batch.info:
                raise ValueError(
                    f"batch.info lacks {key!r}: the batch was not made by a "
                    "Memory-Pro-family task"
                )
        with torch.no_grad():
            out = outputs.detach()
            B, T, _ = out.shape
            t = torch.arange(T, device=out.device)[None, :]
            resp_on = batch.info["response_onset"].to(out.device)[:, None]
            before = t < resp_on                                            # [B, T]
            scored = t >= resp_on + self.response_grace_steps               # [B, T]
            fix_ok = torch.where(before, out[..., 0] > self.fixation_threshold,
                                 torch.ones_like(before)).all(dim=1)
            w = scored.to(out.dtype)
            n = w.sum(dim=1)
            mean_fix = (w * out[..., 0]).sum(dim=1) / n
            mean_cos = (w * out[..., 1]).sum(dim=1) / n
            mean_sin = (w * out[..., 2]).sum(dim=1) / n
            released = mean_fix < self.fixation_threshold
            magnitude_ok = torch.hypot(mean_cos, mean_sin) >= self.response_magnitude_threshold
            angle = torch.atan2(mean_sin, mean_cos)
            target = batch.info["target_angle"].to(device=out.device, dtype=out.dtype)
            err = torch.remainder(angle - target + math.pi, 2 * math.pi) - math.pi
            angle_ok = err.abs() < self.accuracy_tolerance
            return fix_ok & released & magnitude_ok & angle_ok

    def accuracy(self, outputs: torch.Tensor, batch: TaskBatch) -> float:
        """Fraction of correct trials.

        A trial is correct when all of the following hold:

        1. the fixation output (channel 0) is ``> fixation_threshold`` at
           every step before response onset;
        2. its mean over the scored response steps (the response period
           minus the first ``response_grace_steps``) is
           ``< fixation_threshold`` (fixation released);
        3. the mean response vector ``(mean cos, mean sin)`` over the scored
           response steps has norm ``>= response_magnitude_threshold``;
        4. its angle is within ``accuracy_tolerance`` of the target angle
           (θ for pro, θ + π for anti), measured on the circle.
        """
        return float(self.trial_correct(outputs, batch).to(torch.float64).mean())


@dataclass(frozen=True, kw_only=True)
class MemoryPro(_MemoryFamily):
    """Memory-Pro / Memory-Anti / Delay-Pro / Delay-Anti task.

    Parameters
    ----------
    anti : bool, default False
        Respond in the opposite direction (target angle θ + π).
    variant : {"memory", "delay"}, default "memory"
        ``"memory"``: the stimulus is shown only during the stimulus period
        and must be remembered through the memory period. ``"delay"``: the
        stimulus stays on from its onset to the end of the trial.
    fixation_steps : int or (int, int), default 0
        Optional fixation-only period before the stimulus (0 = none).
    stimulus_steps, memory_steps : int or (int, int), default 10
        Period durations in steps. A ``(low, high)`` tuple draws each trial's
        duration uniformly from ``low..high`` (inclusive).
    response_steps : int, default 10
        Minimum length of the response period. The response period runs from
        response onset to the end of the trial, so with randomised durations
        it is longer for trials with shorter earlier periods.
    response_grace_steps : int, default 0
        The first ``response_grace_steps`` response steps get loss weight 0
        and are not scored by :meth:`accuracy`.
    stimulus_amplitude : float, default 1.0
        Amplitude of the cos/sin stimulus inputs.
    input_noise_std : float, default 0.1·√2 ≈ 0.141
        Standard deviation of the i.i.d. Gaussian noise added to every input
        channel at every step. The default is 0.1·√2, the value of the
        KP-flow paper's code (σ = 0.1 scaled by √2 as in Yang et al.'s
        ``sqrt(2/α)·σ`` convention with α = 1). Set 0 for clean inputs.
    accuracy_tolerance : float, default π/10
        Largest accepted angular error (radians) of the response.
    fixation_threshold : float, default 0.5
        Threshold on the fixation output (see :meth:`accuracy`).
    response_magnitude_threshold : float, default 0.5
        Smallest accepted norm of the mean response vector (set 0 to score
        the angle alone).
    eval_seed : int
        Fixes :meth:`evaluation_batch`.

    Notes
    -----
    Channels. Inputs ``[fixation, cos θ, sin θ]``; outputs
    ``[fixation, cos φ, sin φ]`` with φ = θ (pro) or θ + π (anti),
    θ ~ U[0, 2π) per trial. With response onset :math:`t_r`:

    .. math::
        u^{fix}_t = y^{fix}_t = 1[t < t_r], \\qquad
        (y^{cos}_t, y^{sin}_t) = 1[t \\ge t_r] (\\cos φ, \\sin φ),

    the stimulus inputs are :math:`A(\\cos θ, \\sin θ)` while the stimulus is
    visible and 0 otherwise, and every input channel gets
    :math:`σ ξ_{t}`, :math:`ξ ∼ N(0, 1)` i.i.d. The loss mask is
    ``[B, T, 1]``: 1 everywhere except the grace steps.
    ``batch.info`` holds per-trial ``stimulus_angle``, ``target_angle``,
    ``stimulus_onset``, ``memory_onset``, ``response_onset`` (step indices;
    fixation is ``[0, stimulus_onset)``), ``anti`` and ``delay``.

    Examples
    --------
    >>> task = MemoryPro(anti=True, input_noise_std=0.0)
    >>> batch = task.sample(8, seed=0)
    >>> tuple(batch.inputs.shape), task.n_steps
    ((8, 30, 3), 30)
    """

    anti: bool = False
    variant: Literal["memory", "delay"] = "memory"

    def __post_init__(self) -> None:
        if not isinstance(self.anti, (bool, np.bool_)):
            raise TypeError(f"anti must be a bool, got {self.anti!r}")
        if self.variant not in ("memory", "delay"):
            raise ValueError(f"variant must be 'memory' or 'delay', got {self.variant!r}")
        super().__post_init__()

    @property
    def name(self) -> str:  # type: ignore[override]
        """Registry name: ``memory_pro``, ``memory_anti``, ``delay_pro`` or ``delay_anti``."""
        return f"{self.variant}_{'anti' if self.anti else 'pro'}"

    @property
    def input_size(self) -> int:
        """3: fixation, cos θ, sin θ."""
        return 3

    def _generate(self, rng: np.random.Generator, batch_size: int) -> _NumpyBatch:
        anti = np.full(batch_size, bool(self.anti))
        delay = np.full(batch_size, self.variant == "delay")
        return self._family_arrays(rng, anti, delay)
