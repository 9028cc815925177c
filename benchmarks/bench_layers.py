#!/usr/bin/env python3
"""Time and peak memory of one training step of four recurrent layers (issue "energy compiler", benchmark).

One *training step* = forward through ``--iters`` (12) iterations of one layer with shared weights, a scalar
loss (mean of the squared output), and ``backward()`` to every parameter (bases, step sizes). One *inference
step* = the same forward under ``torch.no_grad()``. Layers, at B=8, d=256, H=4:

  (a) ``emitted``  -- ``ea.compile(E, d, path="auto")``: the emitted bi-softmax closed form (dense P below
                      ``sdpa_threshold`` = 512 tokens, memory-linear ``bisoftmax_sdpa`` above) + ReLU FF;
  (b) ``generic``  -- ``ea.compile(E, d, path="autodiff")``: ``torch.func.grad`` of the same energy;
  (c) ``hand``     -- Hyper-SET Eq. 9 + Eq. 11 written out in plain torch below (materialised softmaxes);
  (d) ``vanilla``  -- pre-norm Transformer block (RMSNorm, no bias, no dropout, MLP ratio 4, SDPA);
  (e) ``vanilla-ff1`` -- the same block with MLP ratio 1: the feed-forward width M = d of (a)-(c).

FLOP parity (issue 11): each layer's analytic FLOPs of a training step (forward + backward, :func:`flops`) and
its time per FLOP relative to the vanilla blocks (d) and (e).

with ``E = Attention(f="log(x)/beta", K="exp(beta*s)", heads=4) + FeedForward(g="x", h="relu(x)**2/2",
ratio=1)``, learnable scalar step sizes alpha = gamma = 0.1 for (a)-(c).

Every (layer, N) runs in its own fresh process (``--isolation subprocess``: this script re-run with ``--one``;
``fork``: a forked child of this already-imported interpreter, used by ``--quick`` to save start-up time), so
that peak memory is not contaminated: the memory columns are the peak RSS increase, ``ru_maxrss`` minus the
RSS measured just before the first step (inference runs first, then training, so each peak is its own).
Configurations whose *estimated* training memory exceeds ``--mem-limit-gb`` are skipped with the reason.

    python3 benchmarks/bench_layers.py                      # N = 256, 1024, 4096; writes results/bench_layers.md
    python3 benchmarks/bench_layers.py --sizes 256 1024 --repeats 3
    python3 benchmarks/bench_layers.py --quick              # N = 64, seconds (smoke test)
    python3 benchmarks/bench_layers.py --device cuda --sizes 1024 4096 16384 --layers emitted generic vanilla

On ``--device cuda`` the layers run under bf16 autocast (``--precision``, fp32 weights), the vanilla block's SDPA
is restricted to the FlashAttention kernel and the others' to FlashAttention or the memory-efficient kernel (never
the N×N math kernel), every configuration runs in this process (``--isolation none``) and
memory is the peak of ``torch.cuda.max_memory_allocated`` over what was allocated before the first step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import energyarch as ea  # noqa: E402

LAYERS = ("emitted", "generic", "hand", "vanilla", "vanilla-ff1")
LABELS = {
    "emitted": "(a) emitted bi-softmax, path=auto",
    "generic": "(b) generic torch.func.grad, path=autodiff",
    "hand": "(c) hand-written Hyper-SET (Eq. 9 + 11)",
    "vanilla": "(d) vanilla pre-norm Transformer",
    "vanilla-ff1": "(e) vanilla, FF width d (ratio 1)",
}
B, D, HEADS, ITERS, STEP = 8, 256, 4, 12, 0.1
THREADS = 2
SINK_PASS1 = False  # flops(): pass 1 with the sink coordinate (set for --device cuda: bf16 autocast runs it)
COUNT_FLOPS = True  # count a training step's FLOPs with torch.utils.flop_counter (+ SDPA); off with --quick

# Training-memory model used only to decide what to skip, bytes ≈ ITERS·(nn·B·H·N²·4 + nt·B·N·d·4):
# nn = N×N float32 tensors kept per iteration for backward, nt = (N, d)-sized ones. Calibrated on this
# machine (torch 2.13 CPU) from measured peaks at N = 256, 512 (and 1024 for the emitted SDPA path), rounded
# up; only a guard against running out of memory, the measured column is what counts.
MEM_MODEL = {  # layer: (nn, nt); measured fits: emitted (2.0, 20), generic (1.1, 28), hand (2.4, 20), vanilla (0, 22)
    "emitted": (2.0, 20.0),  # N > sdpa_threshold uses bisoftmax_sdpa: nn = 0 there (measured nt ≈ 20 at N=1024)
    "generic": (1.5, 28.0),
    "hand": (2.5, 20.0),
    "vanilla": (0.0, 22.0),
    "vanilla-ff1": (0.0, 22.0),
}


# ---------------------------------------------------------------------------------------------------------
# the layers
# ---------------------------------------------------------------------------------------------------------


def hyperset_energy(heads: int = HEADS):
    return ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=heads) + ea.FeedForward(
        g="x", h="relu(x)**2/2", ratio=1
    )


class CompiledRecurrent(nn.Module):
    """``iters`` iterations of an ``ea.compile``-d step (shared weights), learnable scalar step sizes."""

    def __init__(self, d: int, heads: int, path: str, iters: int = ITERS, sdpa_threshold: int = 512):
        super().__init__()
        self.step = ea.compile(hyperset_energy(heads), d=d, path=path, sdpa_threshold=sdpa_threshold)
        self.alpha = nn.Parameter(torch.tensor(STEP))
        self.gamma = nn.Parameter(torch.tensor(STEP))
        self.iters = iters

    def forward(self, X: Tensor) -> Tensor:
        for _ in range(self.iters):
            X = self.step(X, steps={"attn": self.alpha, "ff": self.gamma})
        return X


class HandHyperSET(nn.Module):
    """Hyper-SET layer written out by hand (paper Eqs. 8, 9, 11), row-token convention X ∈ R^{B×N×d}.

    The paper writes tokens as columns (X ∈ R^{d×N}, Z^h = W_hᵀ X ∈ R^{p×N}); in rows, Z_h = X W_h and
    every product ``W_h Z^h softmax(·)`` becomes its transpose ``softmax(·)ᵀ Z_h W_hᵀ``.

        Z_h  = RMSNorm(X W_h)                                  (Eq. 8, rows of norm √p, no gain)
        QK_h = β Z_h Z_hᵀ                                      (β = 1/√p; symmetric N×N)
        X   ← X − α Σ_h [softmax_col(QK_h) + softmax_row(QK_h)]ᵀ Z_h W_hᵀ        (Eq. 9)
        X   ← X + γ ReLU(RMSNorm(X D)) Dᵀ                      (Eq. 11, rows of X D of norm √M)
    """

    def __init__(self, d: int, heads: int, ratio: int = 1, iters: int = ITERS, eps: float = 1e-6):
        super().__init__()
        self.d, self.heads, self.p, self.M = d, heads, d // heads, ratio * d
        self.beta = 1.0 / math.sqrt(self.p)
        self.eps, self.iters = eps, iters
        self.W = nn.Parameter(torch.empty(d, d))  # [W_1 | … | W_H], each d×p
        self.D = nn.Parameter(torch.empty(d, self.M))
        nn.init.orthogonal_(self.W)
        nn.init.orthogonal_(self.D)
        self.alpha = nn.Parameter(torch.tensor(STEP))
        self.gamma = nn.Parameter(torch.tensor(STEP))

    def attention_step(self, X: Tensor, alpha: Tensor) -> Tensor:
        Bx, N, _ = X.shape
        Z = (X @ self.W).view(Bx, N, self.heads, self.p).transpose(1, 2)  # (B, H, N, p): Z_h = X W_h
        Z = F.rms_norm(Z, (self.p,), eps=self.eps)  # Eq. 8
        QK = self.beta * (Z @ Z.transpose(-1, -2))  # (B, H, N, N)
        A = torch.softmax(QK, dim=-2) + torch.softmax(QK, dim=-1)  # column-wise + row-wise
        upd = A.transpose(-1, -2) @ Z  # (B, H, N, p)
        return X - alpha * (upd.transpose(1, 2).reshape(Bx, N, self.d) @ self.W.t())  # Eq. 9

    def ff_step(self, X: Tensor, gamma: Tensor) -> Tensor:
        U = F.rms_norm(X @ self.D, (self.M,), eps=self.eps)  # RMSNorm(Dᵀ X)
        return X + gamma * (torch.relu(U) @ self.D.t())  # Eq. 11

    def forward(self, X: Tensor) -> Tensor:
        for _ in range(self.iters):
            X = self.ff_step(self.attention_step(X, self.alpha), self.gamma)
        return X


class VanillaBlock(nn.Module):
    """Pre-norm Transformer block: RMSNorm (gain, no bias), 4-head SDPA attention, GELU MLP ratio 4."""

    def __init__(self, d: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.RMSNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.norm2 = nn.RMSNorm(d, eps=1e-6)
        self.fc1 = nn.Linear(d, mlp_ratio * d, bias=False)
        self.fc2 = nn.Linear(mlp_ratio * d, d, bias=False)

    def forward(self, X: Tensor) -> Tensor:
        Bx, N, d = X.shape
        q, k, v = self.qkv(self.norm1(X)).view(Bx, N, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, p)
        X = X + self.proj(a.transpose(1, 2).reshape(Bx, N, d))
        return X + self.fc2(F.gelu(self.fc1(self.norm2(X))))


class VanillaRecurrent(nn.Module):
    def __init__(self, d: int, heads: int, iters: int = ITERS, mlp_ratio: int = 4):
        super().__init__()
        self.block, self.iters = VanillaBlock(d, heads, mlp_ratio), iters

    def forward(self, X: Tensor) -> Tensor:
        for _ in range(self.iters):
            X = self.block(X)
        return X


def build(layer: str, d: int = D, heads: int = HEADS, iters: int = ITERS, sdpa_threshold: int = 512) -> nn.Module:
    if layer == "emitted":
        return CompiledRecurrent(d, heads, "auto", iters, sdpa_threshold)
    if layer == "generic":
        return CompiledRecurrent(d, heads, "autodiff", iters, sdpa_threshold)
    if layer == "hand":
        return HandHyperSET(d, heads, iters=iters)
    if layer == "vanilla":
        return VanillaRecurrent(d, heads, iters)
    if layer == "vanilla-ff1":
        return VanillaRecurrent(d, heads, iters, mlp_ratio=1)
    raise ValueError(f"unknown layer {layer!r}; choose from {LAYERS}")


@torch.no_grad()
def copy_weights(src: CompiledRecurrent, dst: HandHyperSET) -> HandHyperSET:
    """Give the hand-written layer the compiled layer's bases and step sizes."""
    dst.W.copy_(src.step.terms["attn"].weight)
    dst.D.copy_(src.step.terms["ff"].weight)
    dst.alpha.copy_(src.alpha)
    dst.gamma.copy_(src.gamma)
    return dst


# ---------------------------------------------------------------------------------------------------------
# measurement (inside the isolated process)
# ---------------------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def estimate_train_bytes(layer: str, N: int, sdpa_threshold: int = 512) -> float:
    nn_, nt = MEM_MODEL[layer]
    if layer == "emitted" and N > sdpa_threshold:
        nn_ = 0.0
    return ITERS * (nn_ * B * HEADS * N * N * 4 + nt * B * N * D * 4)


def flops(layer: str, N: int, sdpa_threshold: int = 512, sink: bool | None = None) -> float:
    """Analytic FLOPs of one training step (forward + backward) at batch B, width D, ITERS iterations.

    Matrix products only (2mnk each; elementwise work — softmax, norms, activations — is not counted, the usual
    convention), and backward = 2 × forward (a gradient for each operand of every product), so a training step
    is 3 × the forward count. Per iteration, forward, with the sizes B, N, d and the FF width M:

    - (a) emitted: coordinates ``XW`` and direction ``G Wᵀ`` 4BNd², Gram matrix and ``(P + Pᵀ)Φ`` 4BN²d
      (dense, N ≤ ``sdpa_threshold``), or two SDPA passes (above it): pass 1 of width p, 4BN²d (on the CPU in
      float32, :func:`energyarch.runtime.flash_lse`; with ``sink``, the construction CUDA, autocast and
      ``torch.compile`` run, width p + 1: 4BN²(d + H)), and the plain second pass of width p for symmetric
      scores, 4BN²d; ReLU FF ``XD`` and ``ReLU(U) Dᵀ`` 4BNdM with M = d;
    - (b) generic: as (a), but the attention core is the Gram matrix and its vector–Jacobian product, 6BN²d;
    - (c) hand: as (a) dense;
    - (d), (e) vanilla: QKV and output projections 8BNd², attention 4BN²d, MLP 4BNdM with M = 4d or d.
    """
    proj, ff1 = 4 * B * N * D * D, 4 * B * N * D * D  # M = d for (a)-(c)
    if layer in ("emitted", "hand"):
        sdpa, sink = layer == "emitted" and N > sdpa_threshold, SINK_PASS1 if sink is None else sink
        core = 4 * B * N * N * (2 * D + (HEADS if sink else 0)) if sdpa else 4 * B * N * N * D
        fwd = proj + core + ff1
    elif layer == "generic":
        fwd = proj + 6 * B * N * N * D + ff1
    elif layer in ("vanilla", "vanilla-ff1"):
        ratio = 4 if layer == "vanilla" else 1
        fwd = 8 * B * N * D * D + 4 * B * N * N * D + 4 * B * N * D * ratio * D
    else:
        raise ValueError(f"unknown layer {layer!r}; choose from {LAYERS}")
    return 3.0 * ITERS * fwd


def sdpa_flops(calls) -> float:
    """FLOPs of a training step's SDPA calls (recorded by :func:`energyarch.sdpa_check.record_sdpa_calls`), which
    ``torch.utils.flop_counter`` does not count on the CPU: forward ``2 N_q N_k (w_qk + w_v)`` per batch entry and
    head (half of the pairs with ``is_causal``), training = 3 × forward as in :func:`flops`."""
    total = 0.0
    for c in calls:
        pairs = c.q[-2] * c.k[-2] * (0.5 if c.is_causal else 1.0)
        total += 3 * 2 * math.prod(c.q[:-2]) * pairs * (c.q[-1] + c.v[-1])
    return total


def counted_flops(step) -> tuple[float, float]:
    """``(matrix products counted by torch.utils.flop_counter, SDPA FLOPs from the recorded calls)`` of one call of
    ``step()`` (a training step: forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from energyarch.sdpa_check import record_sdpa_calls

    with FlopCounterMode(display=False) as counter, record_sdpa_calls() as calls:
        step()
    return float(counter.get_total_flops()), sdpa_flops(calls)


def timed(fn, warmup: int, repeats: int, after=None) -> list[float]:
    """Wall times of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones; ``after()`` runs untimed after each."""
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        if after is not None:
            after()
        if i >= warmup:
            times.append(dt)
    return times


def machine_header(title: str, setup: str, command: str) -> str:
    """The first lines of a results file: title, date, torch and machine, the setup, the command."""
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        f"# {title}\n\n- date: {stamp}\n- torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average at start {os.getloadavg()[0]:.2f}\n- {setup}\n- command: `{command}`\n"
    )


def _device_context(layer: str, device: str, precision: str):
    """bf16 autocast (``precision='bf16'``); on CUDA the vanilla block's SDPA is held to FlashAttention and every
    other layer's to FlashAttention or the memory-efficient kernel: a call that would need the N×N math kernel
    raises instead of silently losing memory-linearity (reported as that configuration's error)."""
    import contextlib

    stack = contextlib.ExitStack()
    if precision == "bf16":
        stack.enter_context(torch.autocast(device_type=device, dtype=torch.bfloat16))
    if device == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        held = [SDPBackend.FLASH_ATTENTION] if precision == "bf16" and layer.startswith("vanilla") else fused
        stack.enter_context(sdpa_kernel(held))
    return stack


def measure(
    layer: str,
    N: int,
    repeats: int,
    warmup: int,
    inference: bool,
    seed: int = 0,
    device: str = "cpu",
    precision: str = "fp32",
) -> dict:
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    cuda = device == "cuda"
    model = build(layer, D, HEADS, ITERS).to(device)
    X = torch.randn(B, N, D, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    out = {"layer": layer, "N": N, "params": sum(p.numel() for p in params)}
    if cuda:  # memory = peak allocated over what is allocated now
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = rss_bytes()

    def peak() -> int:
        return torch.cuda.max_memory_allocated() - base if cuda else maxrss_bytes() - rss0

    def synced(fn):  # CUDA runs asynchronously: time up to the last kernel
        return (lambda: (fn(), torch.cuda.synchronize())) if cuda else fn

    if inference:

        def infer():
            with torch.no_grad(), _device_context(layer, device, precision):
                model(X)

        times = timed(synced(infer), warmup, repeats)
        out["infer_s"] = statistics.median(times)
        out["infer_min_s"] = min(times)
        out["infer_mem"] = peak()
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    def train_step():
        for p in params:
            p.grad = None
        with _device_context(layer, device, precision):
            loss = model(X).float().square().mean()
        loss.backward()

    def check_grads():
        if not all(p.grad is not None and torch.isfinite(p.grad).all() for p in params):
            raise RuntimeError(f"{layer} N={N}: missing or non-finite parameter gradient")

    times = timed(synced(train_step), warmup, repeats, after=check_grads)
    if COUNT_FLOPS and not cuda:  # counted FLOPs (an extra, untimed step)
        out["counted_flops"], out["sdpa_flops"] = counted_flops(train_step)
    out["train_s"] = statistics.median(times)
    out["train_min_s"] = min(times)
    out["train_mem"] = peak()
    out["times"] = times
    return out


def _set_sizes(batch: int, width: int, iters: int) -> None:
    """Override the sizes B, D, ITERS of this process (``--batch``, ``--width``, ``--iters``)."""
    global B, D, ITERS
    B, D, ITERS = batch, width, iters


def _one_main(argv: list[str]) -> None:
    """Entry point of the isolated process: measure one configuration, print one JSON line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", required=True)
    ap.add_argument("--N", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-inference", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch", type=int, default=B)
    ap.add_argument("--width", type=int, default=D)
    ap.add_argument("--iters", type=int, default=ITERS)
    ap.add_argument("--no-count-flops", action="store_true")
    a = ap.parse_args(argv)
    _set_sizes(a.batch, a.width, a.iters)
    global COUNT_FLOPS
    COUNT_FLOPS = not a.no_count_flops
    res = measure(a.one, a.N, a.repeats, a.warmup, not a.no_inference, device=a.device, precision=a.precision)
    print("RESULT " + json.dumps(res), flush=True)


def _fork_target(queue, layer, N, repeats, warmup, inference, device="cpu", precision="fp32"):
    try:
        queue.put(measure(layer, N, repeats, warmup, inference, device=device, precision=precision))
    except BaseException as exc:  # report, never hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def run_isolated(
    layer: str,
    N: int,
    repeats: int,
    warmup: int,
    inference: bool,
    isolation: str,
    timeout: float,
    device: str = "cpu",
    precision: str = "fp32",
) -> dict:
    if isolation == "none":
        try:
            return measure(layer, N, repeats, warmup, inference, device=device, precision=precision)
        except RuntimeError as exc:  # on CUDA, e.g. out of memory: report it and go on
            if device != "cuda":
                raise
            return {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
    if isolation == "fork":
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        q = ctx.Queue()
        proc = ctx.Process(target=_fork_target, args=(q, layer, N, repeats, warmup, inference, device, precision))
        proc.start()
        try:
            res = q.get(timeout=timeout)
        except Exception:
            proc.kill()
            proc.join()
            return {"error": f"no result within {timeout:.0f} s (exit code {proc.exitcode})"}
        proc.join()
        return res
    cmd = (
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--one",
            layer,
            "--N",
            str(N),
            "--repeats",
            str(repeats),
            "--warmup",
            str(warmup),
            "--device",
            device,
            "--precision",
            precision,
            "--batch",
            str(B),
            "--width",
            str(D),
            "--iters",
            str(ITERS),
        ]
        + ([] if COUNT_FLOPS else ["--no-count-flops"])
        + ([] if inference else ["--no-inference"])
    )
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in cp.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (cp.stderr or cp.stdout).strip().splitlines()[-1:] or [f"exit code {cp.returncode}"]
    return {"error": f"exit code {cp.returncode}: {tail[0][:300]}"}


# ---------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------


def _mb(x: float) -> str:
    return f"{x / 2**20:,.0f}"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}×" if a is not None and b not in (None, 0) and b > 0 else "—"


def table(results: dict[tuple[str, int], dict], sizes: list[int], repeats: int, inference: bool) -> str:
    head = [
        "N",
        "layer",
        "train s (min)",
        f"train s (median of {repeats})",
        "train peak ΔRSS MB",
        "time ÷ (a)",
        "mem ÷ (a)",
    ]
    if inference:
        head += ["infer s (min)", "infer peak ΔRSS MB", "infer time ÷ (a)", "infer mem ÷ (a)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for N in sizes:
        ref = results.get(("emitted", N), {})
        for layer in LAYERS:
            r = results.get((layer, N), {})
            if "train_s" not in r:
                why = r.get("skipped") or r.get("error") or "not run"
                cells = [str(N), LABELS[layer], f"skipped: {why}"] + [""] * (len(head) - 3)
            else:
                cells = [
                    str(N),
                    LABELS[layer],
                    f"{r['train_min_s']:.3f}",
                    f"{r['train_s']:.3f}",
                    _mb(r["train_mem"]),
                    _ratio(r["train_min_s"], ref.get("train_min_s")),
                    _ratio(r["train_mem"], ref.get("train_mem")),
                ]
                if inference:
                    cells += [
                        f"{r['infer_min_s']:.3f}",
                        _mb(r["infer_mem"]),
                        _ratio(r["infer_min_s"], ref.get("infer_min_s")),
                        _ratio(r["infer_mem"], ref.get("infer_mem")),
                    ]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def flop_table(results: dict[tuple[str, int], dict], sizes: list[int]) -> str:
    """FLOP parity: analytic FLOPs of a training step (:func:`flops`) and time per FLOP against (d) and (e)."""
    head = [
        "layer",
        "N",
        "GFLOP / step",
        "counted GFLOP (mm + SDPA)",
        "FLOPs ÷ (d)",
        "time ÷ (d)",
        "time/FLOP ÷ (d)",
        "time/FLOP ÷ (e)",
        "time/counted FLOP ÷ (d)",
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for N in sizes:
        per_flop = {
            layer: results[(layer, N)]["train_min_s"] / flops(layer, N)
            for layer in LAYERS
            if "train_min_s" in results.get((layer, N), {})
        }
        for layer in LAYERS:
            if layer not in per_flop:
                continue
            r = results[(layer, N)]
            t = r["train_min_s"]
            tv = results.get(("vanilla", N), {}).get("train_min_s")
            counted = {
                k: v["counted_flops"] + v["sdpa_flops"]
                for (k, n), v in results.items()
                if n == N and "counted_flops" in v
            }
            cells = [
                LABELS[layer],
                str(N),
                f"{flops(layer, N) / 1e9:,.2f}",
                (
                    f"{counted[layer] / 1e9:,.2f} ({r['counted_flops'] / 1e9:,.2f} + {r['sdpa_flops'] / 1e9:,.2f})"
                    if layer in counted
                    else "—"
                ),
                f"{flops(layer, N) / flops('vanilla', N):.2f}",
                _ratio(t, tv).rstrip("×"),
                _ratio(per_flop[layer], per_flop.get("vanilla")).rstrip("×"),
                _ratio(per_flop[layer], per_flop.get("vanilla-ff1")).rstrip("×"),
                _ratio(t / counted[layer], tv / counted["vanilla"]).rstrip("×")
                if layer in counted and "vanilla" in counted and tv
                else "—",
            ]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def targets(results: dict[tuple[str, int], dict], sizes: list[int]) -> str:
    """The issue's targets, evaluated on this run."""
    lines = []

    def get(layer, N, key):
        return results.get((layer, N), {}).get(key)

    for N in sizes:
        te, th = get("emitted", N, "train_min_s"), get("hand", N, "train_min_s")
        if te and th:
            ok = te <= 1.05 * th
            lines.append(f"- N={N}: emitted ≤ 1.05× hand-written time: {te / th:.2f}× → {'PASS' if ok else 'FAIL'}")
        else:
            lines.append(f"- N={N}: emitted vs hand-written time: not measured")
    for N in [n for n in sizes if n >= 1024]:
        te, tg = get("emitted", N, "train_min_s"), get("generic", N, "train_min_s")
        me, mg = get("emitted", N, "train_mem"), get("generic", N, "train_mem")
        if te and tg and me and mg:
            ok = tg / te >= 1.5 and me / mg <= 0.5
            lines.append(
                f"- N={N}: ≥ 1.5× faster and ≤ 0.5× memory of generic: {tg / te:.2f}× faster, "
                f"{me / mg:.3f}× memory → {'PASS' if ok else 'FAIL'}"
            )
        else:
            why = results.get(("generic", N), {}).get("skipped") or results.get(("generic", N), {}).get("error")
            lines.append(f"- N={N}: emitted vs generic: not measured ({why or 'missing'})")
    for N in sizes:  # issue 11: time per FLOP within 1.1× of the vanilla block's
        te, tv = get("emitted", N, "train_min_s"), get("vanilla", N, "train_min_s")
        if te and tv:
            ratio = (te / flops("emitted", N)) / (tv / flops("vanilla", N))
            lines.append(
                f"- N={N}: emitted time per FLOP ≤ 1.1× vanilla's: {ratio:.2f}× → {'PASS' if ratio <= 1.1 else 'FAIL'}"
            )
    big = [n for n in sizes if n >= 4096 and get("emitted", n, "train_mem")]
    small = [n for n in sizes if n < max(big, default=0) and get("emitted", n, "train_mem") and n > 512]
    if big and small:
        n1, n0 = max(big), max(small)
        m1, m0 = get("emitted", n1, "train_mem"), get("emitted", n0, "train_mem")
        k = math.log(m1 / m0) / math.log(n1 / n0)
        ok = k <= 1.25
        lines.append(
            f"- emitted memory linear in N at N={n1}: peak ΔRSS ×{m1 / m0:.2f} from N={n0} to N={n1} "
            f"(N ×{n1 / n0:.0f}; exponent {k:.2f}; 1 = linear, 2 = quadratic) → {'PASS' if ok else 'FAIL'}"
        )
    else:
        lines.append("- emitted memory linear in N at N=4096: needs N=4096 and a size in (512, 4096)")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--one" in argv:
        _one_main(argv)
        return 0
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096], help="sequence lengths N")
    ap.add_argument("--layers", nargs="+", default=list(LAYERS), choices=LAYERS)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per configuration (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps per configuration")
    ap.add_argument("--quick", action="store_true", help="N=64, 1 repeat, 1 warm-up, forked children: seconds")
    ap.add_argument("--no-inference", action="store_true", help="skip the no_grad forward column")
    ap.add_argument(
        "--mem-limit-gb",
        type=float,
        default=None,
        help="skip a configuration whose estimated training memory exceeds this (default 14; on "
        "CUDA 85%% of the device's memory)",
    )
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the layers run")
    ap.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help="bf16: autocast with fp32 weights (default on cuda; FlashAttention for the vanilla block)",
    )
    ap.add_argument(
        "--isolation",
        choices=("subprocess", "fork", "none"),
        default=None,
        help="fresh process per configuration (default: subprocess; fork with --quick)",
    )
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per configuration")
    ap.add_argument("--batch", type=int, default=B, help=f"batch size B (default {B})")
    ap.add_argument("--width", type=int, default=D, help=f"model width d (default {D})")
    ap.add_argument("--iters", type=int, default=ITERS, help=f"iterations per step (default {ITERS})")
    ap.add_argument(
        "--no-count-flops",
        action="store_true",
        help="skip the counted FLOPs (torch.utils.flop_counter + SDPA; one extra step; off with --quick)",
    )
    ap.add_argument(
        "--output",
        default=None,
        help="markdown file to write (default benchmarks/results/bench_layers.md; "
        "none with --quick unless given; '' to disable)",
    )
    a = ap.parse_args(argv)
    _set_sizes(a.batch, a.width, a.iters)
    if a.quick:
        a.sizes, a.repeats, a.warmup = [64], 1, 1
    global COUNT_FLOPS, SINK_PASS1
    COUNT_FLOPS = not (a.no_count_flops or a.quick)
    SINK_PASS1 = a.device == "cuda"
    isolation = a.isolation or ("none" if a.device == "cuda" else "fork" if a.quick else "subprocess")
    precision = a.precision or ("bf16" if a.device == "cuda" else "fp32")
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available here")
    if a.mem_limit_gb is None:
        a.mem_limit_gb = 0.85 * torch.cuda.get_device_properties(0).total_memory / 2**30 if a.device == "cuda" else 14.0
    output = a.output if a.output is not None else ("" if a.quick else str(HERE / "results" / "bench_layers.md"))
    inference = not a.no_inference

    torch.set_num_threads(THREADS)
    header = machine_header(
        f"bench_layers: one training step, {ITERS} iterations, shared weights",
        f"B={B}, d={D}, H={HEADS}, iterations={ITERS}, α=γ={STEP} (learnable scalars); loss = mean(X²); "
        f"warm-up {a.warmup}, repeats {a.repeats}; ratios ÷ (a) use the min (least disturbed by other load); "
        f"isolation: {isolation}; "
        + (
            f"device {torch.cuda.get_device_name(0)}, {precision}; memory = peak "
            f"torch.cuda.max_memory_allocated over the allocation before the first step "
            f"(the 'ΔRSS' columns)"
            if a.device == "cuda"
            else f"{precision}; memory = peak RSS increase over the RSS before the first step"
        ),
        f"python3 benchmarks/bench_layers.py {' '.join(argv)}",
    )
    print(header, flush=True)

    results: dict[tuple[str, int], dict] = {}
    for N in a.sizes:
        for layer in a.layers:
            est = estimate_train_bytes(layer, N)
            if est > a.mem_limit_gb * 2**30:
                reason = f"estimated training memory {est / 2**30:.0f} GB > limit {a.mem_limit_gb:g} GB"
                results[(layer, N)] = {"skipped": reason}
                print(f"N={N:5d} {layer:8s} SKIPPED: {reason}", flush=True)
                continue
            t0 = time.perf_counter()
            res = run_isolated(layer, N, a.repeats, a.warmup, inference, isolation, a.timeout, a.device, precision)
            results[(layer, N)] = res
            if "error" in res:
                print(f"N={N:5d} {layer:8s} ERROR: {res['error']}", flush=True)
            else:
                extra = f", infer {res['infer_s']:.3f} s / {_mb(res['infer_mem'])} MB" if inference else ""
                print(
                    f"N={N:5d} {layer:8s} train {res['train_s']:.3f} s (min {res['train_min_s']:.3f}) / "
                    f"{_mb(res['train_mem'])} MB{extra}  [{time.perf_counter() - t0:.0f} s wall, "
                    f"est. {est / 2**20:,.0f} MB]",
                    flush=True,
                )

    body = (
        table(results, a.sizes, a.repeats, inference)
        + "\n\nFLOP parity (analytic FLOPs of a training step, matrix products only; see flops()):\n\n"
        + flop_table(results, a.sizes)
        + "\n\nTargets (this run):\n\n"
        + targets(results, a.sizes)
    )
    body += (
        f"\n\nLoad average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min); "
        f"{os.cpu_count()} logical CPUs."
    )
    report = header + "\n" + body + "\n"
    print("\n" + body, flush=True)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(report)
        print(f"\nwritten: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
