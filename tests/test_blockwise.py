"""Blockwise (tiled) evaluation above ``sdpa_threshold`` against the dense form, in float64.

For every attention entry of the catalog, energies of the other attention patterns (distance kernel, an opaque
symmetric kernel, a non-symmetric one, an opaque f) and the autodiff path of each: values of ∇_Z E, of the
energy and of the update, and gradients of a loss of the update w.r.t. X and the layer's weights (what training
differentiates), at N above the threshold with a tile small enough that several tiles of a ragged size run.
"""

from __future__ import annotations

import pytest
import torch

import energyarch as ea
from energyarch import blockwise, catalog

N, THRESHOLD, TILE, D = 23, 8, 6, 16  # 4 × 4 tiles, the last ones of 5 rows / columns; width 16
ATTENTION_ENTRIES = sorted(name for name, e in catalog.load_catalog().items() if e.family == "attention")
#: patterns whose ∇_Z E above the threshold is evaluated blockwise (the others: SDPA passes or associativity)
TILED_GRAD = {"kernel attention", "inner-product kernel", "distance kernel", "pairwise kernel", "autodiff"}


def _gauss(x, y):
    return torch.exp(-0.2 * (x - y).pow(2).sum())


def _skew(x, y):
    return torch.exp(0.25 * (x * y).sum() + 0.3 * x[0])


def _softplus_f(x):
    return torch.nn.functional.softplus(x)


EXTRA = {
    "distance kernel, sqrt f": lambda: ea.Attention(f="sqrt(x)", K="exp(-r/10)", heads=2),
    "distance kernel, linear f": lambda: ea.Attention(f="x/2", K="1/(1 + r)", heads=2),
    "callable kernel, log f": lambda: ea.Attention(f="log(x)", K=ea.Kernel.from_torch(_gauss, "gauss"), heads=2),
    "callable kernel, linear f": lambda: ea.Attention(f="x/3", K=ea.Kernel.from_torch(_gauss, "gauss"), heads=2),
    "non-symmetric callable kernel": lambda: ea.Attention(
        f="log(x)", K=ea.Kernel.from_torch(_skew, "skew", symmetric=False), heads=2
    ),
    "opaque f, feature map": lambda: ea.Attention(
        f=ea.Scalar.from_torch(_softplus_f, "softplus"), K="exp(beta*s)/2", phi="tanh(x)", heads=2
    ),
}


def _term(name):
    return catalog.get(name).term(D) if name in ATTENTION_ENTRIES else EXTRA[name]()


CASES = [(name, path) for name in ATTENTION_ENTRIES + list(EXTRA) for path in ("auto", "autodiff")]


@pytest.fixture
def tile_calls(monkeypatch):
    """Record the tile side of every blockwise reduction (to check that the tiled branch ran, in several tiles)."""
    sides = []
    inner = blockwise._reduce

    def spy(fn, rows, cols, T):
        sides.append(T)
        return inner(fn, rows, cols, T)

    monkeypatch.setattr(blockwise, "_reduce", spy)
    return sides


def _loss_and_grads(module, X, V):
    """The update, the energy, ∇_Z E, and d(loss)/d(X, W) for loss = Σ V ⊙ update + Σ energy."""
    X = X.clone().requires_grad_(True)
    out = module(X, 0.1)
    energy = module.energy(X)
    loss = (V * out).sum() + energy.sum()
    gX, gW = torch.autograd.grad(loss, [X, module.weight])
    with torch.no_grad():
        G = module.grad_Z(module.normalize(module.coords(X)))
    return {"update": out.detach(), "energy": energy.detach(), "grad_Z": G, "d loss / dX": gX, "d loss / dW": gW}


@pytest.mark.parametrize("name,path", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_blockwise_matches_dense(name, path, tile_calls):
    step = ea.compile(_term(name), d=D, path=path, dtype=torch.float64, sdpa_threshold=THRESHOLD)
    module = next(iter(step.terms.values()))
    pattern = step.derivations[module.term_name].pattern
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(2, N, D, generator=gen, dtype=torch.float64)
    V = torch.randn(2, N, D, generator=gen, dtype=torch.float64)
    with blockwise.tiles(TILE):
        tiled = _loss_and_grads(module, X, V)
    if pattern in TILED_GRAD or pattern not in ("bi-softmax", "distance softmax"):
        assert tile_calls and set(tile_calls) == {TILE}, f"{pattern}: the blockwise branch did not run"
    module.sdpa_threshold = 10**9
    calls = len(tile_calls)
    dense = _loss_and_grads(module, X, V)
    assert len(tile_calls) == calls, "the dense reference ran a blockwise reduction"
    for key, ref in dense.items():
        err = float((tiled[key] - ref).abs().max())
        scale = float(ref.abs().max())
        assert err <= 1e-10 * max(scale, 1.0), f"{name} ({pattern}): {key} differs by {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize(
    "name",
    [
        "sigmoid-softmax",
        "sqrt-exp-kernel",
        "linear-attention",
        "distance kernel, sqrt f",
        "callable kernel, log f",
        "non-symmetric callable kernel",
        "opaque f, feature map",
    ],
)
def test_verify_ok_blockwise(name, tile_calls):
    """ea.verify against the independent reference energy, with the compiled module running blockwise."""
    step = ea.compile(_term(name), d=D, sdpa_threshold=4)
    with blockwise.tiles(3):
        report = ea.verify(step, tokens=11)
    assert report.ok, str(report)
    assert tile_calls, "verify did not exercise the blockwise branch"


def test_pair_reduce_against_numpy_style_reference():
    """The primitive on its own: a row reduction with per-row and per-column inputs, gradients to both."""
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(3, 17, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    s = torch.randn(3, 17, 1, generator=gen, dtype=torch.float64, requires_grad=True)

    def block(r, c):
        return (torch.cos(r[0] @ c[0].transpose(-1, -2)) * (r[1] - c[1].transpose(-1, -2))) @ c[0]

    with blockwise.tiles(5):
        out = blockwise.pair_reduce(block, (A, s))
    ref = block((A, s), (A, s))
    W = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad((W * out).sum(), [A, s])
    want = torch.autograd.grad((W * ref).sum(), [A, s])
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=0, atol=1e-12)


def test_tile_is_chosen_by_size():
    assert blockwise.tile_size(100, 1, 4, 4) == 100  # everything fits in one tile
    big = blockwise.tile_size(1 << 20, 32, 4, 4)
    assert blockwise.MIN_TILE <= big < 1 << 20
    assert big * big * 32 * 4 * 4 <= blockwise.TILE_BUDGET_BYTES
    assert blockwise.tile_size(1 << 20, 32, 3 * 64 + 6, 4) < big  # an opaque kernel's wide tiles
    with blockwise.tiles(7):
        assert blockwise.tile_size(1 << 20, 32, 4, 4) == 7
    with pytest.raises(ea.EnergyArchError, match="tile side"):
        blockwise.tiles(0)


# ---------------------------------------------------------------------------------------------------------------
# bi-softmax above the threshold: the plain second pass for symmetric scores (DESIGN: "A plain second pass")
# ---------------------------------------------------------------------------------------------------------------


def _sphere(*shape, radius, dtype=torch.float64, seed=0):
    Z = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return torch.nn.functional.normalize(Z, dim=-1) * radius


def _declared_grad(Phi, b):
    """∇_Φ of the declared energy E = (1/b) Σ_i log Σ_j exp(b Φ_i·Φ_j), by torch.func.grad (independent of P)."""

    def energy(F):
        return torch.logsumexp(b * F @ F.transpose(-1, -2), dim=-1).sum() / b

    return torch.func.grad(energy)(Phi)


@pytest.mark.parametrize("second_pass", ["symmetric", "sink"])
def test_bisoftmax_second_pass_values_and_gradients_float64(second_pass):
    """(P + Pᵀ)Φ and d(loss)/dΦ through it, against the materialised closed form and against torch.func.grad of
    the declared energy (its value, and the vector–Jacobian product of that gradient: what training needs)."""
    from energyarch.runtime import bisoftmax_dense, bisoftmax_sdpa

    b = 32**-0.5
    Phi = _sphere(2, 3, 300, 32, radius=32**0.5).requires_grad_(True)
    V = torch.randn(Phi.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = bisoftmax_sdpa(Phi, b, second_pass=second_pass)
    (g_got,) = torch.autograd.grad((V * got).sum(), Phi)
    for name, ref_fn in (("dense", bisoftmax_dense), ("torch.func.grad", _declared_grad)):
        ref = ref_fn(Phi, b)
        (g_ref,) = torch.autograd.grad((V * ref).sum(), Phi)
        for what, a, r in (("value", got, ref), ("gradient", g_got, g_ref)):
            err = float((a - r).detach().abs().max() / r.detach().abs().max())
            assert err < 1e-12, f"{second_pass} vs {name}: {what} differs by {err:.3g} (relative to its max)"


def test_bisoftmax_symmetric_pass_float32_agreement(capsys):
    """float32, B=2, H=4, N=1024, p=32: the symmetric second pass against the float64 closed form, value and
    gradient (printed for the record); it is no worse than the sink construction by more than a factor 2."""
    from energyarch.runtime import bisoftmax_dense, bisoftmax_sdpa

    b = 32**-0.5
    Phi64 = _sphere(2, 4, 1024, 32, radius=32**0.5).requires_grad_(True)
    V = torch.randn(Phi64.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = bisoftmax_dense(Phi64, b)
    (g_ref,) = torch.autograd.grad((V * ref).sum(), Phi64)
    errs = {}
    for second_pass in ("symmetric", "sink"):
        Phi = Phi64.detach().float().requires_grad_(True)
        out = bisoftmax_sdpa(Phi, b, second_pass=second_pass)
        (g,) = torch.autograd.grad((V.float() * out).sum(), Phi)
        out, ref = out.detach(), ref.detach()
        errs[second_pass] = (
            float((out.double() - ref).abs().max() / ref.abs().max()),
            float((g.double() - g_ref).abs().max() / g_ref.abs().max()),
        )
    with capsys.disabled():
        print(f"\nfloat32 relative error (value, gradient): {errs}")
    for k, (ev, eg) in errs.items():
        assert ev < 1e-5 and eg < 1e-5, (k, ev, eg)
    assert errs["symmetric"][0] <= 2 * errs["sink"][0] + 1e-7


def test_symmetric_pass_rule_and_its_fallback(monkeypatch):
    """The rule. float32/bfloat16/float64 always take the symmetric pass: wherever pass 1 resolves its rows, L's
    range is below log(2/eps) + log(N + 1), far inside their limit (~168) — checked on rows of growing norm up to
    where pass 1 fails. float16 (limit ~13) checks L's range: on the sphere (range ≤ log N) symmetric, with row
    norms from √p to 2√p (range ~16) the sink. Both passes match the dense form off the sphere (float64)."""
    import math

    from energyarch import runtime
    from energyarch.runtime import _row_softmax_sdpa, bisoftmax_dense, bisoftmax_sdpa, symmetric_pass_ok

    b = 32**-0.5
    Phi = _sphere(1, 2, 300, 32, radius=32**0.5)
    L = _row_softmax_sdpa(Phi, b)[1]
    assert b * 32 - 1e-9 <= float(L.min()) and float(L.max()) <= b * 32 + math.log(300) + 1e-9
    assert 160 < runtime._spread_limit(torch.float32) < 180 and 160 < runtime._spread_limit(torch.bfloat16) < 180
    assert 12 < runtime._spread_limit(torch.float16, 32**0.5) < 14
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert runtime.compute_dtype(Phi.float()) == torch.bfloat16

    def spread_out(r_max, dtype=torch.float64):  # row norms from √p to r_max·√p
        X = (Phi * torch.linspace(1.0, r_max, 300, dtype=torch.float64)[:, None]).to(dtype)
        L = _row_softmax_sdpa(X, b)[1].double()
        return X, L, float((L.amax(-2) - L.amin(-2)).max())

    for dtype in (torch.float32, torch.float64):  # the static rule's premise, up to pass 1's failure
        eps = torch.finfo(dtype).eps
        for r_max in (1.5, 2.0, 2.5, 3.0, 4.0):
            X, L_X, spread = spread_out(r_max, dtype)
            if math.isfinite(spread):
                assert spread <= math.log(2 / eps) + math.log(301) < runtime._spread_limit(dtype), (dtype, r_max)
                assert symmetric_pass_ok(L_X.to(dtype), X)
    assert spread_out(3.0)[2] == float("inf")  # pass 1's own limit: its sink is the global bound

    wide, L_wide, spread = spread_out(2.0)
    assert 13.2 < spread < 20
    assert symmetric_pass_ok(L.half(), Phi.half()) and not symmetric_pass_ok(L_wide.half(), wide.half())
    assert symmetric_pass_ok(L_wide.half(), (wide / 4).half()) is False  # the range decides, not |Φ| alone

    chosen = []
    for name in ("transpose_pass_symmetric", "transpose_pass_sink"):
        inner = getattr(runtime, name)
        monkeypatch.setattr(runtime, name, lambda *a, _f=inner, _n=name: chosen.append(_n) or _f(*a))
    bisoftmax_sdpa(Phi.half(), b)
    assert chosen[-1] == "transpose_pass_symmetric"
    bisoftmax_sdpa(wide.half(), b)
    assert chosen[-1] == "transpose_pass_sink"
    ref = bisoftmax_dense(wide, b)
    for second_pass in ("symmetric", "sink"):
        out = bisoftmax_sdpa(wide, b, second_pass=second_pass)  # pass 1 loses digits as e^(bound − L_i) ≈ 1e7
        assert float((out - ref).abs().max() / ref.abs().max()) < 1e-8, second_pass
    with pytest.raises(ea.EnergyArchError, match="second_pass"):
        bisoftmax_sdpa(Phi, b, second_pass="plain")


def test_cuda_widths_are_multiples_of_8_and_exact(monkeypatch):
    """With the device taken as CUDA (patched), the sink constructions pad their width p + 1 (p + 2) to a multiple
    of 8 with zero columns; the results are unchanged (run here on the CPU, float64)."""
    from energyarch import runtime

    b = 16**-0.5
    Z = _sphere(1, 2, 50, 16, radius=4.0)
    before = {
        "bi": runtime.bisoftmax_sdpa(Z, b, second_pass="sink"),
        "causal": runtime.causal_softmax_sdpa(Z, Z, b),
        "distance": runtime.distance_softmax_sdpa(Z, 0.1),
    }
    widths = []
    inner = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional,
        "scaled_dot_product_attention",
        lambda q, k, v, **kw: widths.append((q.shape[-1], k.shape[-1], v.shape[-1])) or inner(q, k, v, **kw),
    )
    monkeypatch.setattr(runtime, "sdpa_device_type", lambda t: "cuda")
    after = {
        "bi": runtime.bisoftmax_sdpa(Z, b, second_pass="sink"),
        "causal": runtime.causal_softmax_sdpa(Z, Z, b),
        "distance": runtime.distance_softmax_sdpa(Z, 0.1),
    }
    assert widths and all(w == (24, 24, 24) for w in widths), widths
    for k in before:
        for x, y in zip(*(t if isinstance(t, tuple) else (t,) for t in (before[k], after[k]))):
            assert torch.allclose(x, y, rtol=0, atol=1e-12), k
