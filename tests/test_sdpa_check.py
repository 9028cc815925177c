"""Req. 2 of issue 20: on CUDA the memory-linear layers must not fall back to SDPA's N×N math kernel.

Runnable on the CPU: the device is taken as CUDA (``runtime.sdpa_device_type`` patched, which sets the widths the
layers give SDPA), a training step runs under bfloat16 autocast, and every SDPA call's backend-selection inputs
(dtype, widths, strides, mask) are checked against the documented conditions of FlashAttention and the
memory-efficient kernel (:mod:`energyarch.sdpa_check`). A control shows the check fails on the unpadded widths.
"""

import pytest
import torch

import energyarch as ea
from energyarch import runtime
from energyarch.sdpa_check import kernel_blockers, memory_linear_kernel, record_sdpa_calls

N, D, THRESHOLD = 40, 64, 16  # N above the threshold: the SDPA lowerings run

LAYERS = {
    "bi-softmax": lambda: (
        ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2) + ea.FeedForward(g="x", h="relu(x)**2/2", ratio=1)
    ),
    "causal bi-softmax": lambda: ea.CausalAttention(f="log(x)/beta", K="exp(beta*s)", heads=2),
    "distance softmax": lambda: ea.Attention(f="log(x)/beta", K="exp(-beta*r/2)", heads=2),
}


def _train_step_calls(energy, cuda: bool, monkeypatch):
    if cuda:
        monkeypatch.setattr(runtime, "sdpa_device_type", lambda t: "cuda")
    step = ea.compile(energy, d=D, sdpa_threshold=THRESHOLD)
    X = torch.randn(2, N, D, generator=torch.Generator().manual_seed(0))
    with record_sdpa_calls() as calls, torch.autocast("cpu", dtype=torch.bfloat16):
        out = step(X, 0.1)
        loss = out.float().square().mean() + step.energy(X).float().mean()
    loss.backward()
    grads = [p.grad for p in step.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    return step, calls


@pytest.mark.parametrize("name", list(LAYERS))
def test_long_sequences_on_cuda_get_a_fused_kernel(name, monkeypatch):
    step, calls = _train_step_calls(LAYERS[name](), cuda=True, monkeypatch=monkeypatch)
    patterns = {d.pattern for d in step.derivations.values()}
    assert name in patterns, patterns
    assert len(calls) >= 2, "the SDPA lowering did not run"
    for c in calls:
        assert c.dtype == torch.bfloat16
        assert c.kernel == "flash", f"{name}: SDPA call {c} would not run FlashAttention: {c.blockers}"


def test_the_check_fails_on_the_unpadded_widths(monkeypatch):
    """Control: with CPU widths (p + 1 = 33) the same step's sink passes would go to the math kernel on CUDA."""
    _, calls = _train_step_calls(LAYERS["bi-softmax"](), cuda=False, monkeypatch=monkeypatch)
    bad = [c for c in calls if c.kernel is None]
    assert bad and all("not a multiple of 8" in " ".join(c.blockers["flash"]) for c in bad)


def test_blockers_of_the_documented_conditions():
    q = torch.randn(2, 4, 64, 32, dtype=torch.bfloat16)
    assert kernel_blockers(q, q, q) == {"flash": [], "efficient": []}
    assert memory_linear_kernel(q.float(), q.float(), q.float()) == "efficient"  # float32: no FlashAttention
    assert memory_linear_kernel(q.double(), q.double(), q.double()) is None
    mask = torch.zeros(64, 64, dtype=torch.bfloat16, requires_grad=True)
    assert memory_linear_kernel(q, q, q, attn_mask=mask) is None
    assert memory_linear_kernel(q.transpose(-1, -2).transpose(-1, -2).contiguous(), q, q) == "flash"
    strided = torch.randn(2, 4, 32, 64, dtype=torch.bfloat16).transpose(-1, -2)  # last-dim stride 64
    assert memory_linear_kernel(strided, q, q) is None
    assert memory_linear_kernel(q, q, q[..., :16]) == "efficient"  # v narrower: not flash
    assert memory_linear_kernel(q, q, q, dtype=torch.float16) == "flash"
    wide = torch.randn(1, 1, 8, 264, dtype=torch.bfloat16)
    assert "head width above 256" in kernel_blockers(wide, wide, wide)["flash"]
