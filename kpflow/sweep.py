"""``kpflow sweep``: a grid of runs over the initial gain g, seeds and model kinds."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .experiment import PRESETS, RunConfig, TrainingDiverged, run_experiment
from .io import atomic_write_text, read_jsonl, write_json

__all__ = ["SWEEP_PRESETS", "run_sweep", "summarize_run", "summary_table"]

#: Marker file of a run that diverged during training (its message inside).
DIVERGED = "diverged.json"

#: Base run configurations of a sweep: "laptop" keeps the whole default grid
#: (3 gains × 3 seeds × GRU and vanilla tanh RNN, 18 runs) within minutes on
#: two CPU cores (about 6 min measured on two idle cores). The tanh RNN is
#: there because it shows the Lyapunov-dimension trend with g that GRU gates
#: suppress.
SWEEP_PRESETS: dict[str, dict] = {
    "laptop": dict(
        base=dict(hidden_size=32, iterations=300, checkpoints=4, eval_batch_size=16, top_k=10),
        gains=(0.5, 1.0, 2.0),
        seeds=(0, 1, 2),
        models=("gru", "rnn"),
    ),
    "paper": dict(base=PRESETS["paper"], gains=(0.5, 1.0, 1.5, 2.0, 3.0), seeds=(0, 1, 2), models=("gru",)),
}


def _run_name(model: str, gain: float, seed: int) -> str:
    return f"{model}_g{gain:g}_s{seed}"


def _pr(record: dict, op: str) -> float | None:
    r = record.get(f"rank_{op}")
    return r.get("participation") if isinstance(r, dict) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def summarize_run(folder: str | os.PathLike, model: str, gain: float, seed: int) -> dict:
    """One row of the sweep table from a finished run folder."""
    records = read_jsonl(Path(folder) / "results.jsonl")
    first, last = records[0], records[-1]
    row = {"model": model, "gain": gain, "seed": seed,
           "final_loss": last.get("eval_loss"), "accuracy": last.get("accuracy")}
    for op in ("K", "PPt", "PKP"):
        row[f"rank_{op}_init"] = _pr(first, op)
        row[f"rank_{op}_end"] = _pr(last, op)
    # collapse > 1 means the effective rank fell over training
    row["collapse_PKP"] = _ratio(row["rank_PKP_init"], row["rank_PKP_end"])
    row["collapse_PPt"] = _ratio(row["rank_PPt_init"], row["rank_PPt_end"])
    row["misdirection_init"] = first.get("misdirection")
    row["misdirection_end"] = last.get("misdirection")
    row["kaplan_yorke_init"] = first.get("kaplan_yorke")
    row["kaplan_yorke_end"] = last.get("kaplan_yorke")
    return row


TABLE_COLUMNS = (
    ("final_loss", "loss"),
    ("rank_K_init", "PR K init"),
    ("rank_K_end", "PR K end"),
    ("rank_PPt_init", "PR PPᵀ init"),
    ("rank_PPt_end", "PR PPᵀ end"),
    ("rank_PKP_init", "PR PKP* init"),
    ("rank_PKP_end", "PR PKP* end"),
    ("misdirection_end", "misdir. end"),
    ("kaplan_yorke_init", "D_KY init"),
)


def summary_table(rows: Sequence[dict]) -> str:
    """A Markdown table: mean ± standard error over seeds for each (model, gain)."""
    header = "| model | g | n | " + " | ".join(lab for _, lab in TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (3 + len(TABLE_COLUMNS))]
    keys = sorted({(r["model"], r["gain"]) for r in rows})
    for model, gain in keys:
        group = [r for r in rows if r["model"] == model and r["gain"] == gain]
        cells = []
        for key, _ in TABLE_COLUMNS:
            v = np.array([r[key] for r in group if r.get(key) is not None], float)
            if v.size == 0:
                cells.append("—")
            elif v.size == 1:
                cells.append(f"{v[0]:.3g}")
            else:
                cells.append(f"{v.mean():.3g} ± {v.std(ddof=1) / np.sqrt(v.size):.2g}")
        lines.append(f"| {model} | {gain:g} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_sweep(
    out: str | os.PathLike,
    *,
    preset: str = "laptop",
    gains: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    models: Sequence[str] | None = None,
    overrides: dict | None = None,
    quiet: bool = False,
    report: bool = True,
) -> tuple[list[dict], str]:
    """Run (or continue) a sweep; returns the rows and the summary table.

    Each configuration gets a sub-folder ``{model}_g{gain}_s{seed}``; finished
    runs are skipped and interrupted ones resumed, so calling this again on
    the same folder continues the sweep.
    """
    if preset not in SWEEP_PRESETS:
        raise ValueError(f"preset: expected one of {sorted(SWEEP_PRESETS)}, got {preset!r}")
    spec = SWEEP_PRESETS[preset]
    gains = tuple(spec["gains"] if gains is None else gains)
    seeds = tuple(spec["seeds"] if seeds is None else seeds)
    models = tuple(spec["models"] if models is None else models)
    for name, values in (("gains", gains), ("seeds", seeds), ("models", models)):
        if not values:
            raise ValueError(f"{name}: expected at least one value")
    base = {**spec["base"], **(overrides or {})}
    # Validate the whole grid before the first run starts.
    configs = [(m, g, s, RunConfig.from_dict({**base, "model": m, "gain": float(g), "seed": int(s)}))
               for m in models for g in gains for s in seeds]

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sweep_cfg = {"preset": preset, "gains": gains, "seeds": seeds, "models": models, "base": base}
    cfg_file = out / "sweep_config.json"
    if cfg_file.exists():
        saved = json.loads(cfg_file.read_text())
        if saved != json.loads(json.dumps(sweep_cfg)):
            raise ValueError(f"out: {out} holds a different sweep ({cfg_file}); choose another folder")
    else:
        write_json(cfg_file, sweep_cfg)

    rows, diverged = [], []
    for i, (m, g, s, cfg) in enumerate(configs, 1):
        folder = out / _run_name(m, g, s)
        if not quiet:
            print(f"[{i}/{len(configs)}] {folder.name}", flush=True)
        if (folder / DIVERGED).exists():  # a diverged run is not retried: it would diverge again
            diverged.append(folder.name)
            continue
        if not (folder / "summary.json").exists():
            resume = (folder / "config.json").exists()
            try:
                run_experiment(cfg, folder, resume=resume, quiet=quiet)
            except TrainingDiverged as exc:
                write_json(folder / DIVERGED, {"error": str(exc)})
                print(f"kpflow sweep: {folder.name}: {exc}; left out of the table", file=sys.stderr, flush=True)
                diverged.append(folder.name)
                continue
        rows.append(summarize_run(folder, m, g, s))
    table = summary_table(rows)
    if diverged:
        table += f"\n\nDiverged during training, left out: {', '.join(diverged)} (see {DIVERGED} in each folder)."
    write_json(out / "sweep.json", {"config": sweep_cfg, "rows": rows, "diverged": diverged, "table": table})
    atomic_write_text(out / "summary.md", table + "\n")
    if report:
        from .report import make_report

        make_report(out)
    return rows, table
