"""Figures and a self-contained HTML report for a run or a sweep folder."""

from __future__ import annotations

import base64
import html
import json
import os
import shlex
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io import atomic_write_bytes, atomic_write_text, read_jsonl

__all__ = ["make_report", "partial_notice", "run_figures", "sweep_figures"]

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
    # room for each panel's y label and, between rows, for x labels and titles (cheaper than tight_layout)
    fig.subplots_adjust(wspace=0.3, hspace=0.5)
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _rank(record: dict, op: str, kind: str) -> float | None:
    r = record.get(f"rank_{op}")
    return None if not isinstance(r, dict) else r.get(kind)


def _x(records: Sequence[dict]) -> np.ndarray:
    return np.array([r["iteration"] for r in records], dtype=float)


def _iteration_axis(ax) -> None:
    """Iterations on a symmetric-log x axis: linear on [0, 1] and logarithmic
    above, so initialisation is drawn at 0 and labelled 0 (a log axis cannot
    show iteration 0 at all). Ticks only at 0 and the powers of ten, labelled
    as whole numbers (never "-0")."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_xscale("symlog", linthresh=1, linscale=0.5)
    lo, hi = ax.get_xlim()
    hi = max(hi, 1.0)
    ax.set_xlim(-0.15, hi)
    ax.xaxis.set_major_locator(FixedLocator([0.0] + [10.0 ** e for e in range(int(np.floor(np.log10(hi))) + 1)]))
    ax.xaxis.set_major_formatter(FuncFormatter(_whole))  # 0, 1, 10, 100, 1,000
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("iteration (0 = initialisation)")


def _whole(v: float, _pos=None) -> str:
    """A tick label as a whole number with thousands separators; -0 reads 0."""
    return f"{int(round(v)) + 0:,}"


def _positive_y(ax) -> np.ndarray:
    """The finite, positive y values drawn on ``ax`` (lines, markers, bars)."""
    values = [np.asarray(line.get_ydata(), dtype=float).ravel() for line in ax.lines]
    for coll in ax.collections:
        offsets = np.asarray(coll.get_offsets(), dtype=float)
        if offsets.ndim == 2 and offsets.shape[1] == 2:
            values.append(offsets[:, 1])
        for path in coll.get_paths():  # error bars: their segments
            values.append(np.asarray(path.vertices, dtype=float)[:, 1])
    values += [np.array([patch.get_y() + patch.get_height()], dtype=float) for patch in ax.patches
               if hasattr(patch, "get_height")]
    v = np.concatenate(values) if values else np.array([])
    return v[np.isfinite(v) & (v > 0)]


def _log_y(ax) -> bool:
    """A readable logarithmic y axis: labels only at powers of ten (no
    overlapping minor labels when the values are nearly equal), and limits
    widened to whole decades when fewer than two powers of ten would show.

    Nothing changes when no finite positive value is drawn (a log axis of
    missing, zero or negative values cannot be drawn): returns whether the
    axis became logarithmic."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    if not _positive_y(ax).size:
        return False
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    if lo > 0 and np.isfinite(lo) and np.isfinite(hi):
        powers = np.floor(np.log10(hi)) - np.ceil(np.log10(lo)) + 1  # powers of ten inside [lo, hi]
        if powers < 2:  # widen to whole decades so that two labelled ticks show
            ax.set_ylim(10.0 ** np.floor(np.log10(lo)), 10.0 ** np.ceil(np.log10(hi)))
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=7))
    ax.yaxis.set_major_formatter(LogFormatterSciNotation())
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10) * 1.0, numticks=12))
    ax.yaxis.set_minor_formatter(NullFormatter())
    return True


def _note(ax, text: str, *, center: bool = False) -> None:
    """A visible explanation written on a panel."""
    if center:
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="#555",
                wrap=True)
    else:
        ax.text(0.02, 0.02, text, transform=ax.transAxes, ha="left", va="bottom", fontsize=7.5, color="#333",
                bbox=dict(boxstyle="round,pad=0.3", fc="#fff8e0", ec="#d8c27a", alpha=0.9))


def _has_lines(ax) -> bool:
    return bool(ax.lines or ax.collections)


def _values(seq) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in seq], dtype=float)


def _analysed(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` was written by ``kpflow analyze``: one checkpoint of a
    model trained elsewhere (its config.json names the target and has no
    iteration budget, unlike a ``kpflow run``), so nothing is over training."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "target" in config and not isinstance(config.get("iterations"), int)


def _has_loss(records: Sequence[dict]) -> bool:
    return any(isinstance(r.get(k), (int, float)) and np.isfinite(r[k]) for r in records
               for k in ("eval_loss", "train_loss"))


_NO_LOSS_ANALYSED = "no loss: the analysed model came without readout/targets"


def _var95_note(bounds: set[int], mark: str) -> str:
    k = "/".join(str(b) for b in sorted(bounds))
    return (f"{mark}: the top k = {k} eigenvalues hold < 95 % of the trace,\n"
            f"so var95 > {k}; drawn at k as a lower bound (raise --top-k to resolve)")


def run_figures(folder: Path, records: list[dict], summary: dict | None, *,
                analysed: bool | None = None) -> list[tuple[str, Path]]:
    """The figures of one run; returns (caption, path) pairs.

    Every axis against training iteration is symmetric-log (linear on
    [0, 1], logarithmic above), so initialisation sits at iteration 0.
    A folder written by ``kpflow analyze`` (``analysed``; detected from its
    config.json when None) holds one checkpoint of a model trained elsewhere:
    its figures compare the operators at that checkpoint, with no iteration
    axis and no loss curve. Missing, zero or negative series never break a
    figure: the axis stays linear and the panel says what is missing.
    """
    folder = Path(folder)
    if analysed is None:
        analysed = _analysed(folder)
    if analysed:
        return _analysed_figures(folder, records)
    plt = _pyplot()
    figs: list[tuple[str, Path]] = []
    x = _x(records)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    losses = _values((summary or {}).get("train_losses") or [])
    if np.isfinite(losses).any():
        # losses[i] is the training batch loss of the model after i updates
        ax.plot(np.arange(len(losses)), losses, lw=0.8, alpha=0.7, label="training batch")
    evals = _values(r.get("eval_loss") for r in records)
    if np.isfinite(evals).any():
        ax.plot(x, evals, "o-", label="evaluation batch")
    if not _has_lines(ax):
        ax.set_xlim(0, max(float(np.max(x)), 1.0))  # the checkpoints' range, with no curve to span it
    _iteration_axis(ax)
    ax.set(ylabel="loss", title="Loss")
    if not _log_y(ax):
        ax.set_yticks([])
        _note(ax, "no loss recorded:\nthe records hold no positive training or evaluation loss", center=True)
    _legend(ax)
    figs.append(("Loss over training (training batches and the fixed evaluation batch).",
                 _save(fig, folder / "fig_loss.png")))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for kind, ax, label in (("participation", axes[0], "participation ratio (tr A)²/tr A²"),
                            ("var95", axes[1], "modes for 95 % of the variance")):
        bounds: set[int] = set()
        for i, (key, name) in enumerate(OPERATORS):
            ys = _values(_rank(r, key, kind) for r in records)
            if np.isfinite(ys).any():
                ax.plot(x, ys, "o-", color=f"C{i}", label=name)
            if kind == "var95":
                # var95 is null when the top-k eigenvalues hold < 95 % of the
                # trace: the count is then only known to exceed k.
                low = np.array([len(r[f"eig_{key}"]) if np.isnan(y) and isinstance(r.get(f"rank_{key}"), dict)
                                and r.get(f"eig_{key}") else np.nan for r, y in zip(records, ys)], dtype=float)
                if np.isfinite(low).any():
                    bounds.update(int(v) for v in low[np.isfinite(low)])
                    # nested sizes keep coinciding bounds of several operators visible
                    ax.plot(x, low, "^", color=f"C{i}", mfc="none", ms=12 - 3 * i, mew=1.5,
                            label=f"{name}: > k (lower bound)")
        ys = _values(r.get("pca_dim", {}).get(kind) if isinstance(r.get("pca_dim"), dict) else None for r in records)
        if np.isfinite(ys).any():
            ax.plot(x, ys, "s--", color="gray", label="hidden states (PCA)")
        ax.set(ylabel="effective rank", title=label)
        _iteration_axis(ax)
        if not _log_y(ax):
            _note(ax, "not measured in this run", center=True)
        # the explanation of the lower bounds heads the legend, below the panel (it hides no data there)
        _legend(ax, title=_var95_note(bounds, "open triangles") if bounds else None)
    figs.append(("Effective rank of each operator against training iteration (dynamic collapse). Open "
                 "triangles mark lower bounds: the top-k eigenvalues hold less than 95 % of the trace.",
                 _save(fig, folder / "fig_effective_rank.png")))

    last = records[-1]
    compare = [(records[0], "o-", "initialisation" if records[0]["iteration"] == 0
                else f"iteration {records[0]['iteration']}")]
    if len(records) > 1:
        compare.append((last, "s-", f"iteration {last['iteration']}"))
    fig = _spectra_figure(plt, compare, "in this run")
    figs.append(("Top eigenvalues, normalised by the largest, at initialisation and at the last checkpoint.",
                 _save(fig, folder / "fig_spectra.png")))

    extra = [(k, lab) for k, lab in (("misdirection", "misdirection  cos(P K P*, P Pᵀ)"),
                                     ("flow_alignment", "cos(−P K P* e, ΔZ)"),
                                     ("kaplan_yorke", "Kaplan–Yorke dimension"))
             if any(r.get(k) is not None for r in records)]
    if extra:
        fig, axes = plt.subplots(1, len(extra), figsize=(4 * len(extra), 3.4), squeeze=False)
        for ax, (k, lab) in zip(axes[0], extra):
            ax.plot(x, _values(r.get(k) for r in records), "o-")
            ax.set(title=lab)
            _iteration_axis(ax)
            if k == "kaplan_yorke":  # a dimension: no negative axis when every value is 0
                lo, hi = ax.get_ylim()
                ax.set_ylim(max(lo, -0.05 * max(hi, 1.0)), max(hi, 1.0))
        figs.append(("Misdirection, alignment of the predicted and actual change of the states, "
                     "and the Lyapunov (Kaplan–Yorke) dimension over training.",
                     _save(fig, folder / "fig_dynamics.png")))
    return figs


def _spectra_figure(plt, compare: Sequence[tuple[dict, str, str]], where: str):
    """One panel per operator: its top eigenvalues over the largest, one series per (record, style, label)."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (key, name) in zip(axes, OPERATORS):
        for rec, style, lab in compare:
            v = _values(rec.get(f"eig_{key}") or [])
            if v.size and np.isfinite(v).any() and np.nanmax(v) > 0:
                top = np.nanmax(v)
                ax.plot(np.arange(1, v.size + 1), v / top, style, label=f"{lab} (λ₁={top:.3g})")
        ax.set(xlabel="index", ylabel="λ / λ₁", title=f"Top spectrum of {name}")
        if _log_y(ax):
            lo, _ = ax.get_ylim()
            ax.set_ylim(lo, 1.6)  # λ/λ₁ ≤ 1: no empty decade above
            ax.xaxis.get_major_locator().set_params(integer=True)
        else:
            _note(ax, f"not measured {where}", center=True)
        _legend(ax)
    return fig


def _analysed_figures(folder: Path, records: list[dict]) -> list[tuple[str, Path]]:
    """Figures of a ``kpflow analyze`` folder: one checkpoint of a model trained
    elsewhere, so the operators are compared side by side (no iteration axis,
    no training loss)."""
    from matplotlib.patches import Patch

    plt = _pyplot()
    figs: list[tuple[str, Path]] = []
    for stale in ("fig_loss.png", "fig_dynamics.png"):  # over-training figures of earlier report versions
        (folder / stale).unlink(missing_ok=True)
    rec = records[-1]  # kpflow analyze writes one record
    label = "analysed model" if len(records) == 1 else f"analysed model (record {len(records)} of {len(records)})"
    items = [(key, name, f"C{i}") for i, (key, name) in enumerate(OPERATORS)]
    items.append(("pca", "hidden states\n(PCA)", "gray"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for kind, ax, title in (("participation", axes[0], "participation ratio (tr A)²/tr A²"),
                            ("var95", axes[1], "modes for 95 % of the variance")):
        bounds: set[int] = set()
        for i, (key, name, color) in enumerate(items):
            se = None
            if key == "pca":
                pca = rec.get("pca_dim")
                v = pca.get(kind) if isinstance(pca, dict) else None
            else:
                v = _rank(rec, key, kind)
                if kind == "participation":
                    se = _rank(rec, key, "participation_se")
            lower = (v is None and kind == "var95" and key != "pca" and isinstance(rec.get(f"rank_{key}"), dict)
                     and bool(rec.get(f"eig_{key}")))
            if lower:  # the top k hold < 95 % of the trace: var95 is only known to exceed k
                v = len(rec[f"eig_{key}"])
                bounds.add(int(v))
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
                continue
            ax.bar(i, v, width=0.6, color=color, alpha=0.25 if lower else 0.85, edgecolor=color,
                   hatch="//" if lower else None, yerr=se if isinstance(se, (int, float)) else None, capsize=4)
            text = f"> {v:g}" if lower else f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
            ax.annotate(text, (i, v), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(items)), [name for _, name, _ in items])
        ax.set_xlim(-0.6, len(items) - 0.4)
        ax.set(ylabel="effective rank", title=title)
        if _log_y(ax):
            top = _positive_y(ax)
            ax.set_ylim(10.0 ** np.floor(np.log10(top.min() / 2)), 10.0 ** np.ceil(np.log10(top.max() * 3)))
        else:
            _note(ax, "not measured for this model", center=True)
        if bounds:
            _legend(ax, [Patch(facecolor="white", edgecolor="0.3", hatch="//", label="> k (lower bound)")],
                    title=_var95_note(bounds, "hatched"))
    figs.append(("Effective rank of each operator of the analysed model and of its hidden states. Hatched bars "
                 "mark lower bounds: the top-k eigenvalues hold less than 95 % of the trace.",
                 _save(fig, folder / "fig_effective_rank.png")))

    fig = _spectra_figure(plt, [(rec, "o-", label)], "for this model")
    figs.append(("Top eigenvalues of the analysed model, normalised by the largest.",
                 _save(fig, folder / "fig_spectra.png")))

    lyap = _values(rec.get("lyapunov") or [])
    if np.isfinite(lyap).any():
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.axhline(0.0, color="0.6", lw=0.8, ls="--")
        ax.plot(np.arange(1, lyap.size + 1), lyap, "o-", label=label)
        ky = rec.get("kaplan_yorke")
        ax.set(xlabel="index", ylabel="exponent per step",
               title="Lyapunov spectrum" + (f" (Kaplan–Yorke dimension {ky:.3g})" if isinstance(ky, (int, float))
                                            else ""))
        ax.xaxis.get_major_locator().set_params(integer=True)
        _legend(ax)
        figs.append(("Lyapunov exponents of the analysed model along its trajectories (largest first); the "
                     "Kaplan–Yorke dimension estimates the attractor's dimension from their cumulative sums.",
                     _save(fig, folder / "fig_lyapunov.png")))
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
        if k.startswith("collapse_") and _has_lines(ax):
            # ratios span orders of magnitude on both sides of 1 (1 = no collapse)
            ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
            _log_y(ax)
        if ax.get_legend_handles_labels()[0]:  # panels in rows: a legend below would cover the next row
            ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[len(quantities):]:
        ax.axis("off")
    figs.append(("Trends against the initial gain g (mean ± standard error over seeds).",
                 _save(fig, folder / "fig_sweep.png")))
    return figs


def _legend(ax, handles: Sequence | None = None, **kw) -> None:
    """The legend of a run figure (of ``handles``, else of the labelled
    artists), centred below the panel's x label, where it hides no data
    (inside the axes it covered curves where they drop)."""
    from matplotlib.transforms import offset_copy

    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    else:
        labels = [h.get_label() for h in handles]
    if not handles:
        return
    # points from the bottom of the axes to below its tick labels and x label
    fig = ax.figure
    renderer = getattr(fig.canvas, "get_renderer", None)
    under = ax.xaxis.get_tightbbox(renderer()) if renderer is not None else None
    below = 6 + (max(ax.bbox.y0 - under.y0, 0.0) * 72 / fig.dpi if under is not None else 34.0)
    kw.setdefault("fontsize", 8)
    kw.setdefault("title_fontsize", 7.5)
    ax.legend(handles, labels, loc="upper center", ncol=1 if len(handles) < 3 else 2, bbox_to_anchor=(0.5, 0.0),
              bbox_transform=offset_copy(ax.transAxes, fig=fig, y=-below, units="points"),
              borderaxespad=0.0, frameon=False, alignment="left", **kw)  # a multi-line title reads from the left


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
pre{background:#f7f7f7;padding:0.8em;overflow-x:auto}
.partial{background:#fff4d6;border:1px solid #e0b84c;border-radius:4px;padding:0.8em 1em;margin:1em 0}"""


def _key_rows(records: list[dict], analysed: bool = False) -> list[dict]:
    """One row per checkpoint; for an analysed model (no training) no
    iteration, the loss on the given inputs, and no column that is empty."""
    rows = []
    for r in records:
        row = ({"loss": r.get("eval_loss")} if analysed else
               {"iteration": r["iteration"], "eval loss": r.get("eval_loss")})
        row["accuracy"] = r.get("accuracy")
        for key, name in OPERATORS:
            row[f"PR {name}"] = _rank(r, key, "participation")
        row["misdirection"] = r.get("misdirection")
        row["cos(flow, ΔZ)"] = r.get("flow_alignment")
        row["Kaplan–Yorke"] = r.get("kaplan_yorke")
        rows.append(row)
    if analysed:
        keep = [c for c in rows[0] if any(row[c] is not None for row in rows)] if rows else []
        rows = [{c: row[c] for c in keep} for row in rows]
    return rows


def _partial(folder: str | os.PathLike, records: Sequence[dict] | None) -> tuple[str, str] | None:
    from .experiment import run_progress

    progress = run_progress(folder)
    if progress is None or progress["finished"]:
        return None
    done = len(records) if records is not None else progress["checkpoints_done"]
    last = records[-1]["iteration"] if records else progress["last_iteration"]
    planned = progress["checkpoints_planned"]
    of = f" of {planned}" if planned else ""
    where = (f"the last at iteration {last} of {progress['iterations']}" if last is not None
             else f"none of the {progress['iterations']} iterations trained yet")
    return f"{done}{of} checkpoints so far, {where}", f"kpflow run --resume {shlex.quote(str(folder))}"


def _losses_from_checkpoint(folder: Path) -> dict | None:
    """The training loss curve of an unfinished run, from its latest checkpoint file."""
    files = sorted((folder / "checkpoints").glob("iter_*.pt")) if (folder / "checkpoints").is_dir() else []
    if not files:
        return None
    try:
        from .io import load_checkpoint

        return {"train_losses": list(load_checkpoint(files[-1])["train_losses"])}
    except Exception:  # noqa: BLE001 - the curve is optional; the report goes on without it
        return None


def partial_notice(folder: str | os.PathLike, records: Sequence[dict] | None = None) -> str | None:
    """A sentence saying that the run in ``folder`` is unfinished and how to
    continue it; None for a finished run or a folder that is not a ``kpflow run``
    (e.g. one written by ``kpflow analyze``)."""
    found = _partial(folder, records)
    return None if found is None else f"unfinished run: {found[0]}; continue it with: {found[1]}"


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
        partial = _partial(folder, records)
        if summary is None:
            summary = _losses_from_checkpoint(folder)
        if partial:
            status, command = partial
            parts.append(f'<div class="partial"><strong>Partial run.</strong> This run has not finished: '
                         f'{html.escape(status)} (no summary.json yet). The numbers and figures below cover only '
                         f'the finished checkpoints. Continue it with <code>{html.escape(command)}</code> '
                         '(the report is rendered again when the run finishes).</div>')
        analysed = _analysed(folder)
        if analysed:
            parts.append(f"<p>One model trained elsewhere, analysed once by <code>kpflow analyze "
                         f"{html.escape(str(config.get('target', '')))}</code>: no training here, so nothing is "
                         "drawn over iterations.</p>")
            if not _has_loss(records):
                parts.append(f'<div class="partial"><strong>{html.escape(_NO_LOSS_ANALYSED[0].upper())}'
                             f'{html.escape(_NO_LOSS_ANALYSED[1:])}</strong> (return <code>readout</code>, '
                             "<code>loss_fn</code> and <code>targets</code> too for the loss and the error signal; "
                             "see docs/main-job.md).</div>")
        parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(config, indent=2)) + "</pre>")
        rows = _key_rows(records, analysed)
        title = "Key numbers of the analysed model" if analysed else "Key numbers per checkpoint"
        if rows and rows[0]:
            parts.append(f"<h2>{title}</h2>" + _table(rows, list(rows[0])))
        for caption, path in run_figures(folder, records, summary, analysed=analysed):
            parts.append(f"<figure>{_img(path)}<figcaption>{html.escape(caption)}</figcaption></figure>")
    elif (folder / "sweep_config.json").exists():
        raise FileNotFoundError(
            f"folder: {folder} holds an unfinished sweep (sweep_config.json but no sweep.json yet); continue it "
            "by running the same kpflow sweep command on this folder again, which renders the report at the end; "
            "the finished runs in its sub-folders can be reported one by one with kpflow report"
        )
    else:
        raise FileNotFoundError(f"folder: {folder} holds neither results.jsonl (a run) nor sweep.json (a sweep)")
    parts.append("</body></html>\n")
    return atomic_write_text(folder / "report.html", "".join(parts))
