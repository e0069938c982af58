#!/usr/bin/env python
"""kpflow benchmark suite: every operator product as a ratio to one BPTT gradient.

Usage::

    python benchmarks/run.py                 # full suite (all models and sizes)
    python benchmarks/run.py --quick         # one size, fewer repeats (< 2 minutes on 2 cores)
    python benchmarks/run.py --out bench.json --device cuda --dtype float64

For GRU, LSTM and vanilla RNN modules at (B, T, H) ∈ {(16, 90, 64),
(64, 90, 128), (32, 90, 256)} it measures, in one process and interleaved with
the reference, the cost of one product with J_θ, J_θᵀ, K, P, P*, P⁻¹, P⁻ᵀ and
P K P*, one 16-column ``matmat``, the materialized-Jacobian strategy (build,
products, crossover), ``top_eigs(K, 10)`` and SciPy ``eigsh(K, 10)`` (time
against matvec count × matvec time), a 30-product Hutch++ trace, and the peak
extra memory of one product against the size of the trajectory tensor.

The reference is what users compare against: the plain torch module
(``nn.GRU``/``nn.LSTM``/``nn.RNN`` with autograd: forward, ``nn.Linear``
readout, MSE loss, backward) on the same model and batch.

Ratios are medians over rounds of per-round ratios (each round times the
reference and then every operation once); the bracket is the interquartile
range. See ``benchmarks/harness.py`` for the method, ``docs/performance.md``
for the recorded table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

if "--thp" in sys.argv:  # must precede the first large allocation of torch's CPU allocator
    import os

    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

try:
    import kpflow as kp
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import kpflow as kp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import CountingOperator, environment, interleaved, peak_extra_bytes  # noqa: E402

from kpflow.linearization import linearize  # noqa: E402

MODELS = {"GRU": nn.GRU, "LSTM": nn.LSTM, "RNN": nn.RNN}
SIZES = [(16, 90, 64), (64, 90, 128), (32, 90, 256)]
INPUTS, OUTPUTS = 4, 2

#: (metric, comparison, bound, note) checked against the medians.
TARGETS = [
    ("K·v", "<=", 0.5, "× grad"),
    ("P·v", "<=", 1.0, "× grad"),
    ("P*·v", "<=", 1.0, "× grad"),
    ("PKP*·v", "<=", 2.0, "× grad"),
    ("K·V16 / K·v", "<=", 6.0, "× one matvec"),
    ("mem P·v", "<=", 4.0, "× trajectory"),
    ("mem P*·v", "<=", 4.0, "× trajectory"),
    ("materialize build", "<=", 5.0, "× grad (H=256)"),
    ("top_eigs overhead", "<=", 1.2, "× count·t(K·v)"),
    ("eigsh overhead", "<=", 1.2, "× count·t(K·v)"),
]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one size (16, 90, 64), fewer repeats")
    p.add_argument("--out", type=Path, help="write the results as JSON to this file")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--models", default="GRU,LSTM,RNN", help="comma-separated subset of GRU,LSTM,RNN")
    p.add_argument("--sizes", default=None, help="semicolon-separated B,T,H triples, e.g. '16,90,64;32,90,256'")
    p.add_argument("--rounds", type=int, default=None, help="rounds of the interleaved timing (default 15, quick 5)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--materialize-limit", type=float, default=1.0, help="GB: skip dense Jacobians larger than this")
    p.add_argument("--no-eigs", action="store_true", help="skip top_eigs / eigsh / Hutch++")
    p.add_argument("--generic", action="store_true", help="also time K·v and P*·v on the torch.func (jvp/vjp) path")
    p.add_argument("--thp", action="store_true",
                   help="THP_MEM_ALLOC_ENABLE=1: transparent huge pages for torch's large CPU allocations "
                        "(fewer page faults on fresh [B, T, ...] tensors; an environment setting, off by default)")
    p.add_argument("--no-blas-limit", action="store_true",
                   help="set kpflow.operator.BLAS_THREADS = None (to measure eigsh without kpflow's BLAS thread limit)")
    return p.parse_args(argv)


def make_problem(kind, B, T, H, device, dtype, seed=0):
    torch.manual_seed(seed)
    model = MODELS[kind](INPUTS, H, batch_first=True).to(device=device, dtype=dtype)
    readout = nn.Linear(H, OUTPUTS).to(device=device, dtype=dtype)
    x = torch.randn(B, T, INPUTS, device=device, dtype=dtype)
    y = torch.randn(B, T, OUTPUTS, device=device, dtype=dtype)

    def grad():
        model.zero_grad(set_to_none=True)
        readout.zero_grad(set_to_none=True)
        out, _ = model(x)
        loss = F.mse_loss(readout(out), y)
        loss.backward()

    return model, x, grad


def bench_config(kind, B, T, H, args, device, dtype):
    rounds = args.rounds or (5 if args.quick else 15)
    mm_rounds = max(3, rounds // 3)
    model, x, grad = make_problem(kind, B, T, H, device, dtype)
    rec: dict = {"model": kind, "B": B, "T": T, "H": H}
    gen = torch.Generator(device=device).manual_seed(1)

    traj = kp.Trajectory(model, x)
    S = traj.state_size
    N, p = traj.size, traj.num_params
    traj_bytes = N * traj.states.element_size()
    rec.update(S=S, N=N, p=p, trajectory_MB=traj_bytes / 2**20)

    J = kp.ParameterJacobian(traj)
    K = kp.ParameterOperator(traj)
    P = kp.PropagationOperator(traj)
    Pinv = P.inverse()
    G = kp.GradientFlowOperator(traj)
    v = torch.randn(N, generator=gen, device=device, dtype=dtype)
    w = torch.randn(p, generator=gen, device=device, dtype=dtype)
    V16 = torch.randn(N, 16, generator=gen, device=device, dtype=dtype)

    ops = {
        "record trajectory": lambda: kp.Trajectory(model, x),
        "linearize": lambda: linearize(model, traj.parameters(), traj.inputs, traj.previous_states),
        "J·w": lambda: J.apply(w),
        "Jᵀ·v": lambda: J.apply_adjoint(v),
        "K·v": lambda: K.apply(v),
        "P·v": lambda: P.apply(v),
        "P*·v": lambda: P.apply_adjoint(v),
        "P⁻¹·v": lambda: Pinv.apply(v),
        "P⁻ᵀ·v": lambda: Pinv.apply_adjoint(v),
        "PKP*·v": lambda: G.apply(v),
    }
    ref, stats = interleaved(grad, ops, rounds, device)
    rec["grad_ms"] = ref["median_ms"]
    rec["grad_iqr_ms"] = ref["q75_ms"] - ref["q25_ms"]
    rec["ops"] = stats

    mm = {"K·V16": lambda: K.apply(V16), "P·V16": lambda: P.apply(V16), "PKP*·V16": lambda: G.apply(V16)}
    _, mstats = interleaved(grad, mm, mm_rounds, device)
    rec["ops"].update(mstats)
    for name, single in (("K·V16", "K·v"), ("P·V16", "P·v"), ("PKP*·V16", "PKP*·v")):
        rec["ops"][name]["per_matvec"] = mstats[name]["median_ms"] / stats[single]["median_ms"]

    # The reference path: the same operators through torch.func.jvp/vjp of the
    # plain-op step (what user cells get), without the hand-derived linearization.
    tg = kp.Trajectory(model, x)
    tg._cell_linearization = False
    Pg = kp.PropagationOperator(tg)
    generic = {"P·v (torch.func)": lambda: Pg.apply(v)}
    if args.generic:
        Kg = kp.ParameterOperator(tg)
        generic.update({"K·v (torch.func)": lambda: Kg.apply(v), "P*·v (torch.func)": lambda: Pg.apply_adjoint(v)})
    _, gstats = interleaved(grad, generic, 3 if not args.quick else 2, device)
    rec["ops"].update(gstats)
    del tg, Pg, generic

    # ---------------------------------------------------- materialized Jacobians
    dense_bytes = N * S * traj.states.element_size()
    rec["materialize_MB"] = dense_bytes / 2**20
    if dense_bytes <= args.materialize_limit * 2**30:
        holder = {}

        def build():
            holder["A"] = None
            holder["A"] = kp.state_jacobians(traj)

        _, bstats = interleaved(grad, {"materialize build": build}, max(2, mm_rounds // 2), device)
        del holder["A"]
        Pm = kp.PropagationOperator(traj, jacobians="materialize")
        _, pstats = interleaved(
            grad, {"P·v (materialized)": lambda: Pm.apply(v), "P*·v (materialized)": lambda: Pm.apply_adjoint(v)},
            mm_rounds, device,
        )
        rec["ops"].update(bstats)
        rec["ops"].update(pstats)
        t_build = bstats["materialize build"]["median_ms"]
        t_mat = pstats["P·v (materialized)"]["median_ms"]
        # products after which building the dense Jacobians has paid off
        for key, t_free in (("crossover_products", stats["P·v"]["median_ms"]),
                            ("crossover_vs_torch_func", rec["ops"]["P·v (torch.func)"]["median_ms"])):
            gain = t_free - t_mat
            rec[key] = (t_build / gain) if gain > 0 else math.inf
        del Pm
        traj._cache.pop("state_jacobians", None)
    else:
        rec["crossover_products"] = rec["crossover_vs_torch_func"] = None

    # ------------------------------------------------------------------ memory
    mem = {
        "mem P·v": lambda: P.apply(v),
        "mem P*·v": lambda: P.apply_adjoint(v),
        "mem K·v": lambda: K.apply(v),
        "mem P⁻¹·v": lambda: Pinv.apply(v),
        "mem PKP*·v": lambda: G.apply(v),
        "mem linearization": lambda: linearize(model, traj.parameters(), traj.inputs, traj.previous_states),
    }
    rec["memory"] = {name: peak_extra_bytes(fn, device) / traj_bytes for name, fn in mem.items()}
    rec["memory"]["mem linearization (kept)"] = kept_bytes(traj) / traj_bytes

    # ------------------------------------------------------- spectra and traces
    if not args.no_eigs:
        t_kv = stats["K·v"]["median_ms"] / 1e3
        rec["eigs"] = eig_benchmarks(K, t_kv, grad, device, rec["grad_ms"] / 1e3)
    return rec


def kept_bytes(traj) -> int:
    """Bytes the cached cell linearization keeps (its own coefficient tensors, not the trajectory's)."""
    lin = traj._cache.get("cell_linearization")
    if lin is None:
        return 0
    seen, total = set(), 0
    for lay in lin.layers:
        for t in (lay.coef, lay.aux1, lay.aux2, lay.aux3):
            if t is None:
                continue
            st = t.untyped_storage()
            if st.data_ptr() not in seen:
                seen.add(st.data_ptr())
                total += st.nbytes()
    return total


def eig_benchmarks(K, t_kv, grad, device, t_grad):
    from scipy.sparse.linalg import eigsh

    out = {}
    analysis = getattr(kp, "analysis", None)
    if analysis is None:
        try:
            import kpflow.analysis as analysis  # noqa: F811
        except ImportError:
            analysis = None

    if analysis is not None and hasattr(analysis, "top_eigs"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grad()
            t0 = time.perf_counter()
            res = analysis.top_eigs(K, 10, seed=0)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter() - t0
        out["top_eigs"] = {
            "seconds": t, "ratio": t / t_grad, "num_matvecs": int(res.num_matvecs), "method": res.method,
            "overhead": t / (res.num_matvecs * t_kv),
        }
    else:
        out["top_eigs"] = {"skipped": "kpflow.analysis.top_eigs not available"}

    if device.type == "cpu":
        counter = CountingOperator(K)
        v0 = np.random.default_rng(0).standard_normal(K.shape[0]).astype(K.dtype)
        try:
            t0 = time.perf_counter()
            eigsh(K, k=10, which="LA", v0=v0)
            t = time.perf_counter() - t0
        finally:
            counter.restore()
        out["eigsh"] = {"seconds": t, "ratio": t / t_grad, "num_matvecs": counter.count,
                        "overhead": t / (counter.count * t_kv)}

    if analysis is not None and hasattr(analysis, "trace"):
        counter = CountingOperator(K)
        try:
            t0 = time.perf_counter()
            est = analysis.trace(K, 30, method="hutch++", seed=0)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter() - t0
        finally:
            counter.restore()
        out["hutch++"] = {"seconds": t, "ratio": t / t_grad, "num_matvecs": int(est.num_matvecs),
                          "counted_columns": counter.count, "overhead": t / (30 * t_kv)}
    else:
        out["hutch++"] = {"skipped": "kpflow.analysis.trace not available"}
    return out


# ------------------------------------------------------------------ reporting
ROWS = [
    ("grad (ms)", lambda r: f"{r['grad_ms']:.1f}"),
    ("record trajectory", "op"),
    ("linearize", "op"),
    ("J·w", "op"),
    ("Jᵀ·v", "op"),
    ("K·v", "op"),
    ("P·v", "op"),
    ("P*·v", "op"),
    ("P⁻¹·v", "op"),
    ("P⁻ᵀ·v", "op"),
    ("PKP*·v", "op"),
    ("K·V16", "op"),
    ("K·V16 / K·v", lambda r: f"{r['ops']['K·V16']['per_matvec']:.1f}"),
    ("P·V16 / P·v", lambda r: f"{r['ops']['P·V16']['per_matvec']:.1f}"),
    ("PKP*·V16 / PKP*·v", lambda r: f"{r['ops']['PKP*·V16']['per_matvec']:.1f}"),
    ("K·v (torch.func)", "op"),
    ("P·v (torch.func)", "op"),
    ("P*·v (torch.func)", "op"),
    ("materialize build", "op"),
    ("P·v (materialized)", "op"),
    ("P*·v (materialized)", "op"),
    ("crossover (products)", lambda r: _crossover(r, "crossover_products")),
    ("crossover vs torch.func", lambda r: _crossover(r, "crossover_vs_torch_func")),
    ("mem P·v", "mem"),
    ("mem P*·v", "mem"),
    ("mem K·v", "mem"),
    ("mem P⁻¹·v", "mem"),
    ("mem PKP*·v", "mem"),
    ("mem linearization (kept)", "mem"),
    ("mem linearization", "mem"),
    ("top_eigs(K,10)", lambda r: _eig(r, "top_eigs", "ratio")),
    ("top_eigs matvecs", lambda r: _eig(r, "top_eigs", "num_matvecs")),
    ("top_eigs overhead", lambda r: _eig(r, "top_eigs", "overhead")),
    ("eigsh(K,10)", lambda r: _eig(r, "eigsh", "ratio")),
    ("eigsh matvecs", lambda r: _eig(r, "eigsh", "num_matvecs")),
    ("eigsh overhead", lambda r: _eig(r, "eigsh", "overhead")),
    ("Hutch++ (30)", lambda r: _eig(r, "hutch++", "ratio")),
    ("Hutch++ / 30·K·v", lambda r: _eig(r, "hutch++", "overhead")),
]


def _crossover(r, key):
    c = r.get(key)
    if c is None:
        return f"skip ({r['materialize_MB'] / 1024:.1f} GB)"
    return "never" if math.isinf(c) else f"{c:.0f}"


def _eig(r, key, field):
    e = r.get("eigs", {}).get(key)
    if not e or field not in e:
        return "—"
    val = e[field]
    return f"{val}" if isinstance(val, int) else f"{val:.2f}"


def _cell(r, name, kind):
    if kind == "op":
        s = r["ops"].get(name)
        if s is None:
            return "—"
        return f"{s['ratio']:.2f} [{s['ratio_q25']:.2f}–{s['ratio_q75']:.2f}]"
    if kind == "mem":
        val = r.get("memory", {}).get(name)
        return "—" if val is None else f"{val:.2f}"
    try:
        return kind(r)
    except (KeyError, TypeError):
        return "—"


def target_of(name):
    for metric, cmp, bound, note in TARGETS:
        if metric == name:
            return cmp, bound, note
    return None


def value_of(r, name):
    if name in r.get("ops", {}):
        return r["ops"][name]["ratio"]
    if name in r.get("memory", {}):
        return r["memory"][name]
    if name == "K·V16 / K·v":
        return r["ops"]["K·V16"]["per_matvec"]
    if name.endswith("overhead"):
        e = r.get("eigs", {}).get(name.split()[0])
        return None if not e else e.get("overhead")
    return None


def table(results, markdown=False):
    heads = [f"{r['model']} {r['B']}×{r['T']}×{r['H']}" for r in results]
    lines = []
    width = max(len(n) for n, _ in ROWS) + 2
    colw = max(20, max(len(h) for h in heads) + 2)
    if markdown:
        lines.append("| ratio to one BPTT gradient | " + " | ".join(heads) + " | target |")
        lines.append("|---|" + "---|" * len(heads) + "---|")
    else:
        lines.append("ratio to one BPTT gradient".ljust(width) + "".join(h.rjust(colw) for h in heads) + "   target")
    for name, kind in ROWS:
        cells = [_cell(r, name, kind) for r in results]
        if all(c == "—" for c in cells):
            continue
        tgt = target_of(name)
        tgt_s = ""
        if tgt is not None:
            cmp, bound, note = tgt
            vals = [value_of(r, name) for r in results]
            if name == "materialize build":
                vals = [v if r["H"] == 256 else None for v, r in zip(vals, results)]
            ok = [v <= bound for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
            mark = "" if not ok else (" ✓" if all(ok) else f" ✗ {sum(ok)}/{len(ok)}")
            tgt_s = f"{cmp} {bound:g} {note}{mark}"
        if markdown:
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {tgt_s} |")
        else:
            lines.append(name.ljust(width) + "".join(c.rjust(colw) for c in cells) + "   " + tgt_s)
    return "\n".join(lines)


def main(argv=None):
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available in this torch build / on this machine")
    dtype = getattr(torch, args.dtype)
    if args.no_blas_limit:
        import kpflow.operator

        kpflow.operator.BLAS_THREADS = None
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            sys.exit(f"--models: unknown model {m!r}; choose from {sorted(MODELS)}")
    if args.sizes:
        sizes = [tuple(int(s) for s in part.split(",")) for part in args.sizes.split(";")]
    else:
        sizes = SIZES[:1] if args.quick else SIZES
    env = environment(device)
    print(f"kpflow benchmark: {env['torch']} on {env['device']}, {env['torch_threads']} torch threads, "
          f"{args.dtype}{', quick' if args.quick else ''}", flush=True)
    load = env.get("loadavg", (0.0,))[0]
    if device.type == "cpu" and load > (env["cpu_count"] or 1):
        print(f"warning: load average {load:.1f} on {env['cpu_count']} CPUs: other processes compete for the "
              "cores and multi-threaded timings (the reference above all) are unreliable; "
              "compare with --threads 1", flush=True)
    results = []
    t_start = time.perf_counter()
    for B, T, H in sizes:
        for kind in models:
            t0 = time.perf_counter()
            rec = bench_config(kind, B, T, H, args, device, dtype)
            results.append(rec)
            print(f"  {kind} B={B} T={T} H={H}: grad {rec['grad_ms']:.1f} ms, "
                  f"K·v {rec['ops']['K·v']['ratio']:.2f}×, P·v {rec['ops']['P·v']['ratio']:.2f}×, "
                  f"P*·v {rec['ops']['P*·v']['ratio']:.2f}×  ({time.perf_counter() - t0:.0f} s)", flush=True)
    env["loadavg_end"] = environment(device).get("loadavg")
    print()
    print(table(results))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; brackets: interquartile range over rounds; "
          "mem: peak extra bytes of one product / bytes of the trajectory tensor [B, T, S]")
    if args.out:
        payload = {"environment": env, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "targets": TARGETS, "results": results, "table_markdown": table(results, markdown=True)}
        args.out.write_text(json.dumps(payload, indent=1, default=lambda o: None if o is math.inf else str(o)))
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
