#!/usr/bin/env python3
"""Where a layer's training step spends its time: ``torch.profiler`` over a few steps of one ``bench_layers.py``
layer, self CPU time per operator (grouped by input shape) and by kind (matrix products and SDPA, softmax,
everything else). Under load the shares are more reliable than the absolute times.

    python3 benchmarks/profile_layer.py --layer emitted --N 256 --steps 10 --threads 1
    python3 benchmarks/profile_layer.py --layer causal --N 1024 --steps 5 --threads 1   # bench_causal's step
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_layers as bl  # noqa: E402

KINDS = (
    ("matrix products / SDPA", ("aten::bmm", "aten::mm", "aten::addmm", "flash_attention")),
    ("softmax", ("softmax",)),
)


CAUSAL = {"causal": "causal Hyper-SET step (bench_causal.py)", "gpt": "GPT block (bench_causal.py)"}


def build(layer: str, width: int, iters: int) -> torch.nn.Module:
    """A ``bench_layers.py`` layer, or (``causal``, ``gpt``) one of ``bench_causal.py``'s (one step, no iterations)."""
    if layer in CAUSAL:
        import bench_causal as bc

        return bc.CausalHyperSETStep(width) if layer == "causal" else bc.GPTBlock(width)
    return bl.build(layer, width, bl.HEADS, iters)


def kind(name: str) -> str:
    return next((k for k, keys in KINDS if any(key in name for key in keys)), "other (elementwise, copies, …)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layer", default="emitted", choices=[*bl.LAYERS, *CAUSAL])
    ap.add_argument("--N", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args(argv)
    bl._set_sizes(a.batch, a.width, a.iters)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = build(a.layer, a.width, a.iters)
    X = torch.randn(a.batch, a.N, a.width)

    def step():
        for p in model.parameters():
            p.grad = None
        model(X).square().mean().backward()

    for _ in range(2):
        step()
    with profile(record_shapes=True) as prof:
        for _ in range(a.steps):
            step()
    events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    shares: dict[str, float] = {}
    for e in events:
        shares[kind(e.key)] = shares.get(kind(e.key), 0.0) + e.self_cpu_time_total
    print(
        f"### {CAUSAL.get(a.layer) or bl.LABELS[a.layer]}, N = {a.N} (B = {a.batch}, d = {a.width}, {a.iters} iterations, "
        f"{a.threads} thread(s), {a.steps} steps; load average {os.getloadavg()[0]:.2f})\n"
    )
    print(
        f"{total / a.steps / 1e3:.1f} ms self CPU time per step: "
        + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]))
        + "\n"
    )
    print("| operator | input shapes | calls / step | ms / step | share |\n|---|---|---|---|---|")
    for e in events[: a.top]:
        print(
            f"| `{e.key}` | {str(e.input_shapes)[:80]} | {e.count / a.steps:g} | "
            f"{e.self_cpu_time_total / a.steps / 1e3:.2f} | {e.self_cpu_time_total / total:.1%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
