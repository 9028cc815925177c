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

N, THRESHOLD, TILE, D = 23, 8, 6, 16     # 4 × 4 tiles, the last ones of 5 rows / columns; width 16
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
        f="log(x)", K=ea.Kernel.from_torch(_skew, "skew", symmetric=False), heads=2),
    "opaque f, feature map": lambda: ea.Attention(f=ea.Scalar.from_torch(_softplus_f, "softplus"),
                                                  K="exp(beta*s)/2", phi="tanh(x)", heads=2),
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


@pytest.mark.parametrize("name", ["sigmoid-softmax", "sqrt-exp-kernel", "linear-attention", "distance kernel, sqrt f",
                                  "callable kernel, log f", "non-symmetric callable kernel", "opaque f, feature map"])
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
    assert blockwise.tile_size(100, 1, 4, 4) == 100                        # everything fits in one tile
    big = blockwise.tile_size(1 << 20, 32, 4, 4)
    assert blockwise.MIN_TILE <= big < 1 << 20
    assert big * big * 32 * 4 * 4 <= blockwise.TILE_BUDGET_BYTES
    assert blockwise.tile_size(1 << 20, 32, 3 * 64 + 6, 4) < big            # an opaque kernel's wide tiles
    with blockwise.tiles(7):
        assert blockwise.tile_size(1 << 20, 32, 4, 4) == 7
    with pytest.raises(ea.EnergyArchError, match="tile side"):
        blockwise.tiles(0)
