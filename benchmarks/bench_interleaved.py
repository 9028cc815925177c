#!/usr/bin/env python3
"""FLOP parity on a shared machine: the layers of ``bench_layers.py`` timed in ONE process, interleaved.

``bench_layers.py`` measures each (layer, N) in its own process, one after the other, so load that comes and goes
between configurations lands in the ratios. Here every round runs one training step of each layer in turn
(alternating the order), and both the wall time and this process's CPU time (``time.process_time``: what the
step itself computed, less exposed to other processes than the wall clock) are recorded. The ratios
``time per FLOP ÷ the vanilla block's`` use the minimum over rounds; FLOPs are :func:`bench_layers.flops`
(analytic) and :func:`bench_layers.counted_flops` (``torch.utils.flop_counter`` plus the SDPA calls). Memory is
not measured here (``bench_layers.py`` does that, in isolated processes).

    python3 benchmarks/bench_interleaved.py --sizes 256 1024 4096 --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_layers as bl  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--layers", nargs="+", default=["emitted", "hand", "vanilla", "vanilla-ff1"], choices=bl.LAYERS)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (one step of every layer each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", default=str(HERE / "results" / "bench_interleaved.md"))
    a = ap.parse_args(argv)
    bl._set_sizes(a.batch, a.width, a.iters)
    torch.set_num_threads(a.threads)
    header = bl.machine_header(
        f"FLOP parity, interleaved: one training step of {a.iters} iterations, all layers in one process",
        f"B={a.batch}, d={a.width}, H={bl.HEADS}; one warm-up round, then {a.rounds} rounds alternating the order; "
        f"min over rounds of wall time and of process CPU time; {a.threads} thread(s)",
        "python3 benchmarks/bench_interleaved.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    print(header, flush=True)
    head = [
        "N",
        "layer",
        "wall s (min)",
        "wall s (median)",
        "CPU s (min)",
        "GFLOP analytic",
        "GFLOP counted",
        "time/FLOP ÷ (d), CPU, analytic",
        "time/FLOP ÷ (d), CPU, counted",
        "time/FLOP ÷ (d), wall, analytic",
        "time/FLOP ÷ (e), CPU, analytic",
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for N in a.sizes:
        torch.manual_seed(0)
        X = torch.randn(a.batch, N, a.width)
        steps, counted = {}, {}
        for layer in a.layers:
            model = bl.build(layer, a.width, bl.HEADS, a.iters)
            params = list(model.parameters())

            def step(model=model, params=params):
                for p in params:
                    p.grad = None
                model(X).square().mean().backward()

            steps[layer] = step
            mm, sdpa = bl.counted_flops(step)  # also the warm-up step
            counted[layer] = mm + sdpa
        wall = {k: [] for k in steps}
        cpu = {k: [] for k in steps}
        order = list(steps)
        for r in range(a.rounds):
            for layer in order if r % 2 == 0 else order[::-1]:
                w0, c0 = time.perf_counter(), time.process_time()
                steps[layer]()
                cpu[layer].append(time.process_time() - c0)
                wall[layer].append(time.perf_counter() - w0)
        per = {
            k: {
                "cpu": min(cpu[k]) / bl.flops(k, N),
                "cpu_c": min(cpu[k]) / counted[k],
                "wall": min(wall[k]) / bl.flops(k, N),
            }
            for k in steps
        }
        ref, ref1 = per.get("vanilla"), per.get("vanilla-ff1")
        for layer in steps:
            p = per[layer]
            cells = [
                str(N),
                bl.LABELS[layer],
                f"{min(wall[layer]):.3f}",
                f"{statistics.median(wall[layer]):.3f}",
                f"{min(cpu[layer]):.3f}",
                f"{bl.flops(layer, N) / 1e9:.2f}",
                f"{counted[layer] / 1e9:.2f}",
                f"{p['cpu'] / ref['cpu']:.2f}" if ref else "—",
                f"{p['cpu_c'] / ref['cpu_c']:.2f}" if ref else "—",
                f"{p['wall'] / ref['wall']:.2f}" if ref else "—",
                f"{p['cpu'] / ref1['cpu']:.2f}" if ref1 else "—",
            ]
            rows.append("| " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    text = (
        header
        + "\n"
        + "\n".join(rows)
        + f"\n\nLoad average at the end: "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
        + f" (1, 5, 15 min); {os.cpu_count()} logical CPUs.\n"
    )
    if a.output:
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output).write_text(text)
        print(f"\nwritten: {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
