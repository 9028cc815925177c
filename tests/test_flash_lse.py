"""``flash_lse``: the CPU flash-attention kernel's output and row log-sum-exp, both differentiable, against the
dense softmax in float64 (values and gradients, tolerance relative to magnitude), and where the runtime uses it."""

from __future__ import annotations

import math

import pytest
import torch

from energyarch import runtime
from energyarch.runtime import flash_lse, flash_lse_ok


def _dense(q, k, v, scale, causal):
    S = scale * q @ k.transpose(-1, -2)
    if causal:
        S = S.masked_fill(~runtime.causal_mask(q.shape[-2], q.device), -math.inf)
    return torch.softmax(S, -1) @ v, torch.logsumexp(S, -1, keepdim=True)


def _rel(a, b):
    return float(((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).detach())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("grads", ["both", "L only", "out only", "some rows without dO"])
def test_flash_lse_values_and_gradients_float64(causal, shared, grads):
    """Every way the two cotangents can arrive: the folded delta term (dO and dL), dL alone (an energy that reads
    L only: the exact add-and-remove call), dO alone, and rows whose dO is zero while dL is not."""
    g = torch.Generator().manual_seed(3)
    B, H, N, p = 2, 3, 37, 8
    q = torch.randn(B, H, N, p, dtype=torch.float64, generator=g).requires_grad_(True)
    if shared:
        k = v = q
        ins = [q]
    else:
        k, v = (torch.randn(B, H, N, p, dtype=torch.float64, generator=g).requires_grad_(True) for _ in range(2))
        ins = [q, k, v]
    dO = torch.randn(B, H, N, p, dtype=torch.float64, generator=g)
    dL = torch.randn(B, H, N, 1, dtype=torch.float64, generator=g)
    if grads == "L only":
        dO.zero_()
    elif grads == "out only":
        dL.zero_()
    elif grads == "some rows without dO":
        dO[:, :, ::3] = 0
    out, L = flash_lse(q, k, v, 0.7, causal)
    out_ref, L_ref = _dense(q, k, v, 0.7, causal)
    assert _rel(out, out_ref) < 1e-12 and _rel(L, L_ref) < 1e-12
    got = torch.autograd.grad((out * dO).sum() + (L * dL).sum(), ins)
    ref = torch.autograd.grad((out_ref * dO).sum() + (L_ref * dL).sum(), ins)
    for a, b in zip(got, ref):
        assert _rel(a, b) < 1e-12, (causal, shared, grads, _rel(a, b))


def test_flash_lse_other_ranks_and_the_energy_gradient():
    """3-D inputs (heads folded into the batch), and ∇ of the declared energy Σ_i log Σ_j exp(b Φ_i·Φ_j) through
    ``row_logsumexp`` above the threshold against torch.func.grad of the dense form."""
    Phi = torch.randn(2, 40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out, L = flash_lse(Phi, Phi, Phi, 0.4)
    ref_out, ref_L = _dense(Phi, Phi, Phi, 0.4, False)
    assert out.shape == Phi.shape and L.shape == (2, 40, 1)
    assert _rel(out, ref_out) < 1e-12 and _rel(L, ref_L) < 1e-12
    X = Phi.unsqueeze(0).requires_grad_(True)
    g_long = torch.autograd.grad(runtime.row_logsumexp(X, 0.4, 10).sum(), X)[0]
    g_dense = torch.func.grad(lambda X: runtime.row_logsumexp(X, 0.4, 10_000).sum())(X.detach())
    assert _rel(g_long, g_dense) < 1e-12
    g_func = torch.func.grad(lambda X: runtime.row_logsumexp(X, 0.4, 10).sum())(X.detach())  # transforms: sink
    assert _rel(g_func, g_dense) < 1e-12


def test_where_flash_lse_is_used(monkeypatch):
    """CPU float32/float64 take it; float16, autocast to bfloat16, torch.func transforms and a CUDA device
    (patched) keep the sink."""
    x = torch.randn(1, 2, 8, 4)
    assert flash_lse_ok(x) and flash_lse_ok(x.double(), x.double())
    assert not torch.func.vmap(lambda t: torch.tensor(flash_lse_ok(t)))(x).any()
    assert not flash_lse_ok(x.half()) and not flash_lse_ok(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not flash_lse_ok(x)
    monkeypatch.setattr(runtime, "sdpa_device_type", lambda t: "cuda")
    assert not flash_lse_ok(x)


def test_bisoftmax_flash_path_and_its_range_fallback(monkeypatch):
    """On CPU float32 bisoftmax_sdpa runs pass 1 through flash_lse and the plain symmetric pass 2; where L's range
    exceeds the symmetric pass's float32 limit (~168; rows of very different norms, off the sphere), pass 2 takes
    the sink (held below log(2/eps) + log(N + 1), where the symmetric pass is accurate; at a range of 132 its
    values would be 0.3 off in float32). Both agree with the dense form computed in float64."""
    chosen = []
    for name in ("flash_lse", "transpose_pass_symmetric", "transpose_pass_sink"):
        inner = getattr(runtime, name)
        monkeypatch.setattr(runtime, name, lambda *a, _f=inner, _n=name, **kw: chosen.append(_n) or _f(*a, **kw))
    b = 32**-0.5
    Z = torch.randn(1, 2, 300, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sphere = torch.nn.functional.normalize(Z, dim=-1) * 32**0.5

    def spread_to(r_max):  # row norms √p … r_max·√p
        return sphere * torch.linspace(1.0, r_max, 300, dtype=torch.float64)[:, None]

    cases = (
        (sphere, "transpose_pass_symmetric"),
        (spread_to(1.5), "transpose_pass_symmetric"),  # range 0.3, 6
        (spread_to(3.0), "transpose_pass_sink"),
        (spread_to(5.0), "transpose_pass_sink"),
    )  # 44, 132
    for Phi, second in cases:
        chosen.clear()
        out = runtime.bisoftmax_sdpa(Phi.float(), b)
        assert chosen == ["flash_lse", second]
        ref = runtime.bisoftmax_dense(Phi, b)
        assert _rel(out.double(), ref) < 1e-5


@pytest.mark.parametrize("flash", [True, False])
def test_qk_bisoftmax_both_passes_float64(flash, monkeypatch):
    """qk_bisoftmax_sdpa: (P Φ_k, Pᵀ Φ_q, L) and the gradients of a loss of all three against the dense form, with
    the flash passes and with the sink constructions (flash switched off)."""
    from energyarch.runtime_qk import qk_bisoftmax_sdpa

    if not flash:
        monkeypatch.setattr(runtime, "flash_lse_ok", lambda *ts: False)
        import energyarch.runtime_qk as rqk

        monkeypatch.setattr(rqk, "flash_lse_ok", lambda *ts: False)
    g = torch.Generator().manual_seed(5)
    Q, K = (torch.randn(2, 3, 29, 8, dtype=torch.float64, generator=g).requires_grad_(True) for _ in range(2))
    w = [torch.randn(2, 3, 29, n, dtype=torch.float64, generator=g) for n in (8, 8, 1)]
    out = qk_bisoftmax_sdpa(Q, K, 0.6)
    S = 0.6 * Q @ K.transpose(-1, -2)
    P = torch.softmax(S, -1)
    ref = (P @ K, P.transpose(-1, -2) @ Q, torch.logsumexp(S, -1, keepdim=True))
    for a, r in zip(out, ref):
        assert _rel(a, r) < 1e-12
    got = torch.autograd.grad(sum((a * c).sum() for a, c in zip(out, w)), (Q, K))
    want = torch.autograd.grad(sum((a * c).sum() for a, c in zip(ref, w)), (Q, K))
    for a, r in zip(got, want):
        assert _rel(a, r) < 1e-12


def test_sphere_norm_matches_rms_norm_with_first_and_second_derivatives():
    """The hand-written RMSNorm backward: values and gradients against F.rms_norm (float64, relative), a second
    derivative (gradgradcheck), torch.func.grad and vmap; low-precision dtypes use F.rms_norm itself."""
    import torch.nn.functional as F

    from energyarch.sphere import sphere_norm

    g = torch.Generator().manual_seed(2)
    z = torch.randn(3, 2, 5, 7, dtype=torch.float64, generator=g).requires_grad_(True)
    w = torch.randn(3, 2, 5, 7, dtype=torch.float64, generator=g)

    def ref(t):
        return F.rms_norm(t, (7,), eps=1e-6) * 1.7 / 7**0.5

    def ours(t):
        return sphere_norm(t, 1.7, 1e-6)

    assert _rel(ours(z), ref(z)) < 1e-14
    (got,) = torch.autograd.grad((ours(z) * w).sum(), z)
    (want,) = torch.autograd.grad((ref(z) * w).sum(), z)
    assert _rel(got, want) < 1e-13
    assert torch.autograd.gradcheck(ours, (z,)) and torch.autograd.gradgradcheck(ours, (z,))
    fg = torch.func.grad(lambda t: (ours(t).sin() * w).sum())(z.detach())
    assert _rel(fg, torch.func.grad(lambda t: (ref(t).sin() * w).sum())(z.detach())) < 1e-13
    assert _rel(torch.func.vmap(ours)(z.detach()), ref(z.detach())) < 1e-14
    zb = z.detach().bfloat16()
    assert torch.equal(sphere_norm(zb, 1.7, 1e-6), F.rms_norm(zb, (7,), eps=1e-6) * (1.7 / 7**0.5))
