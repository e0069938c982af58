"""``kpflow analyze module:function``: the checkpoint analysis on a user's own model."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import torch

from .checkpoint_analysis import AnalysisOptions, measure
from .io import write_json, write_jsonl

__all__ = ["load_target", "analyze_user_model"]

_KEYS = ("model", "inputs", "readout", "loss_fn", "targets", "h0")


def load_target(target: str):
    """Import ``module:function`` (or ``path/to/file.py:function``) and return the function."""
    module_name, sep, func_name = target.rpartition(":")
    if not sep or not module_name or not func_name:
        raise ValueError(f"target: expected 'module:function' or 'file.py:function', got {target!r}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise FileNotFoundError(f"target: no file {path}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.resolve().parent))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.pop(0)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise ImportError(f"target: cannot import module {module_name!r}: {exc}") from None
    try:
        func = getattr(module, func_name)
    except AttributeError:
        raise ValueError(f"target: module {module_name!r} has no attribute {func_name!r}") from None
    if not callable(func):
        raise TypeError(f"target: {target} is not callable")
    return func


def _unpack(result: Any) -> dict:
    if isinstance(result, dict):
        unknown = sorted(set(result) - set(_KEYS))
        if unknown:
            raise ValueError(f"target: returned unknown key(s) {unknown}; expected some of {list(_KEYS)}")
        spec = dict(result)
    elif isinstance(result, (tuple, list)):
        if not 2 <= len(result) <= len(_KEYS):
            raise ValueError(f"target: expected a tuple (model, inputs[, readout, loss_fn, targets, h0]), "
                             f"got {len(result)} items")
        spec = dict(zip(_KEYS, result))
    else:
        raise TypeError(f"target: expected a dict or a tuple, got {type(result).__name__}")
    for key in ("model", "inputs"):
        if spec.get(key) is None:
            raise ValueError(f"target: the returned value has no {key!r}")
    given = [k for k in ("readout", "loss_fn", "targets") if spec.get(k) is not None]
    if given and len(given) != 3:
        raise ValueError(f"target: readout, loss_fn and targets go together (for the error signal); got only {given}")
    return spec


def analyze_user_model(
    target: str,
    out: str | os.PathLike,
    *,
    top_k: int = 10,
    lyapunov: bool = True,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    quiet: bool = False,
    report: bool = True,
) -> Path:
    """Run the checkpoint analysis once on the model ``target`` returns; returns ``out``."""
    spec = _unpack(load_target(target)())
    model, inputs = spec["model"], spec["inputs"]
    if dtype is not None:
        tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
        model = model.to(tdtype) if isinstance(model, torch.nn.Module) else model
        inputs = inputs.to(tdtype)
        if spec.get("readout") is not None and isinstance(spec["readout"], torch.nn.Module):
            spec["readout"] = spec["readout"].to(tdtype)
        if spec.get("targets") is not None and spec["targets"].is_floating_point():
            spec["targets"] = spec["targets"].to(tdtype)
    if device is not None:
        model = model.to(device) if isinstance(model, torch.nn.Module) else model
        inputs = inputs.to(device)
        for key in ("readout", "targets"):
            if spec.get(key) is not None and hasattr(spec[key], "to"):
                spec[key] = spec[key].to(device)
    loss = None
    if spec.get("loss_fn") is not None:
        loss_fn, targets = spec["loss_fn"], spec["targets"]
        loss = lambda outputs: loss_fn(outputs, targets)  # noqa: E731
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "config.json").exists() and any(out.iterdir()):
        # An earlier analysis here is replaced; unrelated files are not mixed with ours.
        raise FileExistsError(f"out: {out} is not empty and holds no kpflow analysis; give a new or empty folder")
    options = AnalysisOptions(top_k=top_k, lyapunov=lyapunov, seed=seed)
    record, _ = measure(model, inputs, readout=spec.get("readout"), loss=loss, h0=spec.get("h0"),
                        options=options, quiet=quiet)
    record = {"iteration": 0, **record}
    write_json(out / "config.json", {"target": target, "top_k": top_k, "lyapunov": lyapunov, "seed": seed,
                                     "inputs_shape": list(inputs.shape), "dtype": str(inputs.dtype)})
    write_jsonl(out / "results.jsonl", [record])
    if report:
        from .report import make_report

        make_report(out)
    return out
