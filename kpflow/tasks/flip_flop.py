"""The n-bit flip-flop task of Sussillo & Barak (2013), "Opening the black box:
low-dimensional dynamics in high-dimensional recurrent neural networks"."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import Task, TaskBatch, _check_outputs, _NumpyBatch, check_float, check_int

__all__ = ["FlipFlop", "flip_flop_targets"]


def flip_flop_targets(pulses: np.ndarray) -> np.ndarray:
    """Hold the sign of the last nonzero pulse, per trial and channel.

    Parameters
    ----------
    pulses : numpy.ndarray
        ``[B, T, C]`` array of pulses in {-1, 0, +1}.

    Returns
    -------
    numpy.ndarray
        ``[B, T, C]`` float array: ``sign(pulses[b, s, c])`` for the last
        ``s <= t`` with a nonzero pulse, 0 before the first pulse.
    """
    pulses = np.asarray(pulses)
    if pulses.ndim != 3:
        raise ValueError(f"pulses must have shape [B, T, C], got {pulses.shape}")
    T = pulses.shape[1]
    steps = np.arange(T)[None, :, None]
    last = np.maximum.accumulate(np.where(pulses != 0, steps, -1), axis=1)  # [B, T, C]
    held = np.take_along_axis(np.sign(pulses), np.maximum(last, 0), axis=1)
    return np.where(last >= 0, held, 0).astype(np.float64)


@dataclass(frozen=True, kw_only=True)
class FlipFlop(Task):
    """n-bit flip-flop: remember the sign of the last pulse on each channel.

    Parameters
    ----------
    n_channels : int, default 3
        Number of independent bits (input and output channels).
    n_steps : int, default 50
        Trial length ``T``.
    pulse_prob : float, default 0.05
        Probability of a pulse per step per channel; each pulse is +1 or -1
        with equal probability.
    input_noise_std : float, default 0.0
        Standard deviation of i.i.d. Gaussian noise added to every input
        entry (the targets are computed from the clean pulses).
    eval_seed : int
        Fixes :meth:`evaluation_batch`.

    Notes
    -----
    With pulses :math:`u_{t,c} \\in \\{-1, 0, 1\\}`, the target is

    .. math:: y_{t,c} = u_{s,c},\\quad s = \\max\\{s' \\le t : u_{s',c} \\ne 0\\},

    and :math:`y_{t,c} = 0` before the first pulse of channel ``c``. The loss
    mask is ``[B, T, 1]`` of ones. ``batch.info["pulses"]`` holds the clean
    pulses ``[B, T, C]``.

    Examples
    --------
    >>> task = FlipFlop(n_channels=2, n_steps=20)
    >>> batch = task.sample(4, seed=1)
    >>> tuple(batch.targets.shape)
    (4, 20, 2)
    """

    n_channels: int = 3
    n_steps: int = 50  # type: ignore[assignment]
    pulse_prob: float = 0.05
    input_noise_std: float = 0.0
    eval_seed: int = 2507_06381

    name = "flip_flop"

    def __post_init__(self) -> None:
        check_int(self.n_channels, "n_channels")
        check_int(self.n_steps, "n_steps")
        check_float(self.pulse_prob, "pulse_prob", minimum=0.0, maximum=1.0)
        check_float(self.input_noise_std, "input_noise_std", minimum=0.0)
        check_int(self.eval_seed, "eval_seed", minimum=0)

    @property
    def input_size(self) -> int:
        """``n_channels``."""
        return self.n_channels

    @property
    def output_size(self) -> int:
        """``n_channels``."""
        return self.n_channels

    def _generate(self, rng: np.random.Generator, batch_size: int) -> _NumpyBatch:
        shape = (batch_size, self.n_steps, self.n_channels)
        occurs = rng.random(shape) < self.pulse_prob
        signs = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
        pulses = np.where(occurs, signs, 0.0)
        targets = flip_flop_targets(pulses)
        inputs = pulses.astype(np.float64)
        if self.input_noise_std > 0:
            inputs = inputs + self.input_noise_std * rng.standard_normal(shape)
        mask = np.ones((batch_size, self.n_steps, 1))
        return _NumpyBatch(inputs=inputs, targets=targets, mask=mask,
                           info={"pulses": pulses})

    def accuracy(self, outputs: torch.Tensor, batch: TaskBatch) -> float:
        """Fraction of entries with the right sign, among nonzero targets.

        Counts ``(trial, step, channel)`` with ``target != 0`` and
        ``sign(output) == target``. Returns NaN if no target is nonzero (no
        pulse in the whole batch).
        """
        _check_outputs(outputs, batch)
        with torch.no_grad():
            target = batch.targets
            held = target != 0
            hits = (torch.sign(outputs.detach()) == target) & held
            return float(hits.sum().to(torch.float64) / held.sum().to(torch.float64))
