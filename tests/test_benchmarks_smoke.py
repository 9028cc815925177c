"""Smoke test of benchmarks/bench_layers.py: the quick mode runs and reports every layer, and the emitted
bi-softmax layer computes exactly the hand-written Hyper-SET layer (Eqs. 9 + 11) it is benchmarked against."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_layers.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_layers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bl = _load_bench()


def test_quick_mode_reports_every_layer():
    cp = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert cp.returncode == 0, cp.stderr[-2000:]
    rows = [ln for ln in cp.stdout.splitlines() if ln.startswith("| 64 |")]
    assert len(rows) == len(bl.LAYERS), cp.stdout
    for layer in bl.LAYERS:
        row = next((r for r in rows if bl.LABELS[layer] in r), None)
        assert row is not None, f"no row for {layer}:\n{cp.stdout}"
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert "skipped" not in row and "ERROR" not in row, row
        train_min, train_med, train_mem = float(cells[2]), float(cells[3]), float(cells[4].replace(",", ""))
        assert 0 < train_min <= train_med and train_mem >= 0, row
    assert "Targets (this run)" in cp.stdout


@pytest.mark.parametrize("N, threshold", [(48, 512), (40, 16)], ids=["dense P", "bisoftmax_sdpa"])
def test_emitted_layer_equals_hand_written_hyperset(N, threshold):
    torch.manual_seed(0)
    d, heads = 64, 4
    emitted = bl.build("emitted", d=d, heads=heads, sdpa_threshold=threshold)
    hand = bl.copy_weights(emitted, bl.build("hand", d=d, heads=heads))
    X = torch.randn(2, N, d)
    Y_e, Y_h = emitted(X), hand(X)
    assert emitted.iters == hand.iters == 12
    assert (Y_e - X).abs().max() > 0.1  # 12 iterations actually moved the tokens
    torch.testing.assert_close(Y_e, Y_h, rtol=1e-4, atol=1e-4)
    # training-step gradients of the shared bases and step sizes agree too
    Y_e.square().mean().backward()
    Y_h.square().mean().backward()
    pairs = [
        (emitted.step.terms["attn"].weight, hand.W),
        (emitted.step.terms["ff"].weight, hand.D),
        (emitted.alpha, hand.alpha),
        (emitted.gamma, hand.gamma),
    ]
    for a, b in pairs:
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5)


def test_generic_and_vanilla_layers_run():
    torch.manual_seed(0)
    X = torch.randn(2, 16, 32)
    emitted = bl.build("emitted", d=32, heads=4, iters=2)
    generic = bl.build("generic", d=32, heads=4, iters=2)
    generic.load_state_dict(emitted.state_dict())
    torch.testing.assert_close(generic(X), emitted(X), rtol=1e-4, atol=1e-4)
    assert bl.build("vanilla", d=32, heads=4, iters=2)(X).shape == X.shape


def test_compare_runs_tabulates_and_plots_real_runs(tmp_path):
    """benchmarks/compare_runs.py on two tiny digits runs: one row per evaluated epoch, the sweep, the PNG."""
    from energyarch.models import ModelConfig
    from energyarch.train import TrainConfig, train

    folders = []
    for arch in ("hyperset", "transformer"):
        cfg = TrainConfig(
            task="digits",
            epochs=2,
            batch_size=16,
            lr=3e-3,
            limit_train=32,
            limit_test=16,
            progress=False,
            diagnostics_samples=4,
            eval_iters=[1, 2],
            out_dir=str(tmp_path / arch),
            model=ModelConfig(arch=arch, d=16, heads=2, iters=2, time_freq=8),
        )
        train(cfg)
        folders.append(str(tmp_path / arch))
    out = tmp_path / "report" / "cmp.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare_runs.py"), *folders, "--metric", "top1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "| 1 | " in text and "| 2 | " in text  # both epochs evaluated (eval_every=1)
    assert "hyperset: hyperset d=16" in text and "transformer: transformer d=16" in text
    assert "T=1" in text and "T=2" in text  # the final sweep of each run
    assert out.with_suffix(".png").stat().st_size > 1000
    bad = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare_runs.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "no metrics.json" in bad.stderr
