#!/usr/bin/env python3
"""The prepared GPU check (issue 11 §4): one command, at most 8 minutes on one GPU, one results markdown.

1. ``bench_layers.py --device cuda`` at N = 1024, 4096, 16384: the emitted bi-softmax layer, the generic
   ``torch.func.grad`` layer and a vanilla Transformer block whose SDPA is held to FlashAttention, bf16 autocast,
   one training step of 12 iterations (time and peak ``max_memory_allocated``), at most 150 s; the emitted layer's
   SDPA is held to the fused kernels (FlashAttention, memory-efficient), so the N×N math kernel raises instead of
   running;
2. attention against FlashAttention (issue 20), bf16, N = 1024 … 16384: the SDPA calls of one emitted training
   step (bidirectional and causal) with the kernel :mod:`energyarch.sdpa_check` predicts and
   ``torch.backends.cuda.can_use_flash_attention`` confirms, then forward + backward of ``bisoftmax_sdpa`` (both
   second passes) and of ``causal_softmax_sdpa`` against one and two FlashAttention calls of width p, at most 60 s;
3. the paper's Sudoku recipe (packaged config ``sudoku_paper``: d = 768, 12 heads, 24 iterations, 5.2 M
   parameters, batch 16, 200-epoch cosine schedule) with the compiled bf16 trainer, for as many whole epochs as fit
   in the time left (evaluated after each epoch), then the test-time iteration sweep; per-epoch throughput, peak
   memory and the cost of the first compiled step. That first step compiles 24 unrolled iterations (forward and
   backward); on a 2-core CPU the digits model's 8 iterations took 243 s (load ~14), so on the GPU host expect
   it to take a good part of the budget.

The markdown is rewritten after each stage, so a run cut short still leaves what it measured.

    bash benchmarks/gpu_check.sh                      # on a GPU: writes benchmarks/results/gpu_check.md
    bash benchmarks/gpu_check.sh --dry-run            # on a CPU, tiny sizes, seconds: checks the script itself

``--dry-run`` runs the same code at a tiny size (N = 32; a d = 24 model on 64 generated boards, 2 epochs) on the
CPU in fp32, without torch.compile unless ``--compile`` is given; its markdown goes to ``runs/gpu_check_dry/``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from energyarch.train import TrainConfig, Trainer  # noqa: E402
from energyarch.train.cli import resolve_config, setup_logging  # noqa: E402
from energyarch.train.evaluate import report  # noqa: E402

PAPER_BOARD_ACC = 54.70  # % of test boards solved after 200 epochs, as the Hyper-SET paper reports

#: what each mode runs: bench_layers arguments and the training overrides of the packaged sudoku_paper config
MODES = {
    "gpu": {
        "attention": {"sizes": [1024, 4096, 16384], "batch": 2, "heads": 4, "p": 32, "repeats": 5},
        "bench": [
            "--device",
            "cuda",
            "--sizes",
            "1024",
            "4096",
            "16384",
            "--layers",
            "emitted",
            "generic",
            "vanilla",
            "--repeats",
            "3",
            "--warmup",
            "1",
            "--no-inference",
        ],
        "train": ['precision="bf16"', "eval_every=1"],
        "max_epochs": 200,
    },
    "dry": {
        "attention": {"sizes": [32, 64], "batch": 1, "heads": 2, "p": 8, "repeats": 1},
        "bench": [
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--sizes",
            "32",
            "--layers",
            "emitted",
            "generic",
            "vanilla",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--isolation",
            "none",
            "--no-inference",
        ],
        "train": [
            'precision="auto"',
            "eval_every=1",
            "n_train=64",
            "n_test=16",
            "minimal=false",
            "eval_iters=[1, 2, 3]",
            "diagnostics_samples=8",
            "model.d=24",
            "model.heads=2",
            "model.iters=2",
            "model.time_freq=8",
        ],
        "max_epochs": 2,
    },
}


class TimedTrainer(Trainer):
    """Stops at an epoch boundary when the next epoch would end after ``deadline``, and within an epoch
    (keeping a checkpoint) once ``hard_deadline`` has passed; ``max_epochs`` caps the epochs of this session."""

    deadline = hard_deadline = float("inf")
    max_epochs = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch_seconds: list[float] = []  # wall time of each epoch run here, evaluation included
        self.partial: dict = {}  # test metrics where a run cut within an epoch stopped

    def _run_epoch(self) -> bool:
        if self.max_epochs and len(self.epoch_seconds) >= self.max_epochs:
            return True
        if self.epoch_seconds and time.monotonic() + self.epoch_seconds[-1] > self.deadline:
            return True
        start = time.monotonic()
        stopped = super()._run_epoch()
        self.epoch_seconds.append(time.monotonic() - start)
        return stopped

    def _limit_reached(self) -> bool:
        return super()._limit_reached() or time.monotonic() > self.hard_deadline


# ---------------------------------------------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------------------------------------------


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, torch {torch.__version__}"
        )
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}"


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def training_markdown(t: TimedTrainer, cfg: TrainConfig, sweep: list, wall: dict) -> str:
    info = t.speed_summary()
    c = info.get("compile") or {}
    lines = [
        f"- model: {cfg.model.arch}, d = {cfg.model.d}, {cfg.model.heads} heads, {cfg.model.layers} layer × "
        f"{cfg.model.iters} iterations, {sum(p.numel() for p in t.model.parameters()):,} parameters; "
        f"{len(t.task.train_set):,} train / {len(t.task.test_set):,} test boards, batch {cfg.batch_size}, "
        f"{t.steps_per_epoch} steps per epoch",
        f"- precision: {info['precision']}; optimizer: {info['optimizer']}; device: {info['device']}",
        f"- torch.compile: "
        + (
            f"backend {c.get('backend')}, "
            f"{'fullgraph' if c.get('fullgraph') else 'with graph breaks'}"
            f"{' (' + c['fallback_reason'] + ')' if c.get('fallback_reason') else ''}; "
            f"first step {c.get('first_step_s', float('nan')):.1f} s, i.e. "
            f"{c.get('overhead_s', float('nan')):.1f} s more than a compiled step"
            if c
            else "off"
        ),
        f"- data generation and model build: {wall.get('setup_s', 0):.0f} s; training: "
        f"{wall.get('train_s', 0):.0f} s; sweep, diagnostics and plots: {wall.get('report_s', 0):.0f} s",
        f"- epochs done: {t.epoch} of the recipe's {cfg.epochs} (the schedule is the full recipe's; stopped "
        f"when the next epoch would not fit)"
        + (f"; stopped within epoch {t.epoch + 1} at step {t.step}" if t.batch_in_epoch else ""),
        "",
    ]
    speed = {e["epoch"]: e for e in t.speed}
    lines += [
        "| epoch | step | train loss | test boards | test cells | samples/s | tokens/s | ms/step | "
        "peak MiB | epoch s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, h in enumerate(t.history):
        s = speed.get(h["epoch"], {})
        secs = t.epoch_seconds[i] if i < len(t.epoch_seconds) else float("nan")
        lines.append(
            f"| {h['epoch']} | {h['step']} | {h['train_loss']:.4f} | {_pct(h.get('test_board_acc'))} | "
            f"{_pct(h.get('test_cell_acc'))} | {s.get('samples_per_s', float('nan')):,.1f} | "
            f"{s.get('tokens_per_s', float('nan')):,.0f} | {1e3 * s.get('step_s', float('nan')):.1f} | "
            f"{s.get('peak_memory_mb') or float('nan'):,.0f} | {secs:.1f} |"
        )
    if t.partial:
        lines.append(
            f"| (stopped) | {t.step} | — | {_pct(t.partial.get('board_acc'))} | "
            f"{_pct(t.partial.get('cell_acc'))} | | | | | |"
        )
    steady = t.epoch_seconds[1:] or t.epoch_seconds
    if steady:
        per = sum(steady) / len(steady)
        lines += [
            "",
            f"At {per:.1f} s per epoch (evaluation included; the first epoch's compilation excluded "
            f"when a second epoch ran), the recipe's {cfg.epochs} epochs would take about "
            f"{cfg.epochs * per / 3600:.2f} h on this device. The paper reports {PAPER_BOARD_ACC:.2f} % "
            f"of boards solved after 200 epochs; a few epochs are not expected to come near it.",
        ]
    if sweep:
        lines += [
            "",
            f"Test-time iterations (trained with T = {cfg.model.iters}; fp32 evaluation):",
            "",
            "| iterations | " + " | ".join(str(r["iters"]) for r in sweep) + " |",
            "|---|" + "---|" * len(sweep),
            "| boards | " + " | ".join(_pct(r.get("board_acc")) for r in sweep) + " |",
            "| cells | " + " | ".join(_pct(r.get("cell_acc")) for r in sweep) + " |",
        ]
    return "\n".join(lines)


def write(path: Path, parts: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n\n".join(v for v in parts.values() if v) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------------------------------------------


def run_bench(args: list[str], table_file: Path, timeout: float) -> str:
    """bench_layers in its own process (its CUDA memory is freed on exit); its table, or what it printed."""
    cmd = [sys.executable, str(HERE / "bench_layers.py"), *args, "--output", str(table_file)]
    print("$ " + " ".join(cmd), flush=True)
    printed: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:  # stream: a cut-short run keeps its finished rows
            print(line, end="", flush=True)
            printed.append(line.rstrip("\n"))
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(cmd, timeout)
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rows = [ln for ln in printed if ln.startswith("N=")]
        return (
            f"**bench_layers stopped after {timeout:.0f} s**; configurations finished:\n\n```\n"
            + "\n".join(rows)
            + "\n```"
        )
    if rc != 0 or not table_file.is_file():
        return f"**bench_layers failed (exit code {rc})**:\n\n```\n" + "\n".join(printed[-30:]) + "\n```"
    text = table_file.read_text()
    return text.replace("# bench_layers", "### bench_layers", 1)


def _timed_min(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _kernel_report(device: torch.device, dtype: torch.dtype, N: int) -> list[str]:
    """The SDPA calls of one emitted training step (bidirectional and causal) at N tokens: their widths, the kernel
    sdpa_check predicts and, on CUDA, what torch.backends.cuda.can_use_flash/efficient_attention say. On the CPU
    (dry run) the layers are given the widths they would use on CUDA."""
    import energyarch as ea
    from energyarch import runtime
    from energyarch.sdpa_check import record_sdpa_calls

    as_device = runtime.sdpa_device_type
    if device.type != "cuda":
        runtime.sdpa_device_type = lambda t: "cuda"
    try:
        return _kernel_rows(ea, record_sdpa_calls, device, dtype, N)
    finally:
        runtime.sdpa_device_type = as_device


def _kernel_rows(ea, record_sdpa_calls, device, dtype, N) -> list[str]:
    rows = []
    energies = {
        "bi-softmax": ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=4),
        "causal bi-softmax": ea.CausalAttention(f="log(x)/beta", K="exp(beta*s)", heads=4),
    }
    for name, energy in energies.items():
        step = ea.compile(energy, d=128, sdpa_threshold=N // 2).to(device)  # the SDPA lowering at N
        X = torch.randn(1, N, 128, device=device)
        seen = []

        def probe(q, k, v, *args, **kw):  # torch's own verdict on the real tensors (CUDA only)
            if device.type == "cuda":
                from torch.backends.cuda import SDPAParams, can_use_efficient_attention, can_use_flash_attention

                cast = [t.to(dtype) for t in (q, k, v)]
                params = SDPAParams(*cast, kw.get("attn_mask"), 0.0, bool(kw.get("is_causal", False)), False)
                seen.append((can_use_flash_attention(params, False), can_use_efficient_attention(params, False)))
            return inner(q, k, v, *args, **kw)

        with record_sdpa_calls() as calls:
            inner = torch.nn.functional.scaled_dot_product_attention  # the recorder
            torch.nn.functional.scaled_dot_product_attention = probe
            try:
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    step(X, 0.1).float().square().mean().backward()
            finally:
                torch.nn.functional.scaled_dot_product_attention = inner
        for i, c in enumerate(calls):
            torch_says = f"flash {seen[i][0]}, efficient {seen[i][1]}" if i < len(seen) else "— (no CUDA)"
            rows.append(
                f"| {name} | {N} | q {c.q[-2]}×{c.q[-1]}, k {c.k[-2]}×{c.k[-1]}, v ×{c.v[-1]} | {c.dtype} | "
                f"{c.kernel or 'math (N×N)'} | {torch_says} |"
            )
    return rows


def run_attention(spec: dict, device: torch.device, timeout: float) -> str:
    """Section 2: the kernels the emitted layers' SDPA calls get, and their time against FlashAttention."""
    from energyarch.runtime import bisoftmax_sdpa, causal_softmax_sdpa

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    deadline = time.monotonic() + timeout
    kernels = [
        "| layer | N | SDPA call | dtype | kernel (sdpa_check) | torch.backends.cuda.can_use_* |",
        "|---|---|---|---|---|---|",
    ] + _kernel_report(device, dtype, max(spec["sizes"]))
    flash_only = contextlib.nullcontext
    if cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def flash_only():  # no silent fallback: a declined call raises
            return sdpa_kernel([SDPBackend.FLASH_ATTENTION])

    B, H, p, repeats = spec["batch"], spec["heads"], spec["p"], spec["repeats"]
    b = p**-0.5
    rows = [
        "| N | 1 FlashAttention ms | 2 FlashAttention ms | bisoftmax symmetric ms | bisoftmax sink ms | "
        "causal_softmax_sdpa ms | causal FlashAttention ms | symmetric ÷ 2 FA | sink ÷ 2 FA | causal ÷ causal FA |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for N in spec["sizes"]:
        if time.monotonic() > deadline:
            rows.append(f"| {N} | stopped: the stage's {timeout:.0f} s were used |" + " |" * 8)
            break
        g = torch.Generator(device=device).manual_seed(0)
        Phi = torch.randn(B, H, N, p, device=device, generator=g)
        Phi = (torch.nn.functional.normalize(Phi, dim=-1) * p**0.5).to(dtype).requires_grad_(True)
        V = torch.randn(Phi.shape, device=device, dtype=dtype, generator=g)
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def fwd_bwd(fn):
            def run():
                Phi.grad = None
                with flash_only():
                    (fn() * V).sum().backward()

            return run

        t = {}
        try:
            t["fa1"] = _timed_min(fwd_bwd(lambda: sdpa(Phi, Phi, Phi, scale=b)), repeats, sync)
            t["fa2"] = _timed_min(
                fwd_bwd(lambda: sdpa(Phi, Phi, Phi, scale=b) + sdpa(Phi, Phi, Phi, scale=b)), repeats, sync
            )
            t["sym"] = _timed_min(fwd_bwd(lambda: bisoftmax_sdpa(Phi, b, second_pass="symmetric")), repeats, sync)
            t["sink"] = _timed_min(fwd_bwd(lambda: bisoftmax_sdpa(Phi, b, second_pass="sink")), repeats, sync)
            t["causal"] = _timed_min(fwd_bwd(lambda: causal_softmax_sdpa(Phi, Phi, b)[0]), repeats, sync)
            t["cfa"] = _timed_min(fwd_bwd(lambda: sdpa(Phi, Phi, Phi, scale=b, is_causal=True)), repeats, sync)
        except RuntimeError as exc:  # e.g. a kernel declined under flash_only: report it
            rows.append(f"| {N} | error: {str(exc).strip().splitlines()[0][:200]} |" + " |" * 8)
            continue
        ms = {k: f"{1e3 * v:.2f}" for k, v in t.items()}
        rows.append(
            f"| {N} | {ms['fa1']} | {ms['fa2']} | {ms['sym']} | {ms['sink']} | {ms['causal']} | {ms['cfa']} | "
            f"{t['sym'] / t['fa2']:.2f} | {t['sink'] / t['fa2']:.2f} | {t['causal'] / t['cfa']:.2f} |"
        )
        print(rows[-1], flush=True)
    return (
        f"B = {B}, H = {H}, p = {p}, {dtype}, forward + backward, min of {repeats} after a warm-up"
        + ("; every call held to FlashAttention (a declined call raises)" if cuda else "")
        + ".\n\n"
        + "SDPA calls of one emitted training step:\n\n"
        + "\n".join(kernels)
        + "\n\nTimes:\n\n"
        + "\n".join(rows)
    )


def run_training(
    mode: dict, out: Path, budget_end: float, reserve_s: float, compile_model: bool, data_dir, progress: bool
):
    """Train sudoku_paper until the time budget (minus ``reserve_s`` for the sweep) is used; returns the
    trainer, config, sweep and wall times."""
    wall = {}
    t0 = time.monotonic()
    overrides = list(mode["train"]) + [
        f"out_dir={json.dumps(str(out))}",
        f"compile={str(compile_model).lower()}",
        f"processes={max(1, os.cpu_count() or 1)}",
        f"progress={str(progress).lower()}",
    ]
    if data_dir:
        overrides.append(f"data_dir={json.dumps(str(data_dir))}")
    cfg = TrainConfig.load(resolve_config("sudoku_paper")).with_overrides(overrides)
    trainer = TimedTrainer(cfg)
    wall["setup_s"] = time.monotonic() - t0
    trainer.deadline = budget_end - reserve_s
    trainer.hard_deadline = budget_end - reserve_s / 2
    trainer.max_epochs = mode["max_epochs"]
    sweep = []
    try:
        t1 = time.monotonic()
        trainer.fit()
        wall["train_s"] = time.monotonic() - t1
        if trainer.batch_in_epoch:  # stopped within an epoch: evaluate where it stands
            trainer.partial = trainer.evaluate()
        t2 = time.monotonic()
        if time.monotonic() < budget_end - 5:
            sweep = report(trainer.model, trainer.task, cfg, trainer.out_dir, history=trainer.history)["sweep"]
        wall["report_s"] = time.monotonic() - t2
    finally:
        trainer.close()
    return trainer, cfg, sweep, wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (checks the script)")
    ap.add_argument("--budget-s", type=float, default=None, help="total seconds (default 450; dry run 600)")
    ap.add_argument("--bench-s", type=float, default=None, help="seconds for bench_layers (default 150)")
    ap.add_argument(
        "--output",
        default=None,
        help="results markdown (default benchmarks/results/gpu_check.md; dry run: runs/gpu_check_dry/gpu_check.md)",
    )
    ap.add_argument("--out-dir", default=None, help="run folder of the Sudoku training (default runs/gpu_check)")
    ap.add_argument("--data-dir", default=None, help="Sudoku cache folder (default ~/.cache/energyarch)")
    ap.add_argument(
        "--compile",
        dest="compile",
        action="store_true",
        default=None,
        help="torch.compile the model (default on a GPU)",
    )
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    a = ap.parse_args(argv)
    start = time.monotonic()
    dry = a.dry_run
    mode = MODES["dry" if dry else "gpu"]
    if not dry and not torch.cuda.is_available():
        ap.error("no CUDA device here; run with --dry-run to check the script on the CPU")
    budget = a.budget_s or (600.0 if dry else 450.0)
    budget_end = start + budget
    output = Path(
        a.output or (ROOT / "runs" / "gpu_check_dry" / "gpu_check.md" if dry else HERE / "results" / "gpu_check.md")
    )
    out_dir = Path(a.out_dir or (output.parent / "sudoku" if dry else ROOT / "runs" / "gpu_check"))
    compile_model = (not dry) if a.compile is None else a.compile
    setup_logging()
    device = torch.device("cuda" if not dry else "cpu")

    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    command = "bash benchmarks/gpu_check.sh " + " ".join(argv if argv is not None else sys.argv[1:])
    parts = {
        "head": f"# GPU check{' (dry run on the CPU: tiny sizes, not a measurement)' if dry else ''}\n\n"
        f"- date: {stamp}\n- device: {machine(device)}\n- command: `{command.strip()}`\n"
        f"- time budget: {budget:.0f} s"
    }
    parts["bench"] = "## 1. Layers: one training step (bench_layers)\n\n(running)"
    write(output, parts)

    bench_s = a.bench_s or (150.0 if not dry else 300.0)
    table = run_bench(mode["bench"], output.parent / "gpu_check_bench_layers.md", bench_s)
    parts["bench"] = "## 1. Layers: one training step (bench_layers)\n\n" + table
    parts["attention"] = "## 2. Attention against FlashAttention\n\n(running)"
    write(output, parts)
    try:
        parts["attention"] = "## 2. Attention against FlashAttention\n\n" + run_attention(
            mode["attention"], device, 60.0
        )
    except Exception as exc:  # report and go on to the training stage
        parts["attention"] = f"## 2. Attention against FlashAttention\n\n**failed**: {type(exc).__name__}: {exc}"
    parts["train"] = "## 3. Sudoku, paper recipe (sudoku_paper)\n\n(running)"
    write(output, parts)

    reserve = 20.0 if dry else 60.0
    trainer, cfg, sweep, wall = run_training(
        mode, out_dir, budget_end, reserve, compile_model, a.data_dir, progress=True
    )
    parts["train"] = (
        "## 3. Sudoku, paper recipe (sudoku_paper)\n\n"
        + training_markdown(trainer, cfg, sweep, wall)
        + f"\n\nRun folder: `{out_dir}` (metrics.json, TensorBoard events, plots)."
    )
    parts["end"] = f"Total wall time: {time.monotonic() - start:.0f} s."
    write(output, parts)
    print(f"\nwritten: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
