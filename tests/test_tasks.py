"""Tests of kpflow.tasks: shapes, period structure, seeds, metrics, errors."""

from __future__ import annotations

import dataclasses
import math
import sys
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kpflow.tasks import (
    SUBTASK_NAMES,
    TASK_NAMES,
    FlipFlop,
    MemoryPro,
    MultiTask,
    NeurogymTask,
    TaskBatch,
    flip_flop_targets,
    get_task,
    masked_mse,
)

MEMORY_NAMES = ("memory_pro", "memory_anti", "delay_pro", "delay_anti")


def clean(name: str, **kw) -> MemoryPro:
    return get_task(name, input_noise_std=0.0, **kw)


# ----------------------------------------------------------------- registry
@pytest.mark.parametrize("name", TASK_NAMES)
def test_registry_shapes_and_sizes(name):
    task = get_task(name)
    batch = task.sample(6, seed=0)
    B, T = 6, task.n_steps
    assert batch.inputs.shape == (B, T, task.input_size)
    assert batch.targets.shape == (B, T, task.output_size)
    assert batch.mask.shape in ((B, T, 1), (B, T, task.output_size))
    assert batch.inputs.dtype == batch.targets.dtype == batch.mask.dtype == torch.float32
    assert set(torch.unique(batch.mask).tolist()) <= {0.0, 1.0}
    assert batch.batch_size == B and batch.n_steps == T
    if name == "multitask":
        assert batch.groups is not None and batch.groups.dtype == torch.int64
    else:
        assert batch.groups is None
    if name in MEMORY_NAMES:
        assert task.name == name
        assert (task.input_size, task.output_size, task.n_steps) == (3, 3, 30)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown task name"):
        get_task("memory_pro_v2")
    with pytest.raises(TypeError, match="memory_stepz"):
        get_task("memory_pro", memory_stepz=3)
    with pytest.raises(ValueError, match="anti"):
        get_task("memory_pro", anti=True)
    with pytest.raises(ValueError, match="variant"):
        get_task("delay_anti", variant="memory")
    # consistent restatement is fine
    assert get_task("memory_anti", anti=True).anti is True


def test_configs_are_frozen_hashable_and_replaceable():
    task = MemoryPro()
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.anti = True  # type: ignore[misc]
    assert hash(task) == hash(MemoryPro())
    longer = dataclasses.replace(task, memory_steps=20)
    assert longer.n_steps == 40 and task.n_steps == 30
    # no shared mutable defaults
    assert MultiTask().subtasks is SUBTASK_NAMES and isinstance(SUBTASK_NAMES, tuple)


# ------------------------------------------------------------ memory family
@pytest.mark.parametrize("name", MEMORY_NAMES)
def test_memory_period_structure(name):
    task = clean(name, fixation_steps=4)
    b = task.sample(16, seed=3)
    x, y = b.inputs.double(), b.targets.double()
    fix, stim, mem, resp = slice(0, 4), slice(4, 14), slice(14, 24), slice(24, 34)
    assert task.n_steps == 34
    theta = b.info["stimulus_angle"].double()
    # fixation input and target: 1 before response, exactly 0 in response
    assert torch.all(x[:, :24, 0] == 1) and torch.all(x[:, resp, 0] == 0)
    assert torch.all(y[:, :24, 0] == 1) and torch.all(y[:, resp, 0] == 0)
    # stimulus: off during fixation, (cos, sin) during the stimulus period
    assert torch.all(x[:, fix, 1:] == 0)
    stim_val = torch.stack([theta.cos(), theta.sin()], -1)[:, None, :]
    torch.testing.assert_close(x[:, stim, 1:], stim_val.expand(-1, 10, -1), atol=1e-6, rtol=0)
    if name.startswith("memory"):
        assert torch.all(x[:, mem, 1:] == 0) and torch.all(x[:, resp, 1:] == 0)
    else:  # delay: stays on to the end
        torch.testing.assert_close(x[:, 14:, 1:], stim_val.expand(-1, 20, -1), atol=1e-6, rtol=0)
    # response targets: zero before, target angle during
    assert torch.all(y[:, :24, 1:] == 0)
    expected = theta + (math.pi if name.endswith("anti") else 0.0)
    angle = torch.atan2(y[:, resp, 2], y[:, resp, 1])
    err = torch.remainder(angle - expected[:, None] + math.pi, 2 * math.pi) - math.pi
    assert err.abs().max() < 1e-5
    torch.testing.assert_close(y[:, resp, 1].pow(2) + y[:, resp, 2].pow(2),
                               torch.ones(16, 10, dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.all(b.mask == 1)
    assert torch.all(b.info["response_onset"] == 24)
    assert torch.all(b.info["anti"] == name.endswith("anti"))


def test_pro_and_anti_share_angles_and_flip_response():
    pro = clean("memory_pro").sample(32, seed=11)
    anti = clean("memory_anti").sample(32, seed=11)
    torch.testing.assert_close(pro.inputs, anti.inputs)
    torch.testing.assert_close(anti.targets[:, 20:, 1:], -pro.targets[:, 20:, 1:], atol=1e-6, rtol=0)
    torch.testing.assert_close(anti.targets[..., 0], pro.targets[..., 0])


def test_input_noise_is_added_on_top_of_the_clean_trial():
    noisy_task = get_task("memory_pro", input_noise_std=0.3)
    noisy = noisy_task.sample(256, seed=5, dtype=torch.float64)
    base = clean("memory_pro").sample(256, seed=5, dtype=torch.float64)
    torch.testing.assert_close(noisy.targets, base.targets)
    diff = noisy.inputs - base.inputs
    assert abs(diff.std().item() - 0.3) < 0.01 and abs(diff.mean().item()) < 0.01
    assert MemoryPro().input_noise_std == pytest.approx(0.1 * math.sqrt(2))


def test_randomised_durations_are_per_trial_and_consistent():
    task = clean("memory_pro", fixation_steps=(0, 3), stimulus_steps=(2, 5), memory_steps=(4, 9),
                 response_steps=6)
    assert task.n_steps == 3 + 5 + 9 + 6
    b = task.sample(200, seed=0)
    on_s, on_m, on_r = (b.info[k] for k in ("stimulus_onset", "memory_onset", "response_onset"))
    assert set((on_m - on_s).tolist()) == set(range(2, 6))
    assert set((on_r - on_m).tolist()) == set(range(4, 10))
    assert set(on_s.tolist()) == set(range(0, 4))
    t = torch.arange(task.n_steps)
    for i in range(0, 200, 17):
        before = t < on_r[i]
        assert torch.equal(b.inputs[i, :, 0] == 1, before)
        visible = (t >= on_s[i]) & (t < on_m[i])
        assert torch.equal(b.inputs[i, :, 1:].abs().sum(-1) > 0, visible)
        assert torch.all(b.targets[i, ~before, 1:].norm(dim=-1) > 0.999)
        assert (task.n_steps - on_r[i]) >= 6


def test_grace_period_mask():
    task = clean("memory_pro", response_grace_steps=3)
    b = task.sample(4, seed=0)
    m = b.mask[..., 0]
    assert torch.all(m[:, 20:23] == 0)
    assert torch.all(m[:, :20] == 1) and torch.all(m[:, 23:] == 1)
    # perfect outputs are still perfect; grace steps are not scored
    out = b.targets.clone()
    out[:, 20:23, 1:] = -out[:, 20:23, 1:]
    assert task.accuracy(out, b) == 1.0


def test_memory_accuracy_rule():
    task = clean("memory_pro")
    b = task.sample(64, seed=2, dtype=torch.float64)
    assert task.accuracy(b.targets, b) == 1.0
    assert task.accuracy(torch.zeros_like(b.targets), b) == 0.0

    def rotate(delta):
        out = b.targets.clone()
        ang = b.info["target_angle"] + delta
        out[:, 20:, 1] = ang.cos()[:, None]
        out[:, 20:, 2] = ang.sin()[:, None]
        return out

    assert task.accuracy(rotate(0.9 * math.pi / 10), b) == 1.0
    assert task.accuracy(rotate(-0.9 * math.pi / 10), b) == 1.0
    assert task.accuracy(rotate(1.1 * math.pi / 10), b) == 0.0
    # fixation broken in one pre-response step of trial 0
    out = b.targets.clone()
    out[0, 7, 0] = 0.2
    assert task.accuracy(out, b) == pytest.approx(63 / 64)
    # fixation never released
    out = b.targets.clone()
    out[:, 20:, 0] = 1.0
    assert task.accuracy(out, b) == 0.0
    # too weak a response
    assert task.accuracy(b.targets * torch.tensor([1.0, 0.3, 0.3], dtype=torch.float64), b) == 0.0
    # pro answer on the anti task fails
    anti = clean("memory_anti")
    assert anti.accuracy(b.targets, anti.sample(64, seed=2, dtype=torch.float64)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        task.accuracy(b.targets[:, :5], b)


def test_memory_config_validation():
    with pytest.raises(ValueError, match="stimulus_steps"):
        MemoryPro(stimulus_steps=0)
    with pytest.raises(ValueError, match="memory_steps"):
        MemoryPro(memory_steps=(5, 2))
    with pytest.raises(TypeError, match="memory_steps"):
        MemoryPro(memory_steps=[2, 5])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="response_steps"):
        MemoryPro(response_steps=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="response_grace_steps"):
        MemoryPro(response_grace_steps=10)
    with pytest.raises(ValueError, match="input_noise_std"):
        MemoryPro(input_noise_std=-0.1)
    with pytest.raises(ValueError, match="variant"):
        MemoryPro(variant="go")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        MemoryPro(False)  # type: ignore[misc]  # keyword-only


# ------------------------------------------------------------ sampling API
@pytest.mark.parametrize("name", TASK_NAMES)
def test_seed_reproducibility(name):
    task = get_task(name)
    a, b, c = task.sample(8, seed=7), task.sample(8, seed=7), task.sample(8, seed=8)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert torch.equal(a.mask, b.mask)
    assert not torch.equal(a.inputs, c.inputs)
    # numpy and torch generators: reproducible from the same state
    n1 = task.sample(8, seed=np.random.default_rng(3))
    n2 = task.sample(8, seed=np.random.default_rng(3))
    assert torch.equal(n1.inputs, n2.inputs)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(task.sample(8, seed=g1).inputs, task.sample(8, seed=g2).inputs)
    # a generator advances: two draws differ
    assert not torch.equal(task.sample(8, seed=g1).inputs, task.sample(8, seed=g1).inputs)
    # fresh entropy
    assert not torch.equal(task.sample(8).inputs, task.sample(8).inputs)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_evaluation_batch_is_fixed_and_held_out(name):
    task = get_task(name)
    e1, e2 = task.evaluation_batch(10), task.evaluation_batch(10)
    assert torch.equal(e1.inputs, e2.inputs) and torch.equal(e1.targets, e2.targets)
    assert not torch.equal(e1.inputs, task.sample(10, seed=task.eval_seed).inputs)
    other = dataclasses.replace(task, eval_seed=task.eval_seed + 1)
    assert not torch.equal(e1.inputs, other.evaluation_batch(10).inputs)


def test_dtype_device_and_to():
    task = get_task("multitask")
    b = task.sample(8, seed=0, dtype=torch.float64, device="cpu")
    assert b.inputs.dtype == b.targets.dtype == b.mask.dtype == torch.float64
    assert b.info["stimulus_angle"].dtype == torch.float64
    assert b.info["response_onset"].dtype == torch.int64 and b.groups.dtype == torch.int64
    b32 = b.to(dtype=torch.float32)
    assert b32.inputs.dtype == torch.float32 and b32.groups.dtype == torch.int64
    torch.testing.assert_close(b32.inputs.double(), b.inputs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "4", None])
def test_batch_size_validation(bad):
    with pytest.raises((TypeError, ValueError), match="batch_size"):
        get_task("flip_flop").sample(bad)
    with pytest.raises((TypeError, ValueError), match="batch_size"):
        get_task("memory_pro").evaluation_batch(bad)


def test_seed_and_dtype_validation():
    task = get_task("memory_pro")
    with pytest.raises(TypeError, match="seed"):
        task.sample(4, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        task.sample(4, seed=-1)
    with pytest.raises(TypeError, match="dtype"):
        task.sample(4, dtype=torch.int64)


def test_taskbatch_validation():
    x = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match="targets"):
        TaskBatch(x, torch.zeros(2, 4, 3), torch.ones(2, 5, 1))
    with pytest.raises(ValueError, match="mask"):
        TaskBatch(x, torch.zeros(2, 5, 3), torch.ones(2, 5, 2))
    with pytest.raises(ValueError, match="groups"):
        TaskBatch(x, x, torch.ones(2, 5, 1), groups=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="dtype"):
        TaskBatch(x, x.double(), torch.ones(2, 5, 1))


# -------------------------------------------------------------- masked_mse
def test_masked_mse_matches_manual_and_differentiates():
    task = clean("memory_pro", response_grace_steps=2)
    b = task.sample(5, seed=0, dtype=torch.float64)
    out = torch.randn_like(b.targets, requires_grad=True)
    loss = masked_mse(out, b)
    m = b.mask.expand_as(out)
    manual = ((out - b.targets) ** 2)[m > 0].mean()
    torch.testing.assert_close(loss, manual)
    loss.backward()
    assert torch.all(out.grad[m == 0] == 0) and out.grad.abs().sum() > 0
    assert task.loss(b.targets, b).item() == 0.0
    with pytest.raises(ValueError, match="shape"):
        masked_mse(out[..., :2], b)


def test_masked_mse_full_mask_is_plain_mse():
    b = get_task("flip_flop").sample(3, seed=1)
    out = torch.randn_like(b.targets)
    torch.testing.assert_close(masked_mse(out, b), torch.mean((out - b.targets) ** 2))


# --------------------------------------------------------------- flip-flop
def loop_targets(pulses: np.ndarray) -> np.ndarray:
    B, T, C = pulses.shape
    out = np.zeros_like(pulses, dtype=float)
    for b in range(B):
        for c in range(C):
            keep = 0.0
            for t in range(T):
                if pulses[b, t, c] != 0:
                    keep = float(np.sign(pulses[b, t, c]))
                out[b, t, c] = keep
    return out


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n_channels=st.integers(1, 4),
    n_steps=st.integers(1, 40),
    pulse_prob=st.floats(0.0, 1.0),
)
def test_flip_flop_target_holds_last_pulse(seed, n_channels, n_steps, pulse_prob):
    task = FlipFlop(n_channels=n_channels, n_steps=n_steps, pulse_prob=pulse_prob)
    b = task.sample(5, seed=seed, dtype=torch.float64)
    pulses = b.inputs.numpy()
    assert set(np.unique(pulses)) <= {-1.0, 0.0, 1.0}
    np.testing.assert_array_equal(b.targets.numpy(), loop_targets(pulses))
    np.testing.assert_array_equal(b.info["pulses"].numpy(), pulses)


def test_flip_flop_targets_function_and_accuracy():
    pulses = np.zeros((1, 6, 2))
    pulses[0, 1, 0], pulses[0, 4, 0], pulses[0, 3, 1] = 1, -1, -1
    expected = np.array([[0, 0], [1, 0], [1, 0], [1, -1], [-1, -1], [-1, -1]], dtype=float)
    np.testing.assert_array_equal(flip_flop_targets(pulses)[0], expected)

    task = FlipFlop(input_noise_std=0.2)
    b = task.sample(16, seed=0)
    assert task.accuracy(b.targets * 0.3, b) == 1.0
    assert task.accuracy(-b.targets, b) == 0.0
    out = b.targets.clone()
    nz = torch.nonzero(b.targets)
    out[tuple(nz[0])] *= -1
    assert task.accuracy(out, b) == pytest.approx(1 - 1 / len(nz))
    # noise does not change targets
    b0 = FlipFlop().sample(16, seed=0)
    torch.testing.assert_close(b.targets, b0.targets)
    silent = FlipFlop(pulse_prob=0.0)
    quiet = silent.sample(2, seed=0)
    assert torch.all(quiet.targets == 0)
    assert math.isnan(silent.accuracy(quiet.targets, quiet))


def test_flip_flop_validation():
    with pytest.raises(ValueError, match="pulse_prob"):
        FlipFlop(pulse_prob=1.5)
    with pytest.raises(ValueError, match="n_channels"):
        FlipFlop(n_channels=0)
    with pytest.raises(TypeError, match="n_steps"):
        FlipFlop(n_steps=10.0)  # type: ignore[arg-type]


# --------------------------------------------------------------- multitask
@pytest.mark.parametrize("batch_size", [1, 4, 7, 13, 64])
def test_multitask_groups_balanced_and_cue_matches(batch_size):
    task = get_task("multitask", input_noise_std=0.0)
    assert task.subtask_names == SUBTASK_NAMES and task.input_size == 7
    b = task.sample(batch_size, seed=batch_size)
    counts = torch.bincount(b.groups, minlength=4)
    assert counts.sum() == batch_size and counts.max() - counts.min() <= 1
    cue = b.inputs[..., 3:]
    assert torch.all(cue.sum(-1) == 1)
    assert torch.equal(cue.argmax(-1), b.groups[:, None].expand(-1, task.n_steps))


def test_multitask_trials_follow_their_subtask():
    task = get_task("multitask", input_noise_std=0.0)
    b = task.sample(64, seed=1, dtype=torch.float64)
    for k, name in enumerate(task.subtask_names):
        sel = b.groups == k
        single = clean(name)
        assert torch.all(b.info["anti"][sel] == single.anti)
        assert torch.all(b.info["delay"][sel] == (single.variant == "delay"))
        theta = b.info["stimulus_angle"][sel]
        expected = theta + (math.pi if single.anti else 0.0)
        got = torch.atan2(b.targets[sel, -1, 2], b.targets[sel, -1, 1])
        err = torch.remainder(got - expected + math.pi, 2 * math.pi) - math.pi
        assert err.abs().max() < 1e-9
        stim_in_response = b.inputs[sel, 20:, 1:3].abs().sum(-1)
        assert torch.all(stim_in_response > 0) if single.variant == "delay" else torch.all(stim_in_response == 0)
    assert task.accuracy(b.targets, b) == 1.0
    per = task.accuracy_by_subtask(b.targets, b)
    assert per == {n: 1.0 for n in SUBTASK_NAMES}
    # noise is not added to the cue
    noisy = get_task("multitask").sample(8, seed=0)
    assert set(torch.unique(noisy.inputs[..., 3:]).tolist()) == {0.0, 1.0}


def test_multitask_subset_and_validation():
    task = MultiTask(subtasks=("delay_anti", "memory_pro"), input_noise_std=0.0)
    b = task.sample(10, seed=0)
    assert task.input_size == 5 and torch.bincount(b.groups).tolist() == [5, 5]
    assert torch.all(b.info["anti"] == (b.groups == 0))
    with pytest.raises(ValueError, match="subtasks"):
        MultiTask(subtasks=("memory_pro", "go"))
    with pytest.raises(ValueError, match="subtasks"):
        MultiTask(subtasks=("memory_pro", "memory_pro"))
    with pytest.raises(TypeError, match="subtasks"):
        MultiTask(subtasks=["memory_pro"])  # type: ignore[arg-type]


# ---------------------------------------------------------------- neurogym
def test_neurogym_missing_gives_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "neurogym", None)  # makes `import neurogym` fail
    with pytest.raises(ImportError, match=r"pip install kpflow\[neurogym\]"):
        NeurogymTask("PerceptualDecisionMaking-v0", batch_size=4, seq_len=10, seed=0)


def _fake_neurogym() -> types.ModuleType:
    """A minimal stand-in with neurogym's Dataset API (seeded, discrete actions)."""

    class Space:
        def __init__(self, shape, n=None):
            self.shape, self.n = shape, n

    class Env:
        observation_space = Space((3,))
        action_space = Space((), n=3)

    class Dataset:
        def __init__(self, env, env_kwargs=None, batch_size=1, seq_len=None, batch_first=False):
            self.env, self.batch_size, self.seq_len = Env(), batch_size, seq_len
            assert batch_first
            self.seed(None)
            self._cache()

        def seed(self, seed=None):
            self._rng = np.random.default_rng(seed)

        def _cache(self):
            B, T = self.batch_size, self.seq_len
            self._inputs = self._rng.standard_normal((B, T, 3)).astype(np.float32)
            self._labels = self._rng.integers(0, 3, size=(B, T))

        def __call__(self):
            return self._inputs, self._labels

    module = types.ModuleType("neurogym")
    module.Dataset = Dataset  # type: ignore[attr-defined]
    return module


def test_neurogym_adapter_with_stub(monkeypatch):
    monkeypatch.setitem(sys.modules, "neurogym", _fake_neurogym())
    task = NeurogymTask("Fake-v0", batch_size=6, seq_len=12, seed=3)
    assert (task.input_size, task.output_size, task.n_steps) == (3, 3, 12)
    frozen = task.batch
    assert frozen.inputs.shape == (6, 12, 3) and frozen.targets.shape == (6, 12, 3)
    assert torch.equal(frozen.targets.argmax(-1), frozen.info["labels"])
    assert torch.all(frozen.targets.sum(-1) == 1)
    assert torch.equal(task.evaluation_batch().inputs, frozen.inputs)
    assert torch.equal(task.evaluation_batch(4).inputs, frozen.inputs[:4])
    with pytest.raises(ValueError, match="batch_size"):
        task.evaluation_batch(7)
    again = NeurogymTask("Fake-v0", batch_size=6, seq_len=12, seed=3)
    assert torch.equal(again.batch.inputs, frozen.inputs)
    assert not torch.equal(NeurogymTask("Fake-v0", 6, 12, seed=4).batch.inputs, frozen.inputs)
    s1, s2 = task.sample(5, seed=1), task.sample(5, seed=1)
    assert torch.equal(s1.inputs, s2.inputs) and s1.inputs.shape == (5, 12, 3)
    assert task.accuracy(frozen.targets, frozen) == 1.0
    with pytest.raises(ValueError, match="seq_len"):
        NeurogymTask("Fake-v0", batch_size=6, seq_len=0)


def test_neurogym_real_package():
    pytest.importorskip("neurogym")
    task = NeurogymTask("PerceptualDecisionMaking-v0", batch_size=4, seq_len=20, seed=0)
    b = task.evaluation_batch()
    assert b.inputs.shape[:2] == (4, 20)
    assert torch.equal(task.evaluation_batch().inputs, b.inputs)
