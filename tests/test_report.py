"""Reports and the run/sweep command line from a user's side: figures that read
right, partial runs said as such, interrupts that say how to continue, help
with defaults. Records are synthetic (no training), so these tests are fast."""

from __future__ import annotations

import json
import os
import shlex
import signal
import time

import pytest

from kpflow import cli, report
from kpflow.experiment import RunConfig, checkpoint_schedule, run_progress
from kpflow.io import write_json, write_jsonl
from kpflow.sweep import SWEEP_PRESETS

TINY = dict(hidden_size=6, iterations=12, batch_size=8, eval_batch_size=3, checkpoints=4, top_k=3,
            task_options=dict(stimulus_steps=3, memory_steps=3, response_steps=3))
PNG = b"\x89PNG\r\n\x1a\n"


def record(iteration: int, k: int = 3) -> dict:
    """A checkpoint record shaped like analyze_checkpoint's, with a flat P Pᵀ
    spectrum and var95 unresolved (the top k hold < 95 % of the trace)."""
    rank = lambda pr: {"participation": pr, "participation_se": 0.1, "trace": 100.0, "var95": None,  # noqa: E731
                       "entropy_topk": 2.9}
    return {
        "iteration": iteration, "train_loss": 0.3, "eval_loss": 0.4 / (1 + iteration), "accuracy": 0.1,
        "eig_K": [20.0, 18.0, 15.0][:k], "eig_PPt": [7.01, 7.0, 6.99][:k], "eig_PKP": [90.0, 60.0, 45.0][:k],
        "rank_K": rank(8.0), "rank_PPt": rank(84.0 - iteration), "rank_PKP": rank(6.0),
        "misdirection": 0.42, "flow_alignment": None if iteration == 0 else 0.7, "kaplan_yorke": 0.0,
        "pca_dim": {"participation": 2.6, "var95": 4},
    }


def make_run(folder, iterations, finished: bool):
    cfg = RunConfig(**TINY)
    write_json(folder / "config.json", cfg.to_dict())
    its = [i for i in checkpoint_schedule(cfg.iterations, cfg.checkpoints) if i in iterations]
    write_jsonl(folder / "results.jsonl", [record(i) for i in its])
    if finished:
        write_json(folder / "summary.json", {"train_losses": [0.3] * cfg.iterations, "stopped_early": False})
    return folder


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A finished run's report, rendered once: (folder, html text, figures by file name)."""
    folder = make_run(tmp_path_factory.mktemp("finished"), {0, 1, 3, 12}, finished=True)
    return (folder, *render(folder))


def render(folder):
    """make_report(folder): the html text and the figures by file name."""
    figs = {}
    original = report._save

    def save(fig, path):
        figs[path.name] = fig
        return original(fig, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "_save", save)
        html = report.make_report(folder).read_text()
    return html, figs


# ------------------------------------------------------------------ figures
def test_run_figures_are_pngs_with_iteration_zero_at_zero(rendered):
    folder, html, captured = rendered
    names = {"fig_loss.png", "fig_effective_rank.png", "fig_spectra.png", "fig_dynamics.png"}
    assert names <= set(captured)
    for name in names:
        data = (folder / name).read_bytes()
        assert data[:8] == PNG and len(data) > 2000, name
    assert html.count("data:image/png;base64,") == len(list(folder.glob("fig_*.png")))
    assert "Partial run" not in html
    iteration_axes = [ax for name in ("fig_loss.png", "fig_effective_rank.png", "fig_dynamics.png")
                      for ax in captured[name].axes if ax.get_xlabel().startswith("iteration")]
    assert len(iteration_axes) == 1 + 2 + 3
    for ax in iteration_axes:
        ax.figure.canvas.draw()
        assert ax.get_xscale() == "symlog"
        assert min(min(line.get_xdata()) for line in ax.lines) == 0  # initialisation drawn at 0
        assert ax.get_xlim()[0] < 0 < ax.get_xlim()[1]
        labels = {t.get_text() for t in ax.get_xticklabels()}
        assert "0" in labels and "10" in labels, labels


def test_flat_spectrum_has_readable_log_ticks(rendered):
    _, _, captured = rendered
    for ax in captured["fig_spectra.png"].axes + captured["fig_effective_rank.png"].axes + captured["fig_loss.png"].axes:
        ax.figure.canvas.draw()
        lo, hi = ax.get_ylim()
        minor = [t.get_text() for t in ax.yaxis.get_minorticklabels() if t.get_text()]
        assert minor == [], (ax.get_title(), minor)
        shown = [t for t, lab in zip(ax.get_yticks(), ax.get_yticklabels()) if lo <= t <= hi and lab.get_text()]
        assert 2 <= len(shown) <= 8, (ax.get_title(), shown)  # a scale to read, no crowd of labels


def test_unresolved_var95_is_drawn_as_a_lower_bound_with_a_note(rendered):
    _, _, captured = rendered
    var95 = [ax for ax in captured["fig_effective_rank.png"].axes if "95" in ax.get_title()][0]
    notes = var95.get_legend().get_title().get_text()  # heads the legend, below the panel
    assert "var95 > 3" in notes and "95 % of the trace" in notes
    bounds = [line for line in var95.lines if "lower bound" in line.get_label()]
    assert len(bounds) == 3 and all(list(line.get_ydata()) == [3, 3, 3, 3] for line in bounds)


def _boxes(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()  # a closed figure keeps no drawing canvas
    renderer = fig.canvas.get_renderer()
    return renderer, [(ax, ax.get_legend()) for ax in fig.axes if ax.get_legend() is not None]


def test_legends_sit_below_the_panels_and_hide_no_data(rendered):
    _, _, captured = rendered
    for name in ("fig_loss.png", "fig_effective_rank.png", "fig_spectra.png"):
        fig = captured[name]
        renderer, legends = _boxes(fig)
        assert len(legends) == len(fig.axes), name  # every panel of these figures has a legend
        for ax, legend in legends:
            box = legend.get_window_extent(renderer)
            assert box.y1 <= ax.bbox.y0, (name, ax.get_title())  # below the axes: covers no curve
            under = ax.xaxis.get_tightbbox(renderer)
            assert box.y1 <= under.y0 + 1, (name, ax.get_title())  # and below the tick labels and x label
            assert ax.bbox.x0 - 60 < (box.x0 + box.x1) / 2 < ax.bbox.x1 + 60  # under its own panel
        others = [legend.get_window_extent(renderer) for _, legend in legends]
        for i, one in enumerate(others):
            assert not any(one.overlaps(two) for two in others[i + 1:]), name


def test_log_y_leaves_missing_or_non_positive_values_linear():
    plt = report._pyplot()
    for ys in ([None, None], [0.0, -1.0], []):
        fig, ax = plt.subplots()
        if ys:
            ax.plot([0, 1], report._values(ys), "o-")
        assert report._log_y(ax) is False and ax.get_yscale() == "linear"
        fig.canvas.draw()  # a log axis of these raised "Data cannot be log-scaled"
        plt.close(fig)
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [0.0, 0.5, None], "o-")
    assert report._log_y(ax) is True and ax.get_yscale() == "log"
    fig.canvas.draw()
    plt.close(fig)


@pytest.mark.parametrize("loss", [None, 0.0])
def test_run_without_positive_losses_still_gets_a_report(tmp_path, loss):
    folder = make_run(tmp_path, {0, 1, 3, 12}, finished=True)
    records = [dict(record(i), eval_loss=loss, train_loss=loss) for i in (0, 1, 3, 12)]
    write_jsonl(folder / "results.jsonl", records)
    write_json(folder / "summary.json", {"train_losses": [loss] * 12, "stopped_early": False})
    _, figs = render(folder)
    ax = figs["fig_loss.png"].axes[0]
    assert ax.get_yscale() == "linear"
    assert "no loss recorded" in " ".join(t.get_text() for t in ax.texts)


def test_iteration_axis_never_labels_minus_zero(tmp_path):
    assert [report._whole(v) for v in (-0.0, -0.15, 0.0, 1.0, 1000.0)] == ["0", "0", "0", "1", "1,000"]
    folder = make_run(tmp_path, {0}, finished=False)  # one checkpoint of a run: x limits around 0
    _, figs = render(folder)
    for ax in figs["fig_effective_rank.png"].axes:
        ax.figure.canvas.draw()
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert labels == ["0", "1"], labels


# ------------------------------------------------------- analyze folders
def analysed_record(loss: bool) -> dict:
    """A record as ``kpflow analyze`` writes it: iteration 0 of a model trained
    elsewhere; without readout/targets it has no loss at all."""
    r = {k: v for k, v in record(0).items() if k not in ("train_loss", "eval_loss", "accuracy", "flow_alignment")}
    r["lyapunov"] = [-0.2, -0.5, -0.9]
    return dict(r, eval_loss=0.25, accuracy=0.5) if loss else r


@pytest.mark.parametrize("loss", [False, True])
def test_analyze_folder_report_has_no_training_axis(tmp_path, loss):
    write_json(tmp_path / "config.json", {"target": "m.py:make", "top_k": 3})
    write_jsonl(tmp_path / "results.jsonl", [analysed_record(loss)])
    (tmp_path / "fig_loss.png").write_bytes(PNG)  # left by an earlier report version
    html, figs = render(tmp_path)
    assert set(figs) == {"fig_effective_rank.png", "fig_spectra.png", "fig_lyapunov.png"}
    assert sorted(p.name for p in tmp_path.glob("fig_*.png")) == sorted(figs)  # no loss over training
    for fig in figs.values():
        fig.canvas.draw()
        for ax in fig.axes:
            assert not ax.get_xlabel().startswith("iteration") and ax.get_xscale() == "linear"
            legend = ax.get_legend()
            labels = [t.get_text() for t in legend.get_texts()] if legend else []
            assert not any("initialisation" in lab or "iteration" in lab for lab in labels), labels
    for ax in figs["fig_spectra.png"].axes:
        assert [t.get_text() for t in ax.get_legend().get_texts()][0].startswith("analysed model (λ₁=")
    pr, var95 = figs["fig_effective_rank.png"].axes
    ticks = [t.get_text() for t in pr.get_xticklabels()]
    assert ticks == ["K", "P Pᵀ", "P K P*", "hidden states\n(PCA)"]
    assert [round(b.get_height(), 6) for b in pr.patches] == [8.0, 84.0, 6.0, 2.6]
    assert pr.get_yscale() == "log"
    assert [b.get_height() for b in var95.patches] == [3, 3, 3, 4]  # var95 > k = 3 drawn at 3; PCA resolved
    assert "var95 > 3" in var95.get_legend().get_title().get_text()
    assert "initialisation" not in html and "over training" not in html
    assert "Key numbers of the analysed model" in html and "<th>iteration</th>" not in html
    assert ("No loss: the analysed model came without readout/targets" in html) is not loss
    assert ("<th>loss</th>" in html) is loss


def test_kpflow_analyze_of_a_bare_model_renders_its_report(tmp_path):
    """The trial's case: a model returned without readout, loss or targets."""
    from kpflow.user_analysis import analyze_user_model

    (tmp_path / "mymod.py").write_text("def bare():\n    import torch\n    torch.manual_seed(0)\n"
                                       "    return dict(model=torch.nn.GRU(3, 5), inputs=torch.randn(4, 6, 3))\n")
    out = analyze_user_model(f"{tmp_path / 'mymod.py'}:bare", tmp_path / "a_bare", top_k=3, lyapunov=False,
                             quiet=True)
    html = (out / "report.html").read_text()
    assert "No loss: the analysed model came without readout/targets" in html
    assert sorted(p.name for p in out.glob("fig_*.png")) == ["fig_effective_rank.png", "fig_spectra.png"]


# ------------------------------------------------------------- partial runs
def test_partial_run_report_says_so_at_the_top(tmp_path, capsys):
    folder = make_run(tmp_path / "run", {0, 1}, finished=False)
    assert cli.main(["report", str(folder)]) == 0
    err = capsys.readouterr().err
    assert "2 of 4 checkpoints" in err and f"kpflow run --resume {folder}" in err
    html = (folder / "report.html").read_text()
    assert "Partial run" in html
    assert html.index("Partial run") < html.index("Configuration")
    assert "2 of 4 checkpoints" in html and "iteration 1 of 12" in html
    assert f"kpflow run --resume {folder}" in html
    progress = run_progress(folder)
    assert progress["finished"] is False and progress["last_iteration"] == 1


def test_analyze_folder_and_finished_run_are_not_called_partial(tmp_path):
    write_json(tmp_path / "config.json", {"target": "m.py:make", "top_k": 3})
    write_jsonl(tmp_path / "results.jsonl", [record(0)])
    assert run_progress(tmp_path) is None and report.partial_notice(tmp_path) is None
    done = make_run(tmp_path / "done", {0, 1, 3, 12}, finished=True)
    assert run_progress(done)["finished"] is True and report.partial_notice(done) is None


def test_unfinished_sweep_folder_says_how_to_continue(tmp_path, capsys):
    write_json(tmp_path / "sweep_config.json", {"models": ["gru"], "gains": [1.0], "seeds": [0]})
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "unfinished sweep" in capsys.readouterr().err


# --------------------------------------------------------------- interrupts
def test_interrupted_run_prints_the_resume_command(tmp_path, monkeypatch, capsys):
    out = tmp_path / "my run"
    seen = {}

    def interrupted(cfg, folder, resume=False, quiet=False):
        seen["resume"] = resume
        folder.mkdir(exist_ok=True)
        make_run(folder, {0, 1, 3}, finished=False)
        raise KeyboardInterrupt

    monkeypatch.setattr("kpflow.experiment.run_experiment", interrupted)
    assert cli.main(["run", "--out", str(out), "--quiet", *"--hidden-size 6 --iterations 12".split()]) == 130
    hint = capsys.readouterr().err.strip()
    assert len(hint.splitlines()) == 1
    assert "last finished checkpoint: iteration 3 of 12 (3 of 4 checkpoints kept)" in hint
    assert hint.endswith(f"kpflow run --resume {shlex.quote(str(out))}")
    # the printed command works: --resume DIR names the folder
    assert cli.main(shlex.split(hint.split("resume with: ")[1])[1:] + ["--quiet"]) == 130
    assert seen["resume"] is True


def test_sigterm_stops_a_run_like_ctrl_c_and_the_handler_is_restored(tmp_path, monkeypatch, capsys):
    received = []
    guard = lambda signum, frame: received.append(signum)  # noqa: E731 - keeps pytest alive if main does not
    previous = signal.signal(signal.SIGTERM, guard)
    try:
        def terminated(cfg, folder, resume=False, quiet=False):
            make_run(folder, {0}, finished=False)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
            raise AssertionError("SIGTERM did not stop the run")

        monkeypatch.setattr("kpflow.experiment.run_experiment", terminated)
        (tmp_path / "r").mkdir()
        code = cli.main(["run", "--out", str(tmp_path / "r"), "--quiet", "--iterations", "12"])
        assert signal.getsignal(signal.SIGTERM) is guard
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 143 and received == []
    err = capsys.readouterr().err
    assert "kpflow run: terminated; last finished checkpoint: iteration 0 of 12" in err
    assert f"kpflow run --resume {tmp_path / 'r'}" in err


def test_interrupted_sweep_prints_the_same_command(tmp_path, monkeypatch, capsys):
    calls = []

    def first_finishes(cfg, folder, resume=False, quiet=False):
        calls.append(folder.name)
        folder.mkdir(parents=True, exist_ok=True)
        make_run(folder, {0, 1, 3, 12} if len(calls) == 1 else {0}, finished=len(calls) == 1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("kpflow.sweep.run_experiment", first_finishes)
    argv = ["sweep", "--out", str(tmp_path / "s"), "--gains", "0.5", "2", "--seeds", "0", "1", "--models", "gru",
            "--quiet"]
    assert cli.main(argv) == 130
    hint = capsys.readouterr().err.strip()
    assert "1 of 4 runs finished, gru_g0.5_s1 stopped at checkpoint iteration 0 of" in hint
    assert hint.endswith("continue with the same command: " + shlex.join(["kpflow", *argv]))


def test_interrupt_before_anything_was_written_says_start_again(tmp_path, monkeypatch, capsys):
    def early(cfg, folder, resume=False, quiet=False):
        raise KeyboardInterrupt

    monkeypatch.setattr("kpflow.experiment.run_experiment", early)
    argv = ["run", "--out", str(tmp_path / "new"), "--quiet"]
    assert cli.main(argv) == 130
    assert "nothing to resume; start it again with: " + shlex.join(["kpflow", *argv]) in capsys.readouterr().err


# --------------------------------------------------------------------- help
def test_run_and_sweep_help_show_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = capsys.readouterr().out
    for piece in ("--resume [DIR]", "(default: 64; paper: 256)", "(default: 600; paper: 5000)", "(default: gru)",
                  "(default: memory_pro)", "(default: 0.003; paper: 0.001)", "(default: laptop)", "(default: cpu)",
                  "(default: float32)", "(default: 0)"):
        assert piece in " ".join(text.split()), piece
    assert "None" not in text and "default: False" not in text
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: gru rnn; paper: gru)" in text and "(default: 0.5 1 2; paper: 0.5 1 1.5 2 3)" in text
    assert "GRU and a 32-unit tanh RNN" in text
    assert "None" not in text and "--seed N" not in text  # a sweep takes --seeds


def test_laptop_sweep_runs_gru_and_rnn():
    assert SWEEP_PRESETS["laptop"]["models"] == ("gru", "rnn")


def test_run_needs_a_folder(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["run"])
    assert info.value.code == 2 and "--out DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run", "--out", "a", "--resume", "b"])
    assert "different folders" in capsys.readouterr().err
