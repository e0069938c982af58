"""Sharded operators over torch.distributed (gloo, CPU): the sharded answer is the single-process one.

Each test spawns ``world_size`` processes with ``torch.multiprocessing``
(init through a ``file://`` store in ``tmp_path``). Every rank builds the
trajectory of its trials, applies the sharded operators to the shards of
fixed global vectors, runs the sharded Hutch++ / Hutchinson traces and the
block eigensolver, counts its collectives, and saves its results; the test
process then compares the concatenation over ranks with the single-process
operators and solvers (float64, round-off tolerance).
"""

from __future__ import annotations

import datetime
import os
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import kpflow
import kpflow.distributed as kd

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available"),
    pytest.mark.skipif(sys.platform == "win32", reason="gloo file:// store tests run on POSIX"),
]

F64 = torch.float64
B_GLOBAL, T, I = 5, 4, 3
TIMEOUT_S = 120


class TanhCell(nn.Module):
    """A user cell (no hand-derived linearization: the torch.func path)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden_size = 4
        self.lin = nn.Linear(I + 4, 4)

    def forward(self, x, h):
        return torch.tanh(self.lin(torch.cat([x, h], dim=-1)))


def make_case(name: str):
    torch.manual_seed(0)
    model = {"gru": lambda: nn.GRU(I, 4), "lstm2": lambda: nn.LSTM(I, 3, num_layers=2), "cell": TanhCell}[name]()
    model = model.to(F64)
    inputs = torch.randn(B_GLOBAL, T, I, dtype=F64)
    return model, inputs


def global_vectors(traj_full: kpflow.Trajectory):
    gen = torch.Generator().manual_seed(123)
    q = torch.randn(traj_full.size, generator=gen, dtype=F64)
    Q = torch.randn(traj_full.size, 3, generator=gen, dtype=F64)
    w = torch.randn(traj_full.num_params, generator=gen, dtype=F64)
    return q, Q, w


def compute(ops, q_local, Q_local, w, rows=None):
    """Every product and solver result of one shard (or of the whole trajectory on one process)."""
    out = {
        "K q": ops.K.apply(q_local),
        "K Q": ops.K.apply(Q_local),
        "G q": ops.gradient_flow.apply(q_local),
        "G Q": ops.gradient_flow.apply(Q_local),
        "J w": ops.J.apply(w),
        "P q": ops.P.apply(q_local),
        "P* q": ops.P.apply_adjoint(q_local),
        "Pinv q": ops.P_inverse.apply(q_local),
        "Pinv* Q": ops.P_inverse.apply_adjoint(Q_local),
        # replicated (parameter-space) results
        "J* q": ops.J.apply_adjoint(q_local),
        "J* Q": ops.J.apply_adjoint(Q_local),
    }
    hpp = kd.trace(ops.K, 12, seed=5)
    hut = kd.trace(ops.gradient_flow, 6, method="hutchinson", seed=6)
    spec = kd.top_eigs(ops.K, 3, seed=7, return_vectors=True)
    spec_g = kd.top_eigs(ops.gradient_flow, 2, block_size=3, seed=8)
    out.update(
        {
            "trace K (hutch++)": torch.tensor([hpp.value, hpp.std_error, hpp.num_matvecs], dtype=F64),
            "trace G (hutchinson)": torch.tensor([hut.value, hut.std_error, hut.num_matvecs], dtype=F64),
            "eig K": torch.as_tensor(spec.values),
            "eig K vectors": spec.vectors.reshape(3, -1).T,
            "eig G": torch.as_tensor(spec_g.values),
        }
    )
    return out


def _worker(rank: int, world_size: int, store: str, outdir: str, names: list) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        results = {}
        for name in names:
            model, inputs = make_case(name)
            full = kpflow.Trajectory(model, inputs)
            q, Q, w = global_vectors(full)
            local = kd.trial_slice(B_GLOBAL)
            traj = kpflow.Trajectory(model, inputs[local])
            ops = kd.sharded_operators(traj)
            rows = slice(local.start * T * full.state_size, local.stop * T * full.state_size)

            # Communication: K, P K P*, J* need one all-reduce per product
            # (per block of columns); P, P*, P⁻¹, J none.
            calls = {"n": 0}
            real = dist.all_reduce

            def counting(*args, **kwargs):
                calls["n"] += 1
                return real(*args, **kwargs)

            dist.all_reduce = counting
            try:
                counts = {}
                for label, fn in [
                    ("K q", lambda: ops.K.apply(q[rows])),
                    ("K Q", lambda: ops.K.apply(Q[rows])),
                    ("G q", lambda: ops.gradient_flow.apply(q[rows])),
                    ("J* q", lambda: ops.J.apply_adjoint(q[rows])),
                    ("P q", lambda: ops.P.apply(q[rows])),
                    ("P* q", lambda: ops.P.apply_adjoint(q[rows])),
                    ("Pinv q", lambda: ops.P_inverse.apply(q[rows])),
                    ("J w", lambda: ops.J.apply(w)),
                ]:
                    calls["n"] = 0
                    fn()
                    counts[label] = calls["n"]
            finally:
                dist.all_reduce = real
            res = compute(ops, q[rows], Q[rows], w)
            res["counts"] = counts
            results[name] = res
        torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_world(world_size: int, tmp_path, names) -> list:
    store = tmp_path / "store"
    outdir = tmp_path / "out"
    outdir.mkdir()
    # fork (where available) skips re-importing torch in every rank, which is
    # most of the cost on a small machine; the ranks use one thread each.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.start_processes(
        _worker, args=(world_size, str(store), str(outdir), names), nprocs=world_size, join=False,
        start_method=method,
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1.0):  # raises ProcessRaisedException if a rank failed
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.terminate()
            pytest.fail(f"the {world_size} ranks did not finish within {TIMEOUT_S} s")
    return [torch.load(outdir / f"rank{r}.pt") for r in range(world_size)]


def reference(name: str) -> dict:
    model, inputs = make_case(name)
    full = kpflow.Trajectory(model, inputs)
    q, Q, w = global_vectors(full)
    ops = kd.sharded_operators(full)  # no process group: one shard, world size 1
    return compute(ops, q, Q, w)


REPLICATED = ("J* q", "J* Q", "trace K (hutch++)", "trace G (hutchinson)", "eig K", "eig G")


def check(per_rank: list, names, refs) -> None:
    for name in names:
        ref = refs[name]
        for key, want in ref.items():
            if key in REPLICATED:
                for r, res in enumerate(per_rank):
                    got = res[name][key]
                    tol = 1e-10 * max(1.0, float(want.abs().max()))
                    if key.startswith("eig"):
                        tol = 1e-8 * max(1.0, float(want.abs().max()))
                    assert torch.allclose(got, want, rtol=0, atol=tol), (name, key, r, got, want)
            else:
                got = torch.cat([res[name][key] for res in per_rank], dim=0)
                if key == "eig K vectors":
                    # the same eigenvectors up to round-off (signs fixed by the global convention)
                    assert torch.allclose(got, want, atol=1e-7), (name, key)
                    continue
                tol = 1e-11 * max(1.0, float(want.abs().max()))
                assert got.shape == want.shape, (name, key)
                assert torch.allclose(got, want, rtol=0, atol=tol), (name, key, float((got - want).abs().max()))
        for r, res in enumerate(per_rank):
            counts = res[name]["counts"]
            assert counts["K q"] == counts["K Q"] == counts["G q"] == counts["J* q"] == 1, (name, r, counts)
            assert counts["P q"] == counts["P* q"] == counts["Pinv q"] == counts["J w"] == 0, (name, r, counts)


@pytest.mark.parametrize(
    "world_size, names", [(2, ["gru", "cell"]), (3, ["lstm2"]), (4, ["gru"])], ids=["2-gru-cell", "3-lstm2", "4-gru"]
)
def test_sharded_operators_and_solvers_match_single_process(world_size, names, tmp_path):
    refs = {name: reference(name) for name in names}  # also warms torch.func up before forking
    per_rank = run_world(world_size, tmp_path, names)
    check(per_rank, names, refs)


def test_trial_slice_partitions_the_trials():
    for B in (4, 5, 7):
        for w in (1, 2, 3, 4):
            if B < w:
                continue
            parts = [kd.trial_slice(B, r, w) for r in range(w)]
            assert parts[0].start == 0 and parts[-1].stop == B
            assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
            sizes = [p.stop - p.start for p in parts]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="num_trials"):
        kd.trial_slice(2, 0, 3)
    with pytest.raises(ValueError, match="rank"):
        kd.trial_slice(4, 5, 2)


def test_probes_do_not_depend_on_the_sharding():
    shape = (5, 3, 2)
    full = kd.draw_probes(shape, 0, 4, seed=9, dtype=F64, device=torch.device("cpu"))
    parts = [kd.draw_probes((n, 3, 2), off, 4, seed=9, dtype=F64, device=torch.device("cpu"))
             for off, n in ((0, 2), (2, 2), (4, 1))]
    assert torch.equal(torch.cat(parts), full)
    assert set(full.unique().tolist()) == {-1.0, 1.0}


def test_single_process_solvers_match_dense():
    model, inputs = make_case("gru")
    traj = kpflow.Trajectory(model, inputs)
    ops = kd.sharded_operators(traj)
    dense = kpflow.ParameterOperator(traj).to_dense()
    want = torch.linalg.eigvalsh(dense).flip(0)[:4].numpy()
    res = kd.top_eigs(ops.K, 4, seed=0)
    assert res.converged.all()
    np.testing.assert_allclose(res.values, want, rtol=1e-8)
    exact = float(torch.trace(dense))
    # with a budget of 3 n the sketch spans the range: exact up to the dropped round-off directions
    est = kd.trace(ops.K, 3 * traj.size, seed=1)
    assert abs(est.value - exact) <= 1e-6 * abs(exact)
    with pytest.raises(ValueError, match="Hutch"):
        kd.trace(ops.K, 2)
    with pytest.raises(ValueError, match="seed"):
        kd.trace(ops.K, 6, seed=-1)
