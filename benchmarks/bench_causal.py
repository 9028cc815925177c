"""Causal bi-softmax layer (emitted) vs a GPT block: one training step, time, peak memory, FLOPs (analytic, and
counted by ``torch.utils.flop_counter`` plus the recorded SDPA calls, which the counter misses on the CPU).

Both layers are one step of the same shape: the causal Hyper-SET step is the conditional-energy attention term
(ea.CausalAttention, one SDPA call with is_causal=True plus the self-term) followed by a ReLU feed-forward term of
width M = 4d; the GPT block is pre-norm RMSNorm, causal SDPA attention (QKV, output projection) and a GELU MLP of
width 4d. A training step is forward + backward of ``out.square().mean()`` w.r.t. the parameters.

Analytic FLOPs (multiply-add = 2 FLOPs; causal attention counts the lower triangle, N²/2 pairs; the backward pass
is counted as twice the forward, the usual convention):

- GPT block forward: QKV 6Nd² + scores and P·V 2·2·(N²/2)·d + output projection 2Nd² + MLP 16Nd²
- causal Hyper-SET step forward: X W 2Nd² + SDPA over the p coordinates 2·2·(N²/2)·d (on the CPU in float32,
  :func:`energyarch.runtime.flash_lse`; the sink construction elsewhere has width p + 1) + self-term 4Nd
  + G Wᵀ 2Nd² + X D 8Nd² + ReLU(U) Dᵀ 8Nd²

    python benchmarks/bench_causal.py                      # N = 256, 1024; B = 8, d = 256 (about 2 minutes)
    python benchmarks/bench_causal.py --ns 128 --batch 2 --d 64 --repeats 2   # a quick look
    python benchmarks/bench_causal.py --interleaved --ns 256,1024,4096 --batch 2 --d 128 --repeats 9
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layers import counted_flops, machine_header, maxrss_bytes, rss_bytes, timed  # noqa: E402

import energyarch as ea  # noqa: E402

HEADS = 4


class CausalHyperSETStep(nn.Module):
    """One step of the causal energy: attention term then feed-forward term, learned per-channel step sizes."""

    def __init__(self, d: int, heads: int = HEADS):
        super().__init__()
        energy = ea.CausalAttention(f="log(x)/beta", K="exp(beta*s)", heads=heads) + ea.FeedForward(
            g="x", h="relu(x)**2/2", ratio=4
        )
        self.step = ea.compile(energy, d=d)
        self.alpha = nn.Parameter(torch.full((d,), 0.1))
        self.gamma = nn.Parameter(torch.full((d,), 0.1))

    def forward(self, X: Tensor) -> Tensor:
        return self.step(X, {"attn": self.alpha, "ff": self.gamma})


class GPTBlock(nn.Module):
    """Pre-norm GPT block: RMSNorm, causal SDPA attention, GELU MLP of width 4d (no biases)."""

    def __init__(self, d: int, heads: int = HEADS):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.RMSNorm(d, eps=1e-6), nn.RMSNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, X: Tensor) -> Tensor:
        B, N, d = X.shape
        q, k, v = self.qkv(self.norm1(X)).view(B, N, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        X = X + self.proj(a.transpose(1, 2).reshape(B, N, d))
        return X + self.fc2(F.gelu(self.fc1(self.norm2(X))))


def flops(layer: str, B: int, N: int, d: int, heads: int = HEADS) -> float:
    """Analytic FLOPs of one training step (forward + backward = 3 × forward)."""
    if layer == "gpt":
        fwd = 6 * N * d * d + 2 * 2 * (N * N / 2) * d + 2 * N * d * d + 16 * N * d * d
    else:
        fwd = 2 * N * d * d + 2 * 2 * (N * N / 2) * d + 4 * N * d + 2 * N * d * d + 16 * N * d * d
    return 3 * B * fwd


def measure(layer: str, B: int, N: int, d: int, repeats: int, warmup: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = CausalHyperSETStep(d) if layer == "causal hyperset" else GPTBlock(d)
    X = torch.randn(B, N, d)
    params = list(model.parameters())
    rss0 = rss_bytes()

    cpu = []

    def step():
        for p in params:
            p.grad = None
        c0 = time.process_time()
        model(X).square().mean().backward()
        cpu.append(time.process_time() - c0)

    times = timed(step, warmup, repeats)
    cpu_s = min(cpu[warmup:])  # this process's CPU time: less exposed to other load
    mem = maxrss_bytes() - rss0
    mm, sdpa = counted_flops(step)  # torch.utils.flop_counter + the recorded SDPA calls (untimed)
    return {
        "layer": layer,
        "N": N,
        "train_s": statistics.median(times),
        "train_mem": mem,
        "cpu_s": cpu_s,
        "params": sum(p.numel() for p in params),
        "flops": flops("gpt" if layer == "gpt block" else "hyperset", B, N, d),
        "counted": mm + sdpa,
        "counted_sdpa": sdpa,
    }


def interleaved(B: int, N: int, d: int, rounds: int, threads: int) -> dict:
    """Both layers in this process, one training step of each per round in alternating order (after one warm-up
    round); min over rounds of wall time and process CPU time. Ratios within one process are what a shared
    machine can still measure (no memory column: the layers share the process)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    X = torch.randn(B, N, d)
    steps, out = {}, {}
    for layer in ("gpt block", "causal hyperset"):
        model = CausalHyperSETStep(d) if layer == "causal hyperset" else GPTBlock(d)
        params = list(model.parameters())

        def step(model=model, params=params):
            for p in params:
                p.grad = None
            model(X).square().mean().backward()

        steps[layer] = step
        mm, sdpa = counted_flops(step)  # also a warm-up step
        out[layer] = {
            "flops": flops("gpt" if layer == "gpt block" else "hyperset", B, N, d),
            "counted": mm + sdpa,
            "wall": [],
            "cpu": [],
        }
    order = list(steps)
    for r in range(rounds + 1):
        for layer in order if r % 2 else order[::-1]:
            w0, c0 = time.perf_counter(), time.process_time()
            steps[layer]()
            if r:  # round 0: warm-up
                out[layer]["cpu"].append(time.process_time() - c0)
                out[layer]["wall"].append(time.perf_counter() - w0)
    return out


def main_interleaved(a, argv) -> int:
    """``--interleaved``: :func:`interleaved` per N, a table of time per FLOP ÷ the GPT block's."""
    rows = []
    for N in [int(n) for n in a.ns.split(",")]:
        res = interleaved(a.batch, N, a.d, a.repeats, a.threads)
        g = res["gpt block"]
        for layer, r in res.items():
            cpu, wall = min(r["cpu"]), min(r["wall"])
            rows.append(
                f"| {N} | {layer} | {wall:.4f} | {cpu:.4f} | {r['flops'] / 1e9:.2f} | {r['counted'] / 1e9:.2f} | "
                f"{(cpu / r['flops']) / (min(g['cpu']) / g['flops']):.2f} | "
                f"{(cpu / r['counted']) / (min(g['cpu']) / g['counted']):.2f} | "
                f"{(wall / r['flops']) / (min(g['wall']) / g['flops']):.2f} |"
            )
            print(rows[-1], flush=True)
    header = machine_header(
        "Causal bi-softmax layer vs GPT block, interleaved in one process (one training step)",
        f"B={a.batch}, d={a.d}, H={HEADS}, one step (attention + FF of width 4d), one warm-up round then "
        f"{a.repeats} rounds alternating the order, min over rounds; {a.threads} thread(s)",
        "python benchmarks/bench_causal.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    text = (
        header + "\n| N | layer | wall s (min) | CPU s (min) | GFLOPs (analytic) | GFLOPs counted "
        "| CPU time per analytic FLOP ÷ GPT | CPU time per counted FLOP ÷ GPT | wall time per analytic FLOP ÷ GPT |"
        "\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
        f"\nLoad average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min).\n"
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(text)
    return 0


def _target(queue, *args):
    try:
        queue.put(measure(*args))
    except BaseException as exc:  # report, never hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def isolated(*args, timeout: float = 900) -> dict:
    """Each configuration in a fresh forked process, so that peak RSS is its own."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_target, args=(q, *args))
    proc.start()
    try:
        return q.get(timeout=timeout)
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ns", default="256,1024")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/bench_causal.md")
    ap.add_argument(
        "--interleaved",
        action="store_true",
        help="both layers in one process, alternating (--repeats rounds): for a shared machine",
    )
    a = ap.parse_args(argv)
    if a.interleaved:
        return main_interleaved(a, argv)
    ns = [int(n) for n in a.ns.split(",")]
    rows = []
    for N in ns:
        res = {
            layer: isolated(layer, a.batch, N, a.d, a.repeats, a.warmup, a.threads)
            for layer in ("gpt block", "causal hyperset")
        }
        for r in res.values():
            if "error" in r:
                print(f"N={N}: {r['error']}", file=sys.stderr)
                return 1
        g = res["gpt block"]
        for layer, r in res.items():
            tpf = (r["train_s"] / r["flops"]) / (g["train_s"] / g["flops"])
            tpc = (r["train_s"] / r["counted"]) / (g["train_s"] / g["counted"])
            tpcpu = (r["cpu_s"] / r["flops"]) / (g["cpu_s"] / g["flops"])
            rows.append(
                f"| {N} | {layer} | {r['params']:,} | {r['train_s']:.3f} | {r['train_s'] / g['train_s']:.2f}× "
                f"| {r['train_mem'] / 2**20:,.0f} | {r['flops'] / 1e9:.2f} | {r['flops'] / g['flops']:.2f}× "
                f"| {tpf:.2f} | {r['counted'] / 1e9:.2f} ({r['counted_sdpa'] / 1e9:.2f} SDPA) | {tpc:.2f} | "
                f"{r['cpu_s']:.3f} | {tpcpu:.2f} |"
            )
            print(json.dumps({k: v for k, v in r.items()}), flush=True)
    header = machine_header(
        "Causal bi-softmax layer vs GPT block (one training step)",
        f"B={a.batch}, d={a.d}, H={HEADS}, one step (attention + FF of width 4d), median of {a.repeats} after "
        f"{a.warmup} warm-up, {a.threads} thread(s), each configuration in its own process",
        "python benchmarks/bench_causal.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    text = (
        header + "\n| N | layer | params | train s | time ÷ GPT | peak ΔRSS MB | GFLOPs (analytic) | FLOPs ÷ GPT "
        "| time-per-FLOP ÷ GPT | GFLOPs counted (flop_counter + SDPA) | time-per-counted-FLOP ÷ GPT "
        "| CPU s (min) | CPU-time-per-FLOP ÷ GPT |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
        f"\nLoad average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min).\n"
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
