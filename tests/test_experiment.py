"""The main job: kpflow run / sweep / report / analyze, resume, files, CLI manners."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from kpflow import cli
from kpflow.checkpoint_analysis import analyze_checkpoint, pca_dimension
from kpflow.experiment import RunConfig, TrainingDiverged, checkpoint_schedule, run_experiment
from kpflow.io import load_checkpoint, read_jsonl

TINY = dict(hidden_size=6, iterations=12, batch_size=8, eval_batch_size=3, checkpoints=4, top_k=3,
            task_options=dict(stimulus_steps=3, memory_steps=3, response_steps=3))


def strip(records):
    """Records without wall-clock timings (they differ between runs)."""
    return [{k: v for k, v in r.items() if k != "timings_s"} for r in records]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = RunConfig(**TINY)
    records = run_experiment(cfg, out, quiet=True)
    return cfg, out, records


def test_schedule_is_log_spaced_with_ends():
    s = checkpoint_schedule(1000, 6)
    assert s[0] == 0 and s[-1] == 1000 and s == sorted(set(s))
    assert len(s) == 6
    gaps = [b / a for a, b in zip(s[1:-1], s[2:])]
    assert max(gaps) / min(gaps) < 1.5  # roughly geometric


def test_run_writes_records_and_files(finished_run):
    cfg, out, records = finished_run
    assert [r["iteration"] for r in records] == checkpoint_schedule(cfg.iterations, cfg.checkpoints)
    assert strip(read_jsonl(out / "results.jsonl")) == strip(json.loads(json.dumps(records)))
    for name in ("config.json", "summary.json", "results.jsonl"):
        assert (out / name).stat().st_size > 0
    rec = records[-1]
    for key in ("eval_loss", "accuracy", "eig_K", "eig_PPt", "eig_PKP", "rank_K", "rank_PPt", "rank_PKP",
                "misdirection", "flow_alignment", "lyapunov", "kaplan_yorke", "pca_dim"):
        assert key in rec, key
    assert len(rec["eig_K"]) == cfg.top_k
    assert all(v >= 0 for v in rec["eig_K"] + rec["eig_PKP"] + rec["eig_PPt"])
    assert rec["eig_K"] == sorted(rec["eig_K"], reverse=True)
    assert records[0]["flow_alignment"] is None and records[1]["flow_alignment"] is not None
    assert -1 <= records[1]["flow_alignment"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["train_losses"]) == cfg.iterations
    ckpts = sorted((out / "checkpoints").glob("iter_*.pt"))
    state = load_checkpoint(ckpts[-1])
    assert state["iteration"] == cfg.iterations
    assert set(state["model"]) == {n for n, _ in torch.nn.GRUCell(3, 6).named_parameters()}


def test_eval_loss_matches_model(finished_run):
    """The recorded loss is the task loss of the checkpointed model on the evaluation batch."""
    from kpflow.experiment import _Setup

    cfg, out, records = finished_run
    setup = _Setup(cfg)
    state = load_checkpoint(sorted((out / "checkpoints").glob("iter_*.pt"))[-1])
    setup.model.load_state_dict(state["model"])
    setup.readout.load_state_dict(state["readout"])
    with torch.no_grad():
        loss = float(setup.task.loss(setup.outputs(setup.eval_batch.inputs), setup.eval_batch))
    assert math.isclose(loss, records[-1]["eval_loss"], rel_tol=1e-5)


def test_resume_after_interrupt_gives_same_results(tmp_path, finished_run):
    cfg, _, reference = finished_run
    out = tmp_path / "interrupted"
    calls = {"n": 0}

    def flaky(setup, previous, quiet=True):
        calls["n"] += 1
        if calls["n"] == 3:  # die during the third checkpoint's analysis
            raise KeyboardInterrupt
        return analyze_checkpoint(setup, previous, quiet=quiet)

    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, out, quiet=True, analyze=flaky)
    partial = read_jsonl(out / "results.jsonl")
    assert [r["iteration"] for r in partial] == [r["iteration"] for r in reference[:2]]
    records = run_experiment(cfg, out, resume=True, quiet=True)
    assert [r["iteration"] for r in records] == [r["iteration"] for r in reference]
    assert_close(strip(records), strip(json.loads(json.dumps(reference))))


def assert_close(got, want, path="records"):
    """Nested equality with a relative tolerance on floats; None must match None."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for key in want:
            assert_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and want is not None:
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7), path
    else:
        assert got == want, path


def test_refuses_to_overwrite_and_checks_resume_config(tmp_path, finished_run):
    cfg, out, _ = finished_run
    with pytest.raises(FileExistsError, match="--resume"):
        run_experiment(cfg, out, quiet=True)
    with pytest.raises(ValueError, match=r"differs.*lr: saved 0\.003, requested 0\.5"):
        run_experiment(cfg.replace(lr=0.5), out, resume=True, quiet=True)
    with pytest.raises(FileNotFoundError, match="resume"):
        run_experiment(cfg, tmp_path / "empty", resume=True, quiet=True)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(hidden_size=0), "hidden_size"),
        (dict(optimizer="rmsprop"), "optimizer"),
        (dict(checkpoints=1), "checkpoints"),
        (dict(lr=-1.0), "lr"),
        (dict(dtype="float16"), "dtype"),
        (dict(gain=float("nan")), "gain"),
    ],
)
def test_bad_config_is_named(change, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**change)


def test_report_files(finished_run):
    from kpflow.report import make_report

    _, out, _ = finished_run
    html = make_report(out)
    assert html.stat().st_size > 1000
    figures = sorted(out.glob("fig_*.png"))
    assert {p.name for p in figures} >= {"fig_loss.png", "fig_effective_rank.png", "fig_spectra.png", "fig_dynamics.png"}
    for p in figures:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
    text = html.read_text()
    assert text.count("data:image/png;base64,") == len(figures)
    assert "Key numbers" in text


def test_pca_dimension_known_covariance():
    g = torch.Generator().manual_seed(0)
    # variances 4, 1, 1 along orthogonal axes: PR = 36 / 18 = 2
    X = torch.randn(20000, 3, generator=g, dtype=torch.float64) * torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)
    d = pca_dimension(X.reshape(100, 200, 3))
    assert d["participation"] == pytest.approx(2.0, rel=0.03)
    assert d["var95"] == 3


def test_cli_run_errors_are_clear(tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("x")
    assert cli.main(["run", "--out", str(blocked / "sub"), "--quiet"]) == 2
    assert "out" in capsys.readouterr().err
    assert cli.main(["run", "--out", str(tmp_path / "r"), "--hidden-size", "0", "--quiet"]) == 2
    assert "hidden_size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run", "--out", str(tmp_path / "r"), "--optimizer", "rmsprop"])


def test_cli_help_reads_like_a_man_page(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for word in ("run", "sweep", "report", "analyze", "--resume", "results.jsonl", "P K P*"):
        assert word in text


def test_cli_sweep_and_report(tmp_path, capsys):
    out = tmp_path / "sweep"
    sets = ["--set", "hidden_size=5", "--set", "iterations=6", "--set", "checkpoints=2", "--set", "eval_batch_size=2",
            "--set", "top_k=2", "--set", "batch_size=4", "--set",
            'task_options={"stimulus_steps": 2, "memory_steps": 2, "response_steps": 2}', "--set", "lyapunov=false"]
    grid = ["--gains", "0.5", "1.5", "--seeds", "0", "1", "--models", "gru"]
    code = cli.main(["sweep", "--out", str(out), *grid, "--quiet", *sets])
    assert code == 0
    table = capsys.readouterr().out
    assert "| gru | 0.5 | 2 |" in table and "| gru | 1.5 | 2 |" in table
    sweep = json.loads((out / "sweep.json").read_text())
    assert len(sweep["rows"]) == 4
    assert (out / "fig_sweep.png").stat().st_size > 2000
    assert (out / "report.html").stat().st_size > 1000
    assert len(list(out.glob("gru_g*_s*/results.jsonl"))) == 4
    # running again continues (nothing to do) and gives the same table
    assert cli.main(["sweep", "--out", str(out), *grid, "--quiet", *sets]) == 0
    assert capsys.readouterr().out == table


def test_cli_analyze_user_model(tmp_path):
    module = tmp_path / "mymodel.py"
    module.write_text(textwrap.dedent(
        """
        import torch
        def make():
            torch.manual_seed(0)
            model = torch.nn.GRU(3, 5, num_layers=2)
            inputs = torch.randn(2, 6, 3)
            readout = torch.nn.Linear(5, 2)
            return dict(model=model, inputs=inputs, readout=readout, loss_fn=torch.nn.MSELoss(),
                        targets=torch.zeros(2, 6, 2))
        """
    ))
    out = tmp_path / "analysis"
    assert cli.main(["analyze", f"{module}:make", "--out", str(out), "--top-k", "3", "--quiet"]) == 0
    (rec,) = read_jsonl(out / "results.jsonl")
    assert len(rec["eig_K"]) == 3 and rec["eval_loss"] > 0
    assert (out / "report.html").exists()


def test_python_dash_m_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kpflow", "--version"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], env={**os.environ})
    assert proc.returncode == 0 and "kpflow" in proc.stdout


@pytest.mark.parametrize("change, match", [(dict(task="nope"), "nope"), (dict(model="transformer"), "transformer")])
def test_failed_start_leaves_folder_usable(tmp_path, change, match):
    out = tmp_path / "r"
    with pytest.raises(ValueError, match=match):
        run_experiment(RunConfig(**{**TINY, **change}), out, quiet=True)
    assert not (out / "config.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="device"):
        RunConfig(device="cuda")


# ------------------------------------------------------------- divergence
DIVERGING = dict(TINY, model="rnn_relu", gain=3.0, lr=50.0, iterations=3, checkpoints=2)


def test_diverging_run_stops_cleanly_and_keeps_checkpoints(tmp_path):
    out = tmp_path / "div"
    with pytest.raises(TrainingDiverged, match=r"training diverged.*lower --lr"):
        run_experiment(RunConfig(**DIVERGING), out, quiet=True)
    assert len(read_jsonl(out / "results.jsonl")) >= 1  # initialisation was measured and kept
    assert not (out / "summary.json").exists()


def test_cli_reports_divergence_with_exit_1(tmp_path, capsys, monkeypatch):
    import kpflow.experiment as experiment

    def diverge(*args, **kwargs):
        raise TrainingDiverged("training diverged: the loss of iteration 7 is nan")

    monkeypatch.setattr(experiment, "run_experiment", diverge)
    assert cli.main(["run", "--out", str(tmp_path / "r"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "kpflow run: error: training diverged" in err and "Traceback" not in err


def test_sweep_leaves_diverged_runs_out(tmp_path):
    from kpflow.sweep import DIVERGED, run_sweep

    base = {k: v for k, v in DIVERGING.items() if k not in ("model", "gain")}
    rows, table = run_sweep(tmp_path, models=["rnn_relu"], gains=[3.0], seeds=[0], overrides=base,
                            quiet=True, report=False)
    assert rows == []
    assert "Diverged during training, left out: rnn_relu_g3_s0" in table
    marker = tmp_path / "rnn_relu_g3_s0" / DIVERGED
    assert "training diverged" in json.loads(marker.read_text())["error"]
    # a second call does not retry it
    rows2, table2 = run_sweep(tmp_path, models=["rnn_relu"], gains=[3.0], seeds=[0], overrides=base,
                              quiet=True, report=False)
    assert rows2 == [] and table2 == table


def test_refuses_a_non_empty_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not empty \(notes.txt\)"):
        run_experiment(RunConfig(**TINY), tmp_path, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_progress_bars_are_throttled_in_batch_logs(monkeypatch):
    import io

    from kpflow._progress import progress_bar

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal, like a scheduler's log file
    bar = progress_bar(range(3), disable=False)
    assert bar.mininterval == 30.0
    bar.close()
    bar = progress_bar(range(3), disable=False, mininterval=1.0)  # an explicit choice wins
    assert bar.mininterval == 1.0
    bar.close()
