"""Figures and a self-contained HTML report for a run or a sweep folder."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io import atomic_write_bytes, atomic_write_text, read_jsonl

__all__ = ["make_report", "run_figures", "sweep_figures"]

OPERATORS = (("K", "K"), ("PPt", "P Pᵀ"), ("PKP", "P K P*"))


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - exercised without the extra
        raise ImportError("kpflow report needs matplotlib: pip install 'kpflow[plot]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _rank(record: dict, op: str, kind: str) -> float | None:
    r = record.get(f"rank_{op}")
    return None if not isinstance(r, dict) else r.get(kind)


def _x(records: Sequence[dict]) -> np.ndarray:
    # log axes need positive iterations: plot initialisation at 0.5
    return np.array([max(r["iteration"], 0.5) for r in records], dtype=float)


def run_figures(folder: Path, records: list[dict], summary: dict | None) -> list[tuple[str, Path]]:
    """The figures of one run; returns (caption, path) pairs."""
    plt = _pyplot()
    figs: list[tuple[str, Path]] = []
    x = _x(records)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    losses = (summary or {}).get("train_losses") or []
    if losses:
        ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.8, alpha=0.7, label="training batch")
    ax.plot(x, [r.get("eval_loss") for r in records], "o-", label="evaluation batch")
    ax.set(xscale="log", yscale="log", xlabel="iteration", ylabel="loss", title="Loss")
    _legend(ax)
    figs.append(("Loss over training (training batches and the fixed evaluation batch).",
                 _save(fig, folder / "fig_loss.png")))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for kind, ax, label in (("participation", axes[0], "participation ratio (tr A)²/tr A²"),
                            ("var95", axes[1], "modes for 95 % of the variance")):
        for key, name in OPERATORS:
            ys = [_rank(r, key, kind) for r in records]
            if any(v is not None for v in ys):
                ax.plot(x, [np.nan if v is None else v for v in ys], "o-", label=name)
        ys = [r.get("pca_dim", {}).get(kind) if isinstance(r.get("pca_dim"), dict) else None for r in records]
        if any(v is not None for v in ys):
            ax.plot(x, [np.nan if v is None else v for v in ys], "s--", color="gray", label="hidden states (PCA)")
        ax.set(xscale="log", yscale="log", xlabel="iteration", ylabel="effective rank", title=label)
        _legend(ax, fontsize=8)
    figs.append(("Effective rank of each operator against training iteration (dynamic collapse).",
                 _save(fig, folder / "fig_effective_rank.png")))

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (key, name) in zip(axes, OPERATORS):
        for rec, style, lab in ((records[0], "o-", "initialisation"), (records[-1], "s-", "end")):
            vals = rec.get(f"eig_{key}")
            if vals:
                v = np.asarray([np.nan if a is None else a for a in vals], dtype=float)
                ax.plot(np.arange(1, len(v) + 1), v / np.nanmax(v), style, label=f"{lab} (λ₁={np.nanmax(v):.3g})")
        ax.set(yscale="log", xlabel="index", ylabel="λ / λ₁", title=f"Top spectrum of {name}")
        _legend(ax, fontsize=8)
    figs.append(("Top eigenvalues, normalised by the largest, at initialisation and at the end.",
                 _save(fig, folder / "fig_spectra.png")))

    extra = [(k, lab) for k, lab in (("misdirection", "misdirection  cos(P K P*, P Pᵀ)"),
                                     ("flow_alignment", "cos(−P K P* e, ΔZ)"),
                                     ("kaplan_yorke", "Kaplan–Yorke dimension"))
             if any(r.get(k) is not None for r in records)]
    if extra:
        fig, axes = plt.subplots(1, len(extra), figsize=(4 * len(extra), 3.4), squeeze=False)
        for ax, (k, lab) in zip(axes[0], extra):
            ax.plot(x, [np.nan if r.get(k) is None else r[k] for r in records], "o-")
            ax.set(xscale="log", xlabel="iteration", title=lab)
        figs.append(("Misdirection, alignment of the predicted and actual change of the states, "
                     "and the Lyapunov (Kaplan–Yorke) dimension over training.",
                     _save(fig, folder / "fig_dynamics.png")))
    return figs


def sweep_figures(folder: Path, rows: list[dict]) -> list[tuple[str, Path]]:
    """Figures of a sweep: trends against the initial gain g, mean ± s.e. over seeds."""
    plt = _pyplot()
    figs = []
    quantities = [(k, lab) for k, lab in (
        ("collapse_PKP", "collapse of P K P* (PR init / PR end)"),
        ("collapse_PPt", "collapse of P Pᵀ (PR init / PR end)"),
        ("rank_K_end", "participation ratio of K at the end"),
        ("misdirection_end", "misdirection at the end"),
        ("kaplan_yorke_init", "Kaplan–Yorke dimension at initialisation"),
        ("final_loss", "final evaluation loss"),
    ) if any(r.get(k) is not None for r in rows)]
    if not quantities:
        return figs
    models = sorted({r["model"] for r in rows})
    ncol = 3
    nrow = int(np.ceil(len(quantities) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.3 * nrow), squeeze=False)
    for ax, (k, lab) in zip(axes.flat, quantities):
        for m in models:
            gains = sorted({r["gain"] for r in rows if r["model"] == m})
            mean, se = [], []
            for g in gains:
                v = np.array([r[k] for r in rows if r["model"] == m and r["gain"] == g and r.get(k) is not None], float)
                mean.append(v.mean() if v.size else np.nan)
                se.append(v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else 0.0)
            ax.errorbar(gains, mean, yerr=se, marker="o", capsize=3, label=m)
        ax.set(xlabel="initial gain g", title=lab)
        _legend(ax, fontsize=8)
    for ax in list(axes.flat)[len(quantities):]:
        ax.axis("off")
    figs.append(("Trends against the initial gain g (mean ± standard error over seeds).",
                 _save(fig, folder / "fig_sweep.png")))
    return figs


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _table(rows: list[dict], columns: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}img{max-width:100%;margin:0.5em 0}figcaption{color:#555;font-size:0.9em}
pre{background:#f7f7f7;padding:0.8em;overflow-x:auto}"""


def _key_rows(records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        row = {"iteration": r["iteration"], "eval loss": r.get("eval_loss"), "accuracy": r.get("accuracy")}
        for key, name in OPERATORS:
            row[f"PR {name}"] = _rank(r, key, "participation")
        row["misdirection"] = r.get("misdirection")
        row["cos(flow, ΔZ)"] = r.get("flow_alignment")
        row["Kaplan–Yorke"] = r.get("kaplan_yorke")
        rows.append(row)
    return rows


def make_report(folder: str | os.PathLike) -> Path:
    """Render the figures and ``report.html`` for a run folder or a sweep folder.

    A run folder holds ``results.jsonl``; a sweep folder holds
    ``sweep.json`` and one run folder per configuration.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder: {folder} is not a folder")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>kpflow report: {html.escape(folder.name)}</title>"
             f"<style>{_CSS}</style></head><body><h1>kpflow report: {html.escape(folder.name)}</h1>"]
    if (folder / "sweep.json").exists():
        sweep = json.loads((folder / "sweep.json").read_text())
        rows = sweep["rows"]
        parts.append("<h2>Sweep configuration</h2><pre>" + html.escape(json.dumps(sweep["config"], indent=2)) + "</pre>")
        if sweep.get("table"):
            parts.append("<h2>Summary (mean ± s.e. over seeds)</h2><pre>" + html.escape(sweep["table"]) + "</pre>")
        for caption, path in sweep_figures(folder, rows):
            parts.append(f"<figure>{_img(path)}<figcaption>{html.escape(caption)}</figcaption></figure>")
        columns = list(rows[0]) if rows else []
        parts.append("<h2>All runs</h2>" + _table(rows, columns))
    elif (folder / "results.jsonl").exists():
        records = read_jsonl(folder / "results.jsonl")
        if not records:
            raise ValueError(f"folder: {folder}/results.jsonl holds no checkpoint yet")
        summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else None
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
        parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(config, indent=2)) + "</pre>")
        rows = _key_rows(records)
        parts.append("<h2>Key numbers per checkpoint</h2>" + _table(rows, list(rows[0])))
        for caption, path in run_figures(folder, records, summary):
            parts.append(f"<figure>{_img(path)}<figcaption>{html.escape(caption)}</figcaption></figure>")
    else:
        raise FileNotFoundError(f"folder: {folder} holds neither results.jsonl (a run) nor sweep.json (a sweep)")
    parts.append("</body></html>\n")
    return atomic_write_text(folder / "report.html", "".join(parts))
