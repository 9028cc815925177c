#!/usr/bin/env python3
"""Second pass of the memory-linear bi-softmax: ``symmetric`` (plain SDPA, width p) against ``sink`` (width p + 1,
N + 1 keys), forward + backward of ``(P + Pᵀ)Φ`` in one process (wall time and process CPU time, min over repeats), interleaved in alternating order, with the two-pass floor (two plain
SDPA calls of width p) for scale. Ratios within one run are what this measures; absolute times depend on load.

    python3 benchmarks/bench_bisoftmax_sdpa.py --sizes 1024 4096 --repeats 7 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from energyarch.runtime import bisoftmax_sdpa  # noqa: E402


def floor(Phi: torch.Tensor, b: float) -> torch.Tensor:
    """Two plain SDPA passes of width p: the FLOP floor of (P + Pᵀ)Φ in two passes."""
    return F.scaled_dot_product_attention(Phi, Phi, Phi, scale=b) + F.scaled_dot_product_attention(Phi, Phi, Phi, scale=b)


VARIANTS = {
    "symmetric": lambda Phi, b: bisoftmax_sdpa(Phi, b, second_pass="symmetric"),
    "sink": lambda Phi, b: bisoftmax_sdpa(Phi, b, second_pass="sink"),
    "floor": floor,
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    b = a.head_dim ** -0.5
    print(f"# bisoftmax_sdpa second pass: forward + backward, B={a.batch}, H={a.heads}, p={a.head_dim}, "
          f"{a.threads} thread(s), min of {a.repeats} interleaved repeats; load average at start "
          f"{os.getloadavg()[0]:.2f}\n")
    print("| N | clock | symmetric s | sink s | floor s | symmetric ÷ sink | symmetric ÷ floor | sink ÷ floor |")
    print("|---|---|---|---|---|---|---|---|")
    for N in a.sizes:
        g = torch.Generator().manual_seed(0)
        Z = torch.randn(a.batch, a.heads, N, a.head_dim, generator=g)
        Phi = (F.normalize(Z, dim=-1) * a.head_dim ** 0.5).requires_grad_(True)
        V = torch.randn(Phi.shape, generator=g)
        times = {k: [] for k in VARIANTS}
        cpu = {k: [] for k in VARIANTS}
        for r in range(a.repeats + 1):                   # the first round is a warm-up
            order = list(VARIANTS.items())
            for name, fn in (order if r % 2 else order[::-1]):   # alternate the order: no variant always first
                t0, c0 = time.perf_counter(), time.process_time()
                (fn(Phi, b) * V).sum().backward()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
                Phi.grad = None
        for clock, data in (("wall", times), ("CPU", cpu)):
            t = {k: min(v[1:]) for k, v in data.items()}
            print(f"| {N} | {clock} | {t['symmetric']:.4f} | {t['sink']:.4f} | {t['floor']:.4f} | "
                  f"{t['symmetric'] / t['sink']:.3f} | {t['symmetric'] / t['floor']:.3f} | "
                  f"{t['sink'] / t['floor']:.3f} |", flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}; medians: " + ", ".join(
        f"{k} {statistics.median(v[1:]):.4f} s" for k, v in times.items()) + f" (N={a.sizes[-1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
