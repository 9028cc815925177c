"""benchmarks/gpu_check.sh: the dry run (tiny sizes on the CPU) writes a complete results markdown whose numbers
are those of the run folder, with the attention-against-FlashAttention section (the emitted layers' SDPA calls get a
fused kernel at the widths they use on CUDA); the trainer it uses stops at the epoch that would overrun its time
budget."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from energyarch.models import ModelConfig
from energyarch.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_the_results_markdown(tmp_path):
    out = tmp_path / "gpu_check.md"
    cmd = [
        "bash",
        str(ROOT / "benchmarks" / "gpu_check.sh"),
        "--dry-run",
        "--output",
        str(out),
        "--out-dir",
        str(tmp_path / "run"),
        "--data-dir",
        str(tmp_path / "data"),
    ]
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    text = out.read_text()
    assert text.startswith("# GPU check (dry run") and "Total wall time" in text and "(running)" not in text
    for layer in ("(a) emitted bi-softmax", "(b) generic torch.func.grad", "(d) vanilla pre-norm Transformer"):
        row = next(line for line in text.splitlines() if line.startswith(f"| 32 | {layer}"))
        assert "skipped" not in row and float(row.split("|")[3]) > 0  # a measured time
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and metrics["config"]["epochs"] == 200
    for h in metrics["history"]:  # the table shows the run folder's numbers
        assert f"| {h['epoch']} | {h['step']} | {h['train_loss']:.4f} | {100 * h['test_board_acc']:.2f} % |" in text
    assert "| iterations | 1 | 2 | 3 |" in text and list((tmp_path / "run").glob("events.out.tfevents.*"))
    attention = text.split("## 2. Attention against FlashAttention")[1].split("## 3.")[0]  # issue 20
    kernels = [ln for ln in attention.splitlines() if ln.startswith(("| bi-softmax |", "| causal bi-softmax |"))]
    assert len(kernels) >= 3 and all("math" not in ln for ln in kernels), attention
    for N in (32, 64):
        row = next(ln for ln in attention.splitlines() if ln.startswith(f"| {N} |"))
        assert "error" not in row and float(row.split("|")[-2]) > 0, row


def test_timed_trainer_stops_before_an_epoch_that_would_not_fit(tmp_path):
    gc = _gpu_check()
    cfg = TrainConfig(
        task="digits",
        epochs=5,
        batch_size=16,
        limit_train=32,
        limit_test=16,
        progress=False,
        out_dir=str(tmp_path / "run"),
        model=ModelConfig(d=16, heads=2, iters=2, time_freq=8),
    )
    t = gc.TimedTrainer(cfg)
    t.deadline = time.monotonic()  # any next epoch ends after it: the first one only
    t.fit()
    assert t.epoch == 1 and len(t.epoch_seconds) == 1 and len(t.history) == 1
    t = gc.TimedTrainer(cfg.with_overrides([f"out_dir={json.dumps(str(tmp_path / 'b'))}"]))
    t.max_epochs = 2
    t.fit()
    assert t.epoch == 2
    t = gc.TimedTrainer(cfg.with_overrides([f"out_dir={json.dumps(str(tmp_path / 'c'))}"]))
    t.hard_deadline = time.monotonic()  # already passed: not a single step
    t.fit()
    assert (t.epoch, t.step, t.history) == (0, 0, [])
