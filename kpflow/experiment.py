"""The main job: train a recurrent model on a task and follow K and P over training.

``run_experiment(config, out)`` trains with Adam or SGD and, at analysis
checkpoints (log-spaced, including initialisation and the end), builds the
operators on a fixed evaluation batch and records their measurements. Every
checkpoint writes, atomically and in this order, the model/optimizer state
(``checkpoints/iter_XXXXXXX.pt``, with all records so far) and the records as
JSON Lines (``results.jsonl``). A run resumes from its latest checkpoint file;
training batches are drawn from ``(seed, iteration)`` so a resumed run gives
the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ._progress import progress_bar
from .cells import make_step_map
from .io import load_checkpoint, read_jsonl, save_checkpoint, write_json, write_jsonl

__all__ = ["RunConfig", "run_experiment", "checkpoint_schedule", "run_progress", "PRESETS", "TrainingDiverged"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class RunConfig:
    """Configuration of one ``kpflow run``.

    The defaults train a 64-unit GRU on Memory-Pro (T = 30) on a laptop CPU
    in about a minute, with six analysis checkpoints.
    """

    task: str = "memory_pro"
    task_options: dict = field(default_factory=dict)
    model: str = "gru"
    hidden_size: int = 64
    gain: float = 1.0
    optimizer: str = "adam"
    lr: float = 3e-3
    lr_schedule: str = "constant"
    iterations: int = 600
    batch_size: int = 64
    early_stop_loss: float | None = None
    eval_batch_size: int = 32
    checkpoints: int = 6
    top_k: int = 10
    lyapunov: bool = True
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        def positive_int(name: str) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")

        for name in ("hidden_size", "iterations", "batch_size", "eval_batch_size", "top_k"):
            positive_int(name)
        if not isinstance(self.checkpoints, int) or self.checkpoints < 2:
            raise ValueError(f"checkpoints: expected an integer ≥ 2 (initialisation and end), got {self.checkpoints!r}")
        from .models import MODEL_KINDS

        if self.model not in MODEL_KINDS:
            raise ValueError(f"model: expected one of {', '.join(MODEL_KINDS)}, got {self.model!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer: expected 'adam' or 'sgd', got {self.optimizer!r}")
        if self.lr_schedule not in ("constant", "cosine", "step"):
            raise ValueError(f"lr_schedule: expected 'constant', 'cosine' or 'step', got {self.lr_schedule!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr: expected a positive finite number, got {self.lr!r}")
        if not (isinstance(self.gain, (int, float)) and self.gain >= 0 and math.isfinite(self.gain)):
            raise ValueError(f"gain: expected a non-negative finite number, got {self.gain!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.early_stop_loss is not None and not self.early_stop_loss > 0:
            raise ValueError(f"early_stop_loss: expected a positive number or None, got {self.early_stop_loss!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {self.seed!r}")
        if not isinstance(self.task_options, dict):
            raise ValueError(f"task_options: expected a dict, got {type(self.task_options).__name__}")
        try:
            dev = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"device: {exc}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {self.device!r} requested but this torch has no CUDA device available")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


#: Named configurations; ``paper`` follows the paper's scale.
PRESETS: dict[str, dict] = {
    "laptop": {},
    "paper": dict(
        hidden_size=256,
        task_options=dict(stimulus_steps=30, memory_steps=30, response_steps=30),
        optimizer="adam",
        lr=1e-3,
        iterations=5000,
        batch_size=128,
        eval_batch_size=128,
        checkpoints=12,
    ),
}


def checkpoint_schedule(iterations: int, count: int) -> list[int]:
    """Log-spaced analysis iterations in [0, iterations], always with 0 and the end."""
    if count < 2:
        raise ValueError(f"count: expected ≥ 2, got {count}")
    inner = np.geomspace(1, iterations, num=count - 1) if iterations >= 1 else np.array([])
    its = sorted({0, iterations, *(int(round(v)) for v in inner)})
    return its


def _make_optimizer(cfg: RunConfig, params) -> tuple[torch.optim.Optimizer, Any]:
    opt = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD)(params, lr=cfg.lr)
    if cfg.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.iterations)
    elif cfg.lr_schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, cfg.iterations // 3), gamma=0.3)
    else:
        sched = None
    return opt, sched


class _Setup:
    """Task, model, readout and evaluation batch of a run (rebuilt identically on resume)."""

    def __init__(self, cfg: RunConfig) -> None:
        from .models import Readout, build_model
        from .tasks import get_task

        self.cfg = cfg
        self.task = get_task(cfg.task, **cfg.task_options)
        dtype, device = cfg.torch_dtype, torch.device(cfg.device)
        self.model = build_model(
            cfg.model, self.task.input_size, cfg.hidden_size, gain=cfg.gain, seed=cfg.seed, dtype=dtype
        ).to(device)
        self.step_map = make_step_map(self.model)
        observed = self.step_map.observe(torch.zeros(1, self.step_map.state_size)).shape[-1]
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.readout = Readout(observed, self.task.output_size, generator=gen, dtype=dtype).to(device)
        self.eval_batch = self.task.evaluation_batch(cfg.eval_batch_size, dtype=dtype, device=device)
        self.dtype, self.device = dtype, device

    def train_batch(self, iteration: int):
        rng = np.random.default_rng([self.cfg.seed, iteration])
        return self.task.sample(self.cfg.batch_size, seed=rng, dtype=self.dtype, device=self.device)

    def outputs(self, inputs: torch.Tensor) -> torch.Tensor:
        params = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}
        z0 = torch.zeros(inputs.shape[0], self.step_map.state_size, dtype=self.dtype, device=self.device)
        states = self.step_map.unroll(params, inputs, z0)
        return self.readout(self.step_map.observe(states))


class TrainingDiverged(FloatingPointError):
    """Training produced a non-finite loss or parameters; the finished checkpoints are kept."""


def run_experiment(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    quiet: bool = False,
    analyze: Callable | None = None,
) -> list[dict]:
    """Train and analyse; returns the checkpoint records.

    Parameters
    ----------
    config : RunConfig
        What to train and measure.
    out : path
        Output folder: ``config.json``, ``results.jsonl``, ``summary.json``,
        ``checkpoints/``. Created if missing; an existing run there is only
        continued with ``resume=True``.
    resume : bool
        Continue from the latest checkpoint in ``out``.
    quiet : bool
        No progress bars.
    analyze : callable, optional
        ``analyze(setup, carry, quiet=...) -> (record, carry)``, where carry
        holds what the next checkpoint compares against; default
        :func:`kpflow.checkpoint_analysis.analyze_checkpoint`.
    """
    from .checkpoint_analysis import analyze_checkpoint

    analyze = analyze or analyze_checkpoint
    out = Path(out)
    cfg = config
    torch.manual_seed(cfg.seed)
    # Build everything first: a bad task or model name must not leave a
    # config.json behind that blocks the folder.
    setup = _Setup(cfg)
    _prepare_folder(out, config, resume)
    params = list(setup.model.parameters()) + list(setup.readout.parameters())
    opt, sched = _make_optimizer(cfg, params)
    schedule = checkpoint_schedule(cfg.iterations, cfg.checkpoints)

    records: list[dict] = []
    losses: list[float] = []
    start = 0
    carry = None
    ckpt_dir = out / "checkpoints"
    latest = _latest_checkpoint(ckpt_dir)
    if resume and latest is not None:
        state = load_checkpoint(latest, map_location=setup.device)
        setup.model.load_state_dict(state["model"])
        setup.readout.load_state_dict(state["readout"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler") is not None:
            sched.load_state_dict(state["scheduler"])
        records = [json.loads(r) for r in state["records"]]
        losses = list(state["train_losses"])
        carry = state.get("carry")
        start = int(state["iteration"])
        write_jsonl(out / "results.jsonl", records)
    done_iters = {r["iteration"] for r in records}

    def checkpoint(iteration: int) -> None:
        nonlocal carry
        if iteration in done_iters:
            return
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise TrainingDiverged(
                f"training diverged: non-finite parameters at iteration {iteration} (lr {cfg.lr:g}, gain "
                f"{cfg.gain:g}); the {len(records)} checkpoint(s) before it are kept in {out}; lower --lr or --gain"
            )
        try:
            record, carry = analyze(setup, carry, quiet=quiet)
        except FloatingPointError as exc:
            raise TrainingDiverged(
                f"training diverged: the analysis at iteration {iteration} overflowed ({exc}); lr {cfg.lr:g}, "
                f"gain {cfg.gain:g}; the {len(records)} checkpoint(s) before it are kept in {out}; "
                "lower --lr or --gain, or use --dtype float64"
            ) from exc
        record = {"iteration": iteration, "train_loss": losses[-1] if losses else None, **record}
        records.append(record)
        done_iters.add(iteration)
        state = {
            "iteration": iteration,
            "model": setup.model.state_dict(),
            "readout": setup.readout.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "records": [json.dumps(r) for r in _jsonable(records)],
            "train_losses": list(losses),
            "carry": carry,
        }
        save_checkpoint(ckpt_dir / f"iter_{iteration:07d}.pt", state)
        write_jsonl(out / "results.jsonl", records)
        for old in sorted(ckpt_dir.glob("iter_*.pt"))[:-2]:  # keep the last two
            old.unlink()

    t0 = time.perf_counter()
    if start == 0:
        checkpoint(0)
    bar = progress_bar(range(start, cfg.iterations), total=cfg.iterations, initial=start, desc="training",
                    disable=quiet, unit="it")
    stopped_early = False
    try:
        for it in bar:
            batch = setup.train_batch(it)
            opt.zero_grad(set_to_none=True)
            loss = setup.task.loss(setup.outputs(batch.inputs), batch)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"training diverged: the loss of iteration {it} is {float(loss)} (lr {cfg.lr:g}, gain "
                    f"{cfg.gain:g}); the {len(records)} checkpoint(s) before it are kept in {out}; "
                    "lower --lr or --gain, or set --early-stop-loss"
                )
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(float(loss.detach()))
            if not quiet and it % 20 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            stop = cfg.early_stop_loss is not None and losses[-1] < cfg.early_stop_loss
            if it + 1 in schedule or stop or it + 1 == cfg.iterations:
                checkpoint(it + 1)
            if stop:
                stopped_early = True
                break
    finally:  # an interrupt leaves no half-drawn progress bar behind
        bar.close()

    summary = {
        "config": cfg.to_dict(),
        "iterations_run": len(losses),
        "stopped_early": stopped_early,
        "train_losses": losses,
        "checkpoints": [r["iteration"] for r in records],
        "final": records[-1] if records else None,
        "wall_time_s": time.perf_counter() - t0,
    }
    write_json(out / "summary.json", summary)
    return records


def _jsonable(records):
    from .io import to_jsonable

    return [to_jsonable(r) for r in records]


def _latest_checkpoint(folder: Path) -> Path | None:
    files = sorted(folder.glob("iter_*.pt")) if folder.is_dir() else []
    return files[-1] if files else None


def _prepare_folder(out: Path, cfg: RunConfig, resume: bool) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"out: cannot create the output folder {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise PermissionError(f"out: the output folder {out} is not writable")
    cfg_file = out / "config.json"
    if resume:
        if not cfg_file.exists():
            raise FileNotFoundError(f"resume: {out} holds no run to resume (no config.json)")
        saved = RunConfig.from_dict(json.loads(cfg_file.read_text()))
        if saved != cfg:
            diff = ", ".join(f"{k}: saved {v!r}, requested {getattr(cfg, k)!r}"
                             for k, v in saved.to_dict().items() if getattr(cfg, k) != v)
            raise ValueError(
                f"resume: the configuration differs from the saved run in {out} ({diff}); give no run options "
                f"with --resume (kpflow run --resume {out} reads them from its config.json) or start a new folder"
            )
        return
    if cfg_file.exists() or (out / "results.jsonl").exists():
        raise FileExistsError(
            f"out: {out} already holds a run; continue it with kpflow run --resume {out} "
            "(run_experiment(..., resume=True) from Python) or choose another folder"
        )
    others = sorted(p.name for p in out.iterdir())
    if others:
        # Run files next to unrelated ones would be easy to mix up or overwrite.
        shown = ", ".join(others[:5]) + (", …" if len(others) > 5 else "")
        raise FileExistsError(f"out: {out} is not empty ({shown}) and holds no kpflow run; give a new or empty folder")
    write_json(cfg_file, cfg.to_dict())


def load_results(out: str | os.PathLike) -> list[dict]:
    """The checkpoint records of a run folder."""
    return read_jsonl(Path(out) / "results.jsonl")


def run_progress(out: str | os.PathLike) -> dict | None:
    """How far the run in ``out`` got, read from its files (nothing is loaded).

    Returns None when ``out`` holds no ``kpflow run`` (no readable
    ``config.json`` with an iteration budget), else a dict with
    ``iterations`` (the budget), ``last_iteration`` (of the latest finished
    checkpoint, None before the first), ``checkpoints_done``,
    ``checkpoints_planned``, ``stopped_early`` and ``finished`` (summary.json
    written: the budget was reached or training stopped early).
    """
    out = Path(out)
    try:
        config = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or not isinstance(config.get("iterations"), int):
        return None
    iterations = config["iterations"]
    try:
        planned = len(checkpoint_schedule(iterations, int(config.get("checkpoints", RunConfig.checkpoints))))
    except (TypeError, ValueError):
        planned = None
    done: set[int] = set()
    if (out / "results.jsonl").exists():
        try:
            done.update(int(r["iteration"]) for r in read_jsonl(out / "results.jsonl"))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    # the checkpoint file is written before results.jsonl: trust it too
    latest = _latest_checkpoint(out / "checkpoints")
    if latest is not None:
        try:
            done.add(int(latest.stem.split("_")[1]))
        except (IndexError, ValueError):
            pass
    summary = None
    if (out / "summary.json").exists():
        try:
            summary = json.loads((out / "summary.json").read_text())
        except (OSError, ValueError):
            summary = None
    stopped_early = bool(isinstance(summary, dict) and summary.get("stopped_early"))
    last = max(done) if done else None
    return {
        "iterations": iterations,
        "last_iteration": last,
        "checkpoints_done": len(done),
        "checkpoints_planned": planned,
        "stopped_early": stopped_early,
        "finished": isinstance(summary, dict) and (stopped_early or last == iterations),
    }
