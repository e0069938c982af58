"""The ``kpflow`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import sys
import textwrap
import threading
from pathlib import Path
from typing import Iterator, Sequence

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
      kpflow run --resume runs/memory-pro      continue an interrupted run
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

    interrupting: Ctrl-C or SIGTERM stops a run or sweep cleanly; finished
    checkpoints are kept and the command to continue is printed.

    exit status: 0 on success, 1 when training diverged (non-finite loss or
    parameters; finished checkpoints are kept), 2 on bad options or unusable
    folders, 130 when interrupted (Ctrl-C), 143 when terminated (SIGTERM)."""
)


def _run_default(key: str) -> str:
    """'(default: X)' for a run option, with the paper preset's value when it differs."""
    from .experiment import PRESETS, RunConfig

    def show(v) -> str:
        return "off" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    text = f"default: {show(getattr(RunConfig, key))}"
    if key in PRESETS["paper"] and PRESETS["paper"][key] != getattr(RunConfig, key):
        text += f"; paper: {show(PRESETS['paper'][key])}"
    return f"({text})"


def _add_common(p: argparse.ArgumentParser, *, seed: bool = True, model_defaults: bool = False) -> None:
    """--seed, --device, --dtype, --quiet; model_defaults: device and dtype default to the user model's."""
    if seed:
        p.add_argument("--seed", type=int, metavar="N", help="random seed (default: 0)")
    else:  # kept only to answer with a pointer to --seeds
        p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--device", metavar="DEVICE",
                   help="torch device, e.g. cpu, cuda or cuda:1 "
                        + ("(default: the model's device)" if model_defaults else _run_default("device")))
    p.add_argument("--dtype", choices=("float32", "float64"),
                   help="floating dtype " + ("(default: the model's dtype)" if model_defaults
                                             else _run_default("dtype")))
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress messages")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    d = _run_default
    g = p.add_argument_group("model and training")
    g.add_argument("--preset", choices=("laptop", "paper"), default="laptop",
                   help="laptop: a 64-unit GRU, minutes on a CPU; paper: 256 units, 90 steps, Adam 1e-3, "
                        "5000 iterations (default: laptop)")
    g.add_argument("--config", type=Path, metavar="FILE",
                   help="JSON file of run options, applied over the preset; explicit flags override it")
    g.add_argument("--task", metavar="NAME",
                   help="memory_pro, memory_anti, delay_pro, delay_anti, flip_flop or multitask " + d("task"))
    g.add_argument("--model", metavar="KIND", help="gru, lstm, rnn, rnn_relu, ctrnn or node " + d("model"))
    g.add_argument("--hidden-size", type=int, dest="hidden_size", metavar="N",
                   help="number of hidden units " + d("hidden_size"))
    g.add_argument("--gain", type=float, metavar="G",
                   help="initial recurrent gain g: W ~ g/√H N(0,1) " + d("gain"))
    g.add_argument("--optimizer", choices=("adam", "sgd"), help="optimizer " + d("optimizer"))
    g.add_argument("--lr", type=float, metavar="RATE", help="learning rate " + d("lr"))
    g.add_argument("--lr-schedule", dest="lr_schedule", choices=("constant", "cosine", "step"),
                   help="learning-rate schedule " + d("lr_schedule"))
    g.add_argument("--iterations", type=int, metavar="N", help="training iterations " + d("iterations"))
    g.add_argument("--batch-size", type=int, dest="batch_size", metavar="N",
                   help="trials per training batch " + d("batch_size"))
    g.add_argument("--early-stop-loss", type=float, dest="early_stop_loss", metavar="LOSS",
                   help="stop when the training loss falls below LOSS " + d("early_stop_loss"))
    a = p.add_argument_group("analysis")
    a.add_argument("--eval-batch-size", type=int, dest="eval_batch_size", metavar="N",
                   help="trials in the fixed analysis batch " + d("eval_batch_size"))
    a.add_argument("--checkpoints", type=int, metavar="N",
                   help="number of log-spaced analysis checkpoints, ≥ 2; at most iterations + 1 distinct ones are made " + d("checkpoints"))
    a.add_argument("--top-k", type=int, dest="top_k", metavar="K", help="eigenvalues per spectrum " + d("top_k"))
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


RUN_EPILOG = textwrap.dedent(
    """\
    examples:
      kpflow run --out runs/memory-pro
      kpflow run --resume runs/memory-pro
      kpflow run --out runs/lstm --model lstm --gain 1.5 --iterations 2000

    Ctrl-C or SIGTERM stops the run; finished checkpoints are kept and
    kpflow run --resume DIR continues it with the same numbers as an
    uninterrupted run. kpflow report DIR renders a report at any time."""
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpflow", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from . import __version__
    from .sweep import SWEEP_PRESETS

    parser.add_argument("--version", action="version", version=f"kpflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="train a model and analyse it at checkpoints",
                         description="Train a recurrent model on a task and follow K, P and P K P* over training.",
                         epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--out", type=Path, metavar="DIR", help="output folder (required unless given to --resume)")
    run.add_argument("--resume", nargs="?", const=True, default=False, metavar="DIR",
                     help="continue the interrupted run in DIR (or in --out); with no other options its saved "
                          "config.json is used, otherwise the options must give the same configuration")
    _add_run_options(run)
    _add_common(run)

    laptop, paper = SWEEP_PRESETS["laptop"], SWEEP_PRESETS["paper"]

    def listing(key: str) -> str:
        def show(values) -> str:
            return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)

        text = f"default: {show(laptop[key])}"
        if tuple(paper[key]) != tuple(laptop[key]):
            text += f"; paper: {show(paper[key])}"
        return f"({text})"

    sweep = sub.add_parser(
        "sweep", help="run a grid of gains / seeds / model kinds",
        description="Run one kpflow run per (model, gain, seed) in sub-folders of --out, tabulate the trends "
                    "(mean ± standard error over seeds) and render a report. Re-running the same command on "
                    "the same folder continues an interrupted sweep: finished runs are skipped, interrupted "
                    "ones resumed.",
        epilog="Ctrl-C or SIGTERM stops the sweep; finished runs and checkpoints are kept and the command "
               "to continue (the same command again) is printed.")
    sweep.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (required)")
    sweep.add_argument("--preset", choices=("laptop", "paper"), default="laptop",
                       help=f"laptop: {len(laptop['gains'])} gains × {len(laptop['seeds'])} seeds of a "
                            f"{laptop['base']['hidden_size']}-unit GRU and a {laptop['base']['hidden_size']}-unit "
                            "tanh RNN, minutes on two CPU cores; paper: the paper's scale (default: laptop)")
    sweep.add_argument("--gains", type=float, nargs="+", metavar="G",
                       help="initial gains g " + listing("gains"))
    sweep.add_argument("--seeds", type=int, nargs="+", metavar="N",
                       help="seeds " + listing("seeds"))
    sweep.add_argument("--models", nargs="+", metavar="KIND",
                       help="model kinds, as for run --model " + listing("models"))
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a run option, e.g. --set iterations=500 (JSON values; repeatable)")
    sweep.add_argument("--no-report", dest="report", action="store_false", help="skip the figures and report")
    _add_common(sweep, seed=False)

    report = sub.add_parser("report", help="render figures and report.html for a run or sweep folder",
                            description="Render PNG figures and a self-contained report.html in a run or sweep "
                                        "folder. An unfinished run gets a report of its finished checkpoints, "
                                        "marked as partial.")
    report.add_argument("folder", type=Path, metavar="DIR", help="a folder written by kpflow run or kpflow sweep")

    analyze = sub.add_parser(
        "analyze", help="apply the checkpoint analysis once to your own model",
        description="Import module:function, call it with no arguments, and analyse what it returns: a dict "
                    "(or tuple in this order) with model and inputs [B, T, I], and optionally readout, loss_fn "
                    "and targets (for the error signal), and h0. Writes results.jsonl and report.html to --out.")
    analyze.add_argument("target", metavar="MODULE:FUNCTION",
                         help="e.g. mypackage.models:trained_gru or path/to/file.py:make")
    analyze.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (required)")
    analyze.add_argument("--top-k", type=int, default=10, dest="top_k", metavar="K",
                         help="eigenvalues per spectrum (default: 10)")
    analyze.add_argument("--no-lyapunov", dest="lyapunov", action="store_false", help="skip the Lyapunov spectrum")
    analyze.add_argument("--no-report", dest="report", action="store_false", help="skip the figures and report")
    _add_common(analyze, model_defaults=True)
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
    from .report import make_report, partial_notice

    path = make_report(args.folder)
    notice = partial_notice(args.folder)
    if notice:
        print(f"kpflow report: note: {notice}", file=sys.stderr)
    print(path)
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a run stops as on Ctrl-C."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While the command runs, SIGTERM raises :class:`Terminated`; the previous handler is restored after."""
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _command_line(argv: Sequence[str]) -> str:
    return shlex.join(["kpflow", *argv])


def _interrupt_hint(args: argparse.Namespace, argv: Sequence[str], what: str) -> str:
    """One line: what was kept and the exact command that continues."""
    if args.command == "run":
        from .experiment import run_progress

        out = shlex.quote(str(args.out))
        progress = run_progress(args.out)
        if progress is None:
            return f"kpflow run: {what} before the run started, nothing to resume; start it again with: " \
                   f"{_command_line(argv)}"
        if progress["finished"]:
            return f"kpflow run: {what} after the run finished; render its report with: kpflow report {out}"
        if progress["last_iteration"] is None:
            kept = "before the first checkpoint finished"
        else:
            planned = progress["checkpoints_planned"]
            kept = (f"last finished checkpoint: iteration {progress['last_iteration']} of {progress['iterations']} "
                    f"({progress['checkpoints_done']}{f' of {planned}' if planned else ''} checkpoints kept)")
        return f"kpflow run: {what}; {kept}; resume with: kpflow run --resume {out}"
    if args.command == "sweep":
        return f"kpflow sweep: {what}; {_sweep_progress(args.out)}; continue with the same command: " \
               f"{_command_line(argv)}"
    return f"kpflow {args.command}: {what}"


def _sweep_progress(out: Path) -> str:
    from .experiment import run_progress
    from .sweep import _run_name

    try:
        cfg = json.loads((out / "sweep_config.json").read_text())
        names = [_run_name(m, float(g), int(s)) for m in cfg["models"] for g in cfg["gains"] for s in cfg["seeds"]]
    except (OSError, ValueError, KeyError, TypeError):
        return "no run had started"
    done = 0
    current = None
    for name in names:
        progress = run_progress(out / name)
        if progress is not None and progress["finished"]:
            done += 1
        elif progress is not None and current is None:
            last = progress["last_iteration"]
            current = f"{name} stopped " + (f"at checkpoint iteration {last} of {progress['iterations']}"
                                            if last is not None else "before its first checkpoint")
    return f"{done} of {len(names)} runs finished" + (f", {current}" if current else "") + \
        "; finished runs and checkpoints are kept"


def _resume_folder(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``run --resume DIR`` names the folder; ``--resume`` alone takes it from --out."""
    if isinstance(args.resume, str):
        if args.out is not None and args.out != Path(args.resume):
            parser.error(f"run: --resume {args.resume} and --out {args.out} name different folders; give one")
        args.out = Path(args.resume)
        args.resume = True
    if args.out is None:
        parser.error("run: the output folder is required: --out DIR (or --resume DIR to continue a run)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "run":
        _resume_folder(args, parser)
    handlers = {"run": _cmd_run, "sweep": _cmd_sweep, "report": _cmd_report, "analyze": _cmd_analyze}
    from .experiment import TrainingDiverged

    try:
        with _sigterm_interrupts():
            return handlers[args.command](args)
    except TrainingDiverged as exc:
        print(f"kpflow {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, ImportError, OSError) as exc:
        print(f"kpflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        try:
            hint = _interrupt_hint(args, argv, what)
        except Exception:  # noqa: BLE001 - the hint must never hide the interrupt
            hint = f"kpflow {args.command}: {what}; finished checkpoints are kept"
        print("\n" + hint, file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
