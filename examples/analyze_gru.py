"""Train a small GRU briefly on a delayed memory task, then measure it with kpflow.analysis.

Prints the top spectrum of the parameter operator K, the effective ranks of
K, P Pᵀ and P K P*, the misdirection cos(P K P*, P Pᵀ), and the Lyapunov
spectrum with its Kaplan–Yorke dimension. Runs in well under a minute on a
laptop CPU:

    python examples/analyze_gru.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

import kpflow
from kpflow.analysis import (
    effective_rank,
    kaplan_yorke_dimension,
    lyapunov_spectrum,
    misdirection,
    top_eigs,
)

T, STIM, GO, HIDDEN = 40, 5, 25, 32


def delayed_memory_batch(batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Show an angle (cos θ, sin θ) for STIM steps, wait, and report it after a go cue at GO."""
    theta = rng.uniform(0, 2 * np.pi, batch)
    x = np.zeros((batch, T, 3))
    y = np.zeros((batch, T, 2))
    x[:, :STIM, 0], x[:, :STIM, 1] = np.cos(theta)[:, None], np.sin(theta)[:, None]
    x[:, GO, 2] = 1.0  # go cue
    y[:, GO:, 0], y[:, GO:, 1] = np.cos(theta)[:, None], np.sin(theta)[:, None]
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


def main() -> None:
    torch.set_num_threads(1)  # a model this small runs fastest on one thread (and never oversubscribes)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    gru = nn.GRU(3, HIDDEN, batch_first=True)
    readout = nn.Linear(HIDDEN, 2)
    opt = torch.optim.Adam([*gru.parameters(), *readout.parameters()], lr=1e-2)
    start = time.perf_counter()
    for step in range(300):
        x, y = delayed_memory_batch(64, rng)
        loss = nn.functional.mse_loss(readout(gru(x)[0]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == 299:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    print(f"trained in {time.perf_counter() - start:.1f} s\n")

    # The linearization point: 16 held-out trials, N = 16 · 40 · 32 = 20480.
    x, _ = delayed_memory_batch(16, rng)
    traj = kpflow.Trajectory(gru, x)
    K = kpflow.ParameterOperator(traj)
    P = kpflow.PropagationOperator(traj)
    G = kpflow.GradientFlowOperator(traj)
    print(traj)

    spec = top_eigs(K, 10, seed=0)
    print(f"top 10 eigenvalues of K ({spec.method}, {spec.num_matvecs} products):")
    print("   ", np.array2string(spec.values, precision=2))

    print("effective rank (participation ratio (tr A)² / tr A², Hutch++ with 150 products):")
    for name, op in (("K", K), ("P Pᵀ", P @ P.H), ("P K P*", G)):
        print(f"    {name:7s} {effective_rank(op, num_matvecs=150, seed=0):.2f}")

    mis = misdirection(traj, num_probes=60, seed=0)
    print(f"misdirection cos(P K P*, P Pᵀ) = {mis:.3f}")

    lyap = lyapunov_spectrum(traj, state_warmup=5, frame_warmup=10)
    print(f"Lyapunov exponents (top 8 of {len(lyap.exponents)}, over {lyap.num_steps} steps):")
    print("   ", np.array2string(lyap.exponents[:8], precision=3))
    print(f"Kaplan–Yorke dimension = {kaplan_yorke_dimension(lyap.exponents):.2f}")


if __name__ == "__main__":
    main()
