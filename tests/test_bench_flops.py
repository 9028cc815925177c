"""The analytic FLOPs of benchmarks/bench_layers.py (FLOP parity, issue 11) against torch's own FLOP counter.

``torch.utils.flop_counter.FlopCounterMode`` counts the matrix products that actually run in a training step
(forward and backward). On the CPU it does not count scaled_dot_product_attention, so for the layers that call
SDPA the attention products are added from their textbook count (QKᵀ and PV, 2 × 2BHN²p each way).
"""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_layers.py"


@pytest.fixture
def bl():
    spec = importlib.util.spec_from_file_location("bench_layers_flops", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module._set_sizes(2, 32, 2)  # B, d, iterations
    return module


@pytest.mark.parametrize("layer", ["emitted", "hand", "generic", "vanilla", "vanilla-ff1"])
def test_flops_match_the_counted_products(bl, layer):
    N, B, d, iters = 16, 2, 32, 2
    torch.manual_seed(0)
    model = bl.build(layer, d, 4, iters)
    X = torch.randn(B, N, d, requires_grad=True)  # every product's two gradients are computed
    with FlopCounterMode(display=False) as counter:
        model(X).square().mean().backward()
    sdpa = 3 * iters * 4 * B * N * N * d if layer.startswith("vanilla") else 0  # not counted on the CPU
    assert counter.get_total_flops() + sdpa == bl.flops(layer, N)


def test_emitted_sdpa_path_counts_two_passes(bl):
    """Above sdpa_threshold the emitted layer's attention is two SDPA passes of width p over N keys on the CPU
    (pass 1 by flash_lse, the plain second pass for symmetric scores); with the sink construction (CUDA, autocast,
    torch.compile) pass 1 has width p + 1."""
    N, B, d, H = 24, 2, 32, 4
    dense_part = bl.flops("emitted", N, sdpa_threshold=N)  # dense: 4BN²d per iteration
    sdpa_part = bl.flops("emitted", N, sdpa_threshold=N - 1)
    assert sdpa_part - dense_part == 3 * 2 * (4 * B * N * N * d + 4 * B * N * N * d - 4 * B * N * N * d)
    sink_part = bl.flops("emitted", N, sdpa_threshold=N - 1, sink=True)
    assert sink_part - sdpa_part == 3 * 2 * 4 * B * N * N * H


def test_counted_sdpa_flops_of_the_emitted_sdpa_path(bl):
    """The counter (matrix products) plus the recorded SDPA calls (flash_lse's kernel calls included) against the
    analytic count, N above the threshold (the sink construction's N + 1 keys would agree to O(1/N))."""
    N, B, d = 64, 2, 32
    torch.manual_seed(0)
    model = bl.CompiledRecurrent(d, 4, "auto", 2, sdpa_threshold=16)
    X = torch.randn(B, N, d, requires_grad=True)
    mm, sdpa = bl.counted_flops(lambda: model(X).square().mean().backward())
    analytic = bl.flops("emitted", N, sdpa_threshold=16)
    assert sdpa > 0 and abs(mm + sdpa - analytic) / analytic < 2.0 / N


def _script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_smoke", SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_causal_interleaved_and_the_pass_benchmark_run(tmp_path, capsys):
    """bench_causal --interleaved writes one row per layer with the GPT block at ratio 1.00; bench_bisoftmax_sdpa
    times the flash, sink and floor variants (bidirectional and --causal) at a small size."""
    out = tmp_path / "causal.md"
    assert (
        _script("bench_causal").main(
            ["--interleaved", "--ns", "48", "--batch", "1", "--d", "32", "--repeats", "1", "--out", str(out)]
        )
        == 0
    )
    rows = [r for r in out.read_text().splitlines() if r.startswith("| 48 |")]
    assert len(rows) == 2 and rows[0].startswith("| 48 | gpt block |") and rows[0].endswith("| 1.00 | 1.00 | 1.00 |")
    bench = _script("bench_bisoftmax_sdpa")
    for extra in ([], ["--causal"]):
        assert (
            bench.main(["--sizes", "40", "--repeats", "1", "--batch", "1", "--heads", "1", "--head-dim", "8", *extra])
            == 0
        )
    text = capsys.readouterr().out
    assert text.count("| 40 | CPU |") == 2 and "flash ÷ sink1" in text
