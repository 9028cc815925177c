#!/usr/bin/env python3
"""Eager vs ``torch.compile``: one training step (12 iterations, shared weights) at N=256, B=8, d=256, H=4.

Layers (defined in ``bench_layers.py``): (a) the emitted bi-softmax layer (``ea.compile(..., path="auto")``)
and (d) the vanilla pre-norm Transformer layer; ``--layers`` also accepts ``generic`` and ``hand``.
``torch.compile`` wraps the whole 12-iteration module (the loop is unrolled into one graph); the first
compiled call (compilation, forward + backward) is timed separately, then ``--warmup`` more untimed calls,
then ``--repeats`` timed ones. Inductor gets a fresh cache directory unless ``--keep-cache``, so the
compile time is a cold one. A layer whose compilation fails is reported with its error, not a traceback.

    python3 benchmarks/bench_compile.py                 # writes benchmarks/results/bench_compile.md
    python3 benchmarks/bench_compile.py --repeats 5 --layers emitted vanilla generic
"""

from __future__ import annotations

import os
import sys
import tempfile

if "--keep-cache" not in sys.argv:  # must precede the torch import: inductor reads it at import time
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="bench_compile_inductor_"))

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_layers as bl  # noqa: E402  (also puts the repository root on sys.path)

B, D, HEADS, ITERS = bl.B, bl.D, bl.HEADS, bl.ITERS


def train_step(model, params, X) -> float:
    for p in params:
        p.grad = None
    t0 = time.perf_counter()
    loss = model(X).square().mean()
    loss.backward()
    return time.perf_counter() - t0


def bench(layer: str, N: int, repeats: int, warmup: int) -> dict:
    torch.manual_seed(0)
    eager = bl.build(layer)
    X = torch.randn(B, N, D)
    params = [p for p in eager.parameters() if p.requires_grad]
    res = {"layer": layer}
    for _ in range(warmup):
        train_step(eager, params, X)
    times = [train_step(eager, params, X) for _ in range(repeats)]
    res["eager_min"], res["eager_med"] = min(times), statistics.median(times)
    grads_eager = [p.grad.clone() for p in params]

    torch._dynamo.reset()
    try:
        compiled = torch.compile(eager)
        res["compile_s"] = train_step(compiled, params, X)  # cold: traces, compiles fwd + bwd
        for _ in range(warmup):
            train_step(compiled, params, X)
        times = [train_step(compiled, params, X) for _ in range(repeats)]
    except Exception as exc:  # no toolchain, unsupported op, ... : record it cleanly
        msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        res["error"] = msg[:400]
        res["traceback_tail"] = "".join(traceback.format_exception(exc)[-3:])[-1500:]
        return res
    res["compiled_min"], res["compiled_med"] = min(times), statistics.median(times)
    res["grad_max_rel_diff"] = max(
        float((p.grad - g).abs().max() / g.abs().max().clamp_min(1e-30)) for p, g in zip(params, grads_eager)
    )
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--N", type=int, default=256)
    ap.add_argument("--layers", nargs="+", default=["emitted", "vanilla"], choices=bl.LAYERS)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--keep-cache", action="store_true", help="use the default inductor cache (warm compile)")
    ap.add_argument("--output", default=str(HERE / "results" / "bench_compile.md"), help="'' to disable")
    a = ap.parse_args(argv)
    torch.set_num_threads(bl.THREADS)
    header = bl.machine_header(
        f"bench_compile: eager vs torch.compile, one training step ({ITERS} iterations, shared weights)",
        f"B={B}, N={a.N}, d={D}, H={HEADS}; torch.compile defaults (inductor); warm-up {a.warmup}, "
        f"repeats {a.repeats}; inductor cache: {'default' if a.keep_cache else 'fresh (cold compile)'}",
        f"python3 benchmarks/bench_compile.py {' '.join(sys.argv[1:] if argv is None else argv)}",
    )
    print(header, flush=True)
    rows = [
        "| layer | eager s (min) | eager s (median) | compiled s (min) | compiled s (median) | "
        "eager ÷ compiled (min) | first compiled call s | grad rel. diff vs eager |",
        "|---|---|---|---|---|---|---|---|",
    ]
    errors = []
    for layer in a.layers:
        t0 = time.perf_counter()
        r = bench(layer, a.N, a.repeats, a.warmup)
        if "error" in r:
            print(f"{layer}: eager {r['eager_min']:.3f} s; torch.compile FAILED: {r['error']}", flush=True)
            rows.append(
                f"| {bl.LABELS[layer]} | {r['eager_min']:.3f} | {r['eager_med']:.3f} | failed: {r['error']} | | | | |"
            )
            errors.append(f"- {layer}: {r['error']}\n\n```\n{r['traceback_tail']}\n```")
            continue
        print(
            f"{layer}: eager {r['eager_min']:.3f} s, compiled {r['compiled_min']:.3f} s, first call "
            f"{r['compile_s']:.1f} s [{time.perf_counter() - t0:.0f} s wall]",
            flush=True,
        )
        rows.append(
            f"| {bl.LABELS[layer]} | {r['eager_min']:.3f} | {r['eager_med']:.3f} | {r['compiled_min']:.3f} | "
            f"{r['compiled_med']:.3f} | {r['eager_min'] / r['compiled_min']:.2f}× | {r['compile_s']:.1f} | "
            f"{r['grad_max_rel_diff']:.1e} |"
        )
    text = "\n".join(rows)
    if errors:
        text += "\n\ntorch.compile errors:\n\n" + "\n".join(errors)
    print("\n" + text, flush=True)
    if a.output:
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output).write_text(header + "\n" + text + "\n")
        print(f"\nwritten: {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
