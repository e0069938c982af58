"""The ``kpflow`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]

DESCRIPTION = textwrap.dedent(
    """\
    kpflow — follow the KP-flow operators of a recurrent model through training.

    Gradient descent moves a recurrent model's hidden trajectory Z as
    dZ/dτ = −P K P* e, where K = J_θ J_θᵀ is the parameter operator, P the
    propagator of the linearized dynamics, P* its adjoint (the BPTT scan) and
    e the error signal (Hazelden, Driscoll, Shlizerman, Shea-Brown 2025).
    kpflow trains a model on a task from the paper and measures these
    operators at log-spaced checkpoints."""
)

EPILOG = textwrap.dedent(
    """\
    examples:
      kpflow run --out runs/memory-pro
      kpflow run --out runs/memory-pro --resume
      kpflow run --out runs/big --preset paper --device cuda
      kpflow sweep --out runs/gains --gains 0.5 1 2 --seeds 0 1 2
      kpflow report runs/gains
      kpflow analyze mymodels.py:trained_gru --out runs/mine
      kpflow COMMAND --help      options of one command

    files written by run (all atomically):
      DIR/config.json        the configuration (reused by --resume)
      DIR/results.jsonl      one JSON record per analysis checkpoint
      DIR/summary.json       loss curve and the final record
      DIR/checkpoints/       model, readout and optimizer state dicts
      DIR/fig_*.png          figures; DIR/report.html embeds them

    exit status: 0 on success, 2 on bad options or unusable folders."""
)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=("float32", "float64"), help="floating dtype (default float32)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and training")
    g.add_argument("--preset", choices=("laptop", "paper"), default="laptop",
                   help="laptop: minutes on a CPU (default); paper: 256 units, 90 steps, Adam 1e-3")
    g.add_argument("--config", type=Path, help="JSON file of options (overridden by explicit flags)")
    g.add_argument("--task", help="memory_pro (default), memory_anti, delay_pro, delay_anti, flip_flop, multitask")
    g.add_argument("--model", help="gru (default), lstm, rnn, rnn_relu, ctrnn, node")
    g.add_argument("--hidden-size", type=int, dest="hidden_size", help="number of hidden units (default 64)")
    g.add_argument("--gain", type=float, help="initial recurrent gain g: W ~ g/√H N(0,1) (default 1.0)")
    g.add_argument("--optimizer", choices=("adam", "sgd"))
    g.add_argument("--lr", type=float, help="learning rate")
    g.add_argument("--lr-schedule", dest="lr_schedule", choices=("constant", "cosine", "step"))
    g.add_argument("--iterations", type=int, help="training iterations")
    g.add_argument("--batch-size", type=int, dest="batch_size", help="trials per training batch")
    g.add_argument("--early-stop-loss", type=float, dest="early_stop_loss", help="stop when the training loss falls below")
    a = p.add_argument_group("analysis")
    a.add_argument("--eval-batch-size", type=int, dest="eval_batch_size", help="trials in the fixed analysis batch")
    a.add_argument("--checkpoints", type=int, help="number of log-spaced analysis checkpoints (≥ 2)")
    a.add_argument("--top-k", type=int, dest="top_k", help="eigenvalues per spectrum")
    a.add_argument("--no-lyapunov", dest="lyapunov", action="store_false", default=None,
                   help="skip the Lyapunov spectrum")


_CONFIG_KEYS = ("task", "model", "hidden_size", "gain", "optimizer", "lr", "lr_schedule", "iterations",
                "batch_size", "early_stop_loss", "eval_batch_size", "checkpoints", "top_k", "lyapunov",
                "seed", "device", "dtype")


def config_from_args(args: argparse.Namespace):
    """A RunConfig from preset, optional JSON file, then explicit flags."""
    from .experiment import PRESETS, RunConfig

    data: dict = dict(PRESETS[args.preset])
    if args.config is not None:
        try:
            data.update(json.loads(args.config.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"--config: cannot read {args.config}: {exc}") from None
    for key in _CONFIG_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    return RunConfig.from_dict(data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpflow", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"kpflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="train a model and analyse it at checkpoints",
                         description="Train a recurrent model on a task and follow K, P and P K P* over training.",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--out", type=Path, required=True, help="output folder")
    run.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    _add_run_options(run)
    _add_common(run)

    sweep = sub.add_parser(
        "sweep", help="run a grid of gains / seeds / model kinds",
        description="Run one kpflow run per (model, gain, seed) in sub-folders of --out, tabulate the trends "
                    "(mean ± standard error over seeds) and render a report. Re-running on the same folder "
                    "continues an interrupted sweep.")
    sweep.add_argument("--out", type=Path, required=True, help="output folder")
    sweep.add_argument("--preset", choices=("laptop", "paper"), default="laptop",
                       help="laptop: 3 gains × 3 seeds of a 32-unit GRU, minutes (default); paper: the paper's scale")
    sweep.add_argument("--gains", type=float, nargs="+", help="initial gains g")
    sweep.add_argument("--seeds", type=int, nargs="+", help="seeds")
    sweep.add_argument("--models", nargs="+", help="model kinds")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a run option, e.g. --set iterations=500 (JSON values)")
    sweep.add_argument("--no-report", dest="report", action="store_false", help="skip the figures and report")
    _add_common(sweep)

    report = sub.add_parser("report", help="render figures and report.html for a run or sweep folder",
                            description="Render PNG figures and a self-contained report.html in a run or sweep folder.")
    report.add_argument("folder", type=Path, help="a folder written by kpflow run or kpflow sweep")

    analyze = sub.add_parser(
        "analyze", help="apply the checkpoint analysis once to your own model",
        description="Import module:function, call it with no arguments, and analyse what it returns: a dict "
                    "(or tuple in this order) with model and inputs [B, T, I], and optionally readout, loss_fn "
                    "and targets (for the error signal), and h0. Writes results.jsonl and report.html to --out.")
    analyze.add_argument("target", help="module:function, e.g. mypackage.models:trained_gru or path/to/file.py:make")
    analyze.add_argument("--out", type=Path, required=True, help="output folder")
    analyze.add_argument("--top-k", type=int, default=10, dest="top_k", help="eigenvalues per spectrum")
    analyze.add_argument("--no-lyapunov", dest="lyapunov", action="store_false", help="skip the Lyapunov spectrum")
    analyze.add_argument("--no-report", dest="report", action="store_false", help="skip the figures and report")
    _add_common(analyze)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from .experiment import run_experiment

    if args.resume and args.config is None and not _any_option(args):
        from .experiment import RunConfig

        cfg_file = args.out / "config.json"
        if not cfg_file.exists():
            raise FileNotFoundError(f"--resume: {args.out} holds no run to resume (no config.json)")
        cfg = RunConfig.from_dict(json.loads(cfg_file.read_text()))
    else:
        cfg = config_from_args(args)
    records = run_experiment(cfg, args.out, resume=args.resume, quiet=args.quiet)
    from .report import make_report

    report = make_report(args.out)
    if not args.quiet:
        print(f"report: {report}")
        last = records[-1]
        print(f"done: {len(records)} checkpoints in {args.out}; final eval loss {last['eval_loss']:.4g}, "
              f"accuracy {last['accuracy']:.3f}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import run_sweep

    overrides: dict = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    for key in ("seed", "device", "dtype"):
        if getattr(args, key) is not None:
            if key == "seed":
                raise ValueError("--seed: a sweep takes --seeds")
            overrides[key] = getattr(args, key)
    rows, table = run_sweep(args.out, preset=args.preset, gains=args.gains, seeds=args.seeds, models=args.models,
                            overrides=overrides, quiet=args.quiet, report=args.report)
    print(table)
    if args.report and not args.quiet:
        print(f"report: {args.out / 'report.html'}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import make_report

    print(make_report(args.folder))
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .user_analysis import analyze_user_model

    out = analyze_user_model(args.target, args.out, top_k=args.top_k, lyapunov=args.lyapunov,
                             seed=args.seed or 0, device=args.device, dtype=args.dtype, quiet=args.quiet,
                             report=args.report)
    if not args.quiet:
        print(f"wrote {out}")
    return 0


def _any_option(args: argparse.Namespace) -> bool:
    return any(getattr(args, k, None) is not None for k in _CONFIG_KEYS) or args.preset != "laptop"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handlers = {"run": _cmd_run, "sweep": _cmd_sweep, "report": _cmd_report, "analyze": _cmd_analyze}
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, ImportError, OSError) as exc:
        print(f"kpflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nkpflow {args.command}: interrupted; finished checkpoints are kept, continue with --resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
