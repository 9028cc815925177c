#!/usr/bin/env python3
"""Peak memory and time of one training step of every attention energy, dense vs blockwise (issue 11, §1).

One *training step* = ``--iters`` iterations of one compiled attention term (shared weights, step 0.1), a scalar
loss (mean of the squared output) and ``backward()`` to the layer's weights: what the optimizer needs. Energies:
every attention entry of the catalog, and a user-defined callable kernel (``Kernel.from_torch`` of a Gaussian
kernel with ``f = log``, the pairwise-kernel pattern).

Each energy runs at every ``--sizes`` N with ``sdpa_threshold = 512``: above it the emitted module evaluates
its pairwise quantities blockwise (:mod:`energyarch.blockwise`, or SDPA passes / associativity where the pattern
has them). At the smallest N the dense form (threshold above N) runs as well, for contrast. Every
configuration runs in a forked child of this process, so that each peak is its own: memory is the peak RSS
increase over the RSS before the first step.

    python3 benchmarks/bench_memory.py                    # N = 1024, 4096; writes results/bench_memory.md
    python3 benchmarks/bench_memory.py --sizes 256 512 --output ''     # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import energyarch as ea  # noqa: E402
from energyarch import blockwise, catalog  # noqa: E402
from bench_layers import machine_header, maxrss_bytes, rss_bytes, timed  # noqa: E402

THREADS = 2
USER_KERNEL = "user callable kernel (Gaussian, f = log)"


def gaussian(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A user's kernel on two p-vectors: exp(−‖x − y‖² / p)."""
    return torch.exp(-(x - y).pow(2).sum() / x.shape[-1])


def energies(d: int, heads: int) -> dict[str, ea.Attention]:
    out = {}
    for name, entry in sorted(catalog.load_catalog().items()):
        if entry.family == "attention":
            term = entry.term(d)
            out[name] = ea.Attention(f=term.f, K=term.K, heads=heads, constraint=term.constraint, name="attn")
    out[USER_KERNEL] = ea.Attention(f="log(x)", K=ea.Kernel.from_torch(gaussian, "gaussian"), heads=heads, name="attn")
    return out


def measure(name: str, N: int, threshold: int, a) -> dict:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    step = ea.compile(energies(a.d, a.heads)[name], d=a.d, sdpa_threshold=threshold)
    module = step.terms["attn"]
    X = torch.randn(a.batch, N, a.d)
    pattern = step.derivations["attn"].pattern
    rss0 = rss_bytes()

    def train_step():
        module.weight.grad = None
        Y = X
        for _ in range(a.iters):
            Y = module(Y, 0.1)
        Y.square().mean().backward()
        if not torch.isfinite(module.weight.grad).all():
            raise RuntimeError(f"{name} N={N}: non-finite weight gradient")

    times = timed(train_step, a.warmup, a.repeats)
    return {
        "pattern": pattern,
        "train_s": statistics.median(times),
        "train_min_s": min(times),
        "train_mem": maxrss_bytes() - rss0,
    }


def _child(queue, *args):
    try:
        queue.put(measure(*args))
    except BaseException as exc:  # report, never hang the parent
        queue.put({"error": f"{type(exc).__name__}: {str(exc)[:200]}"})


def run_forked(name: str, N: int, threshold: int, a) -> dict:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_child, args=(q, name, N, threshold, a))
    proc.start()
    try:
        res = q.get(timeout=a.timeout)
    except Exception:
        proc.kill()
        proc.join()
        return {"error": f"no result within {a.timeout:.0f} s (exit code {proc.exitcode})"}
    proc.join()
    return res


def _mb(x: float) -> str:
    return f"{x / 2**20:,.0f}"


def table(results: dict, names: list[str], sizes: list[int]) -> str:
    small, big = min(sizes), max(sizes)
    head = ["energy", "pattern", f"dense N={small}: MB / s"]
    head += [f"blockwise N={N}: MB / s" for N in sizes]
    head += [f"memory ×, N {small}→{big} (N ×{big // small})", "exponent (1 linear, 2 quadratic)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]

    def cell(r):
        if "error" in r:
            return f"error: {r['error']}"
        return f"{_mb(r['train_mem'])} / {r['train_min_s']:.2f}"

    for name in names:
        r0 = results.get((name, small, "dense"), {})
        patterns = {
            f"{r['pattern']} (N={N} {kind})": r["pattern"]
            for (n, N, kind), r in results.items()
            if n == name and "pattern" in r
        }
        distinct = list(dict.fromkeys(patterns.values()))
        cells = [name, distinct[0] if len(distinct) == 1 else ", ".join(patterns) or "?", cell(r0)]
        cells += [cell(results.get((name, N, "blockwise"), {"error": "not run"})) for N in sizes]
        m0 = results.get((name, small, "blockwise"), {}).get("train_mem")
        m1 = results.get((name, big, "blockwise"), {}).get("train_mem")
        if m0 and m1 and big > small:
            cells += [f"{m1 / m0:.2f}", f"{math.log(m1 / m0) / math.log(big / small):.2f}"]
        else:
            cells += ["—", "—"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096], help="sequence lengths N")
    ap.add_argument("--batch", type=int, default=1, help="B")
    ap.add_argument("--d", type=int, default=64, help="model width")
    ap.add_argument("--heads", type=int, default=4, help="H (p = d / H)")
    ap.add_argument("--iters", type=int, default=2, help="iterations of the layer per training step")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threshold", type=int, default=512, help="sdpa_threshold (blockwise above it)")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense column")
    ap.add_argument("--only", nargs="+", default=None, help="energies to run (default: all)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    ap.add_argument("--output", default=str(HERE / "results" / "bench_memory.md"), help="markdown file ('' = none)")
    a = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    names = a.only or list(energies(a.d, a.heads))
    sizes = sorted(a.sizes)
    header = machine_header(
        "bench_memory: one training step of every attention energy, dense vs blockwise",
        f"B={a.batch}, d={a.d}, H={a.heads} (p={a.d // a.heads}), iterations={a.iters}, float32, "
        f"sdpa_threshold={a.threshold}, tile budget {blockwise.TILE_BUDGET_BYTES // 2**20} MiB; loss = mean(X²), "
        f"backward to the weights; warm-up {a.warmup}, repeats {a.repeats} (min time reported); memory = peak RSS "
        f"increase over the RSS before the first step, each configuration in a forked process",
        f"python3 benchmarks/bench_memory.py {' '.join(argv)}".strip(),
    )
    print(header, flush=True)
    results = {}
    runs = [(name, N, "blockwise") for N in sizes for name in names]
    if not a.no_dense:
        runs = [(name, sizes[0], "dense") for name in names] + runs
    for name, N, kind in runs:
        threshold = max(N, a.threshold) if kind == "dense" else min(a.threshold, N - 1)
        t0 = time.perf_counter()
        res = run_forked(name, N, threshold, a)
        results[(name, N, kind)] = res
        what = res.get("error") or f"{_mb(res['train_mem'])} MB, {res['train_min_s']:.2f} s ({res['pattern']})"
        print(f"{name:42s} N={N:5d} {kind:9s} {what}  [{time.perf_counter() - t0:.0f} s wall]", flush=True)
    text = table(results, names, sizes)
    report = header + "\n" + text + "\n"
    print("\n" + text, flush=True)
    if a.output:
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output).write_text(report)
        print(f"\nwritten: {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
