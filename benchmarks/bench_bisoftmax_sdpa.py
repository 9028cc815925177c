#!/usr/bin/env python3
"""The memory-linear SDPA passes, forward + backward, variants interleaved in one process.

Bidirectional ``(P + Pᵀ)Φ`` (:func:`energyarch.runtime.bisoftmax_sdpa`):

- ``flash``: pass 1 by :func:`energyarch.runtime.flash_lse` (width p, L from the CPU kernel), plain symmetric pass 2
  (the default on CPU in float32/float64);
- ``sink1``: pass 1 with the sink coordinate (width p + 1, N + 1 keys), plain symmetric pass 2 (the default
  before :func:`~energyarch.runtime.flash_lse`; still the path on CUDA, under autocast and ``torch.compile``);
- ``sink``: both passes with the sink (``second_pass='sink'``);
- ``floor``: two plain SDPA calls of width p (the FLOP floor of two passes).

Causal ``(PΦ_k, L)`` (:func:`energyarch.runtime.causal_softmax_sdpa`, ``--causal``): ``flash`` against ``sink1``
(the sink key and dummy query) and ``floor``, one plain causal SDPA call.

Wall time and process CPU time, min over repeats after a warm-up round, order alternating; ratios within one run
are what this measures, absolute times depend on load.

    python3 benchmarks/bench_bisoftmax_sdpa.py --sizes 1024 4096 --repeats 7 --threads 1
    python3 benchmarks/bench_bisoftmax_sdpa.py --causal --sizes 1024 4096 --repeats 7 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from energyarch import runtime  # noqa: E402


@contextlib.contextmanager
def no_flash() -> Iterator[None]:
    """The runtime with :func:`~energyarch.runtime.flash_lse` switched off (the sink constructions)."""
    saved = runtime.flash_lse_ok
    runtime.flash_lse_ok = lambda *ts: False
    try:
        yield
    finally:
        runtime.flash_lse_ok = saved


def _sink1(Phi: torch.Tensor, b: float) -> torch.Tensor:
    with no_flash():
        return runtime.bisoftmax_sdpa(Phi, b, second_pass="symmetric")


def _causal_sink1(Phi: torch.Tensor, b: float) -> torch.Tensor:
    with no_flash():
        PK, L = runtime.causal_softmax_sdpa(Phi, Phi, b)
    return PK + L


BIDIRECTIONAL: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "flash": lambda Phi, b: runtime.bisoftmax_sdpa(Phi, b),
    "sink1": _sink1,
    "sink": lambda Phi, b: runtime.bisoftmax_sdpa(Phi, b, second_pass="sink"),
    "floor": lambda Phi, b: (
        F.scaled_dot_product_attention(Phi, Phi, Phi, scale=b) + F.scaled_dot_product_attention(Phi, Phi, Phi, scale=b)
    ),
}
CAUSAL: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "flash": lambda Phi, b: sum(runtime.causal_softmax_sdpa(Phi, Phi, b)),
    "sink1": _causal_sink1,
    "floor": lambda Phi, b: F.scaled_dot_product_attention(Phi, Phi, Phi, scale=b, is_causal=True),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--causal", action="store_true", help="the causal pass instead of the bidirectional pair")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    variants = CAUSAL if a.causal else BIDIRECTIONAL
    b = a.head_dim**-0.5
    print(
        f"# {'causal_softmax_sdpa' if a.causal else 'bisoftmax_sdpa'}: forward + backward, B={a.batch}, "
        f"H={a.heads}, p={a.head_dim}, {a.threads} thread(s), min of {a.repeats} interleaved repeats; "
        f"load average at start {os.getloadavg()[0]:.2f}\n"
    )
    names = list(variants)
    print(
        "| N | clock | "
        + " | ".join(f"{k} s" for k in names)
        + " | "
        + " | ".join(f"{k} ÷ floor" for k in names if k != "floor")
        + " | flash ÷ sink1 |"
    )
    print("|---|---|" + "---|" * (2 * len(names)))
    for N in a.sizes:
        g = torch.Generator().manual_seed(0)
        Z = torch.randn(a.batch, a.heads, N, a.head_dim, generator=g)
        Phi = (F.normalize(Z, dim=-1) * a.head_dim**0.5).requires_grad_(True)
        V = torch.randn(a.batch, a.heads, N, a.head_dim, generator=g)
        wall: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}
        for r in range(a.repeats + 1):  # the first round is a warm-up
            for name in names if r % 2 else names[::-1]:  # alternate the order: no variant always first
                t0, c0 = time.perf_counter(), time.process_time()
                (variants[name](Phi, b) * V).sum().backward()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
                Phi.grad = None
        for clock, data in (("wall", wall), ("CPU", cpu)):
            t = {k: min(v[1:]) for k, v in data.items()}
            print(
                f"| {N} | {clock} | "
                + " | ".join(f"{t[k]:.4f}" for k in names)
                + " | "
                + " | ".join(f"{t[k] / t['floor']:.3f}" for k in names if k != "floor")
                + f" | {t['flash'] / t['sink1']:.3f} |",
                flush=True,
            )
    print(
        f"\nload average at end {os.getloadavg()[0]:.2f}; medians (N={a.sizes[-1]}): "
        + ", ".join(f"{k} {statistics.median(v[1:]):.4f} s" for k, v in wall.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
