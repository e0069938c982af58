"""Use a `neurogym <https://github.com/neurogym/neurogym>`_ environment as a
kpflow task. neurogym is an optional dependency, imported only when a
:class:`NeurogymTask` is built."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import (
    SeedLike,
    Task,
    TaskBatch,
    _check_outputs,
    _NumpyBatch,
    check_float_dtype,
    check_int,
)

__all__ = ["NeurogymTask"]

_INSTALL_HINT = (
    "NeurogymTask needs the optional dependency 'neurogym', which is not "
    "installed. Install it with `pip install kpflow[neurogym]` "
    "(or `pip install neurogym`)."
)


def _import_neurogym() -> Any:
    try:
        import neurogym  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return neurogym


class NeurogymTask(Task):
    """A neurogym environment, sampled into frozen kpflow batches.

    Parameters
    ----------
    env : str or gym.Env
        A neurogym environment id (e.g. ``"PerceptualDecisionMaking-v0"``)
        or an environment object.
    batch_size : int
        Number of trials of the frozen batch.
    seq_len : int
        Number of steps ``T`` of every batch.
    seed : int, default 0
        Seeds the frozen batch (neurogym seeds environment ``i`` of the
        batch with ``seed + i``).
    env_kwargs : dict, optional
        Keyword arguments of the environment (only when ``env`` is a str).

    Notes
    -----
    At construction one batch is drawn with ``neurogym.Dataset`` and frozen
    (:attr:`batch`), so operators built on it stay deterministic;
    :meth:`evaluation_batch` returns (a prefix of) it. :meth:`sample` draws
    a new batch from a fresh ``Dataset`` seeded from its ``seed``.

    neurogym's supervised labels are action indices ``[B, T]``; the targets
    are their one-hot encoding ``[B, T, n_actions]`` (so the MSE loss
    applies) and ``batch.info["labels"]`` keeps the indices. The mask is
    ``[B, T, 1]`` of ones. Environments with continuous (Box) actions give
    the labels as float targets directly and have no :meth:`accuracy`.

    Raises
    ------
    ImportError
        If neurogym is not installed; the message says how to install it.
    """

    name = "neurogym"

    def __init__(
        self,
        env: Any,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        *,
        env_kwargs: dict | None = None,
    ) -> None:
        self._ngym = _import_neurogym()
        if not isinstance(env, str) and not hasattr(env, "observation_space"):
            raise TypeError(
                f"env must be a neurogym environment id (str) or a gym.Env, got {type(env).__name__}"
            )
        if env_kwargs is not None and not isinstance(env, str):
            raise ValueError("env_kwargs can only be given with an environment id (env a str)")
        self.env = env
        self.env_kwargs = dict(env_kwargs or {})
        self.seq_len = check_int(seq_len, "seq_len")
        self.seed = check_int(seed, "seed", minimum=0)
        self._batch_size = check_int(batch_size, "batch_size")
        frozen, n_actions, discrete = self._draw(self._batch_size, self.seed)
        self._frozen = frozen
        self._input_size = int(frozen.inputs.shape[-1])
        self._output_size = int(frozen.targets.shape[-1])
        self._n_actions = n_actions
        self._discrete = discrete

    # ------------------------------------------------------------------ sizes
    @property
    def input_size(self) -> int:
        """Observation size of the environment."""
        return self._input_size

    @property
    def output_size(self) -> int:
        """Number of actions (discrete) or action size (continuous)."""
        return self._output_size

    @property
    def n_steps(self) -> int:
        """``seq_len``."""
        return self.seq_len

    # ------------------------------------------------------------ generation
    def _draw(self, batch_size: int, seed: int) -> tuple[_NumpyBatch, int | None, bool]:
        kwargs: dict[str, Any] = dict(batch_size=batch_size, seq_len=self.seq_len, batch_first=True)
        if isinstance(self.env, str):
            kwargs["env_kwargs"] = self.env_kwargs
        dataset = self._ngym.Dataset(self.env, **kwargs)
        # Dataset fills its cache at construction with unseeded environments:
        # seed them, then refill the cache so the batch depends on ``seed`` only.
        dataset.seed(seed)
        if hasattr(dataset, "_cache"):
            dataset._cache()
        inputs, labels = dataset()
        inputs = np.asarray(inputs, dtype=np.float64)
        labels = np.asarray(labels)
        if inputs.ndim != 3 or inputs.shape[:2] != (batch_size, self.seq_len):
            raise RuntimeError(
                f"neurogym returned inputs of shape {inputs.shape}, expected "
                f"[{batch_size}, {self.seq_len}, n_obs]"
            )
        action_space = dataset.env.action_space
        n_actions = getattr(action_space, "n", None)
        discrete = n_actions is not None and labels.ndim == 2
        info: dict[str, Any] = {}
        if discrete:
            idx = labels.astype(np.int64)
            targets = np.zeros((batch_size, self.seq_len, int(n_actions)))
            np.put_along_axis(targets, idx[..., None], 1.0, axis=-1)
            info["labels"] = idx
        else:
            targets = labels.astype(np.float64).reshape(batch_size, self.seq_len, -1)
        mask = np.ones((batch_size, self.seq_len, 1))
        batch = _NumpyBatch(inputs=inputs, targets=targets, mask=mask, info=info)
        return batch, (int(n_actions) if n_actions is not None else None), discrete

    def _generate(self, rng: np.random.Generator, batch_size: int) -> _NumpyBatch:
        seed = int(rng.integers(0, 2**31 - 1 - batch_size))
        batch, _, _ = self._draw(batch_size, seed)
        return batch

    @property
    def batch(self) -> TaskBatch:
        """The frozen batch drawn at construction (float32, CPU)."""
        return self._frozen.to_torch(torch.float32, torch.device("cpu"))

    def sample(
        self,
        batch_size: int,
        *,
        seed: SeedLike = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> TaskBatch:
        """Draw a new batch from neurogym (a fresh ``Dataset`` seeded from ``seed``).

        Reproducible for a given int ``seed`` as far as the environment uses
        its own seeded random state.
        """
        return super().sample(batch_size, seed=seed, dtype=dtype, device=device)

    def evaluation_batch(
        self,
        batch_size: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> TaskBatch:
        """The frozen batch, or its first ``batch_size`` trials."""
        n = self._batch_size if batch_size is None else check_int(batch_size, "batch_size")
        if n > self._batch_size:
            raise ValueError(
                f"batch_size must be <= the frozen batch size {self._batch_size}, got {n}"
            )
        dtype = check_float_dtype(dtype)
        full = self._frozen.to_torch(dtype, torch.device(device))
        return TaskBatch(
            inputs=full.inputs[:n],
            targets=full.targets[:n],
            mask=full.mask[:n],
            groups=None,
            info={k: v[:n] for k, v in full.info.items()},
        )

    def accuracy(self, outputs: torch.Tensor, batch: TaskBatch) -> float:
        """Fraction of ``(trial, step)`` where ``argmax(outputs) == label``.

        Only for discrete action spaces; every step counts (including
        neurogym's fixation steps, label 0).
        """
        _check_outputs(outputs, batch)
        if "labels" not in batch.info:
            raise ValueError(
                "accuracy needs discrete labels (batch.info['labels']); this "
                "environment has continuous actions"
            )
        with torch.no_grad():
            pred = outputs.detach().argmax(dim=-1)
            labels = batch.info["labels"].to(pred.device)
            return float((pred == labels).to(torch.float64).mean())

