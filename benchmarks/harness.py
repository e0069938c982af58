"""Timing and memory measurement helpers for the kpflow benchmark suite.

Timing: operations are measured *interleaved* with the reference (one BPTT
gradient): every round runs the reference and then each operation once, and
each operation's ratio is taken against the reference time of the same round.
Medians and interquartile ranges are over rounds. Interleaving keeps the
ratios meaningful on a machine whose load drifts (a shared CI box), which
absolute times are not.

Memory: the peak of the bytes the tensor allocator holds during one call,
above what it held before the call (the output included).

* CPU: torch's CPU allocations are invisible to ``tracemalloc`` (they do not
  go through Python's allocator) and RSS deltas are blurred by glibc reusing
  freed pages. We run the call under ``torch.profiler`` with
  ``profile_memory=True``: every allocation and free of the CPU allocator is
  recorded with the running "Total Allocated" of the profiled region, and the
  peak is the maximum of that running total. This counts exactly the bytes of
  tensors alive at the same time, like ``torch.cuda.max_memory_allocated``.
* CUDA: ``torch.cuda.reset_peak_memory_stats`` / ``max_memory_allocated``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import statistics
import tempfile
import time
from typing import Callable, Mapping

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    """(median, q25, q75) of a list of numbers."""
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return statistics.median(xs), q[0], q[2]


def interleaved(
    reference: Callable[[], object],
    ops: Mapping[str, Callable[[], object]],
    rounds: int,
    device: torch.device,
    warmup: int = 1,
) -> tuple[dict, dict]:
    """Time ``ops`` against ``reference``, round-robin.

    Returns
    -------
    ref : dict
        ``median_ms``, ``q25_ms``, ``q75_ms`` of the reference.
    stats : dict of name -> dict
        ``median_ms``, ``ratio`` (median of per-round ratios), ``ratio_q25``,
        ``ratio_q75``, ``iqr`` (``ratio_q75 - ratio_q25``).
    """
    for _ in range(warmup):
        reference()
        for fn in ops.values():
            fn()
    sync(device)
    ref_times: list[float] = []
    times: dict[str, list[float]] = {k: [] for k in ops}
    ratios: dict[str, list[float]] = {k: [] for k in ops}
    for _ in range(rounds):
        t0 = time.perf_counter()
        reference()
        sync(device)
        tr = time.perf_counter() - t0
        ref_times.append(tr)
        for name, fn in ops.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            t = time.perf_counter() - t0
            times[name].append(t)
            ratios[name].append(t / tr)
    m, a, b = quantiles(ref_times)
    ref = {"median_ms": 1e3 * m, "q25_ms": 1e3 * a, "q75_ms": 1e3 * b}
    stats = {}
    for name in ops:
        tm, _, _ = quantiles(times[name])
        rm, ra, rb = quantiles(ratios[name])
        stats[name] = {"median_ms": 1e3 * tm, "ratio": rm, "ratio_q25": ra, "ratio_q75": rb, "iqr": rb - ra}
    return ref, stats


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by the tensor allocator during ``fn()`` above the level before it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return int(peak)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as fh:
            trace = json.load(fh)
    peak = 0
    for ev in trace.get("traceEvents", []):
        if ev.get("name") == "[memory]":
            args = ev.get("args", {})
            if args.get("Device Type", 0) == 0:  # CPU
                peak = max(peak, int(args.get("Total Allocated", 0)))
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop chatter) inside the block."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (e.g. captured)
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class CountingOperator:
    """Counts the columns an operator is applied to, whatever entry point is used.

    Wraps ``_mv``/``_rmv``/``_mm``/``_rmm`` of one kpflow operator instance.
    """

    def __init__(self, op) -> None:
        self.op = op
        self.count = 0
        self._orig = {}
        for name in ("_mv", "_rmv", "_mm", "_rmm"):
            self._orig[name] = getattr(op, name)
        counter = self

        def wrap(name, cols):
            orig = counter._orig[name]

            def inner(x):
                counter.count += cols(x)
                return orig(x)

            return inner

        op._mv = wrap("_mv", lambda x: 1)
        op._rmv = wrap("_rmv", lambda x: 1)
        op._mm = wrap("_mm", lambda x: x.shape[1])
        op._rmm = wrap("_rmm", lambda x: x.shape[1])

    def restore(self) -> None:
        for name in self._orig:
            self.op.__dict__.pop(name, None)


def environment(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    try:
        import numpy
        import scipy

        info["numpy"] = numpy.__version__
        info["scipy"] = scipy.__version__
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {k: p.get(k) for k in ("internal_api", "num_threads", "prefix")} for p in threadpool_info()
        ]
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
