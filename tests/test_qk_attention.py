"""Bidirectional attention with an interaction (query-key, diagonal plus low rank): docs: Concepts, "Bidirectional
interactions". Every emitted gradient is checked against torch.func.grad of the declared energy in float64."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import energyarch as ea
from energyarch.errors import DeclarationError
from energyarch.runtime_qk import qk_bisoftmax_sdpa

TERMS = {
    "bi-softmax": dict(f="log(x)/beta", K="exp(beta*s)"),
    "sigmoid": dict(f="x/(2*beta)", K="sigmoid(beta*s)"),
    "softmax with phi": dict(f="log(x)", K="exp(beta*s)", phi="sigmoid(x)"),
    "distance": dict(f="log(x)", K="exp(-r/2)"),
}


@pytest.mark.parametrize("interaction", [ea.QueryKey(), ea.DiagLowRank(rank=3)], ids=lambda i: i.kind)
@pytest.mark.parametrize("name", list(TERMS))
@pytest.mark.parametrize("threshold", [512, 0], ids=["dense", "long"])
def test_gradients_and_updates_match_autodiff_of_the_declared_energy(interaction, name, threshold):
    if interaction.kind == "diag-low-rank" and name == "distance":
        pytest.skip("refused at declaration (tested below)")
    step = ea.compile(
        ea.Attention(heads=2, interaction=interaction, **TERMS[name]),
        d=8,
        dtype=torch.float64,
        sdpa_threshold=threshold,
    )
    report = ea.verify(step)
    assert report.ok, str(report)
    assert step.derivations["attn"].family == "qk attention"


@pytest.mark.parametrize("mode", ["exact", "riemannian"])
def test_other_constraint_modes_verify(mode):
    step = ea.compile(ea.Attention(heads=2, interaction=ea.QueryKey(), **TERMS["bi-softmax"]), d=8, mode=mode)
    assert ea.verify(step).ok


def test_bisoftmax_is_energy_transformers_update_written_out():
    """∂E/∂Q = P K, ∂E/∂K = Pᵀ Q for f = β⁻¹ log, κ = exp(βs), mapped back with W_Qᵀ and W_Kᵀ."""
    step = ea.compile(
        ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2, interaction=ea.QueryKey()), d=8, dtype=torch.float64
    )
    m = step.terms["attn"]
    assert step.derivations["attn"].pattern == "qk bi-softmax"
    X = torch.randn(3, 6, 8, dtype=torch.float64)
    Q, K, _, _ = m.query_key(X)
    P = torch.softmax(m.beta * Q @ K.transpose(-1, -2), dim=-1)
    G_q, G_k = m.grad_Z(Q, K)
    assert torch.allclose(G_q, P @ K, atol=1e-12) and torch.allclose(G_k, P.transpose(-1, -2) @ Q, atol=1e-12)
    heads = lambda G, W: G.transpose(-2, -3).flatten(-2) @ W.T  # noqa: E731
    assert torch.allclose(
        m.direction(X), -(heads(P @ K, m.weight) + heads(P.transpose(-1, -2) @ Q, m.weight_k)), atol=1e-12
    )
    assert set(dict(step.named_parameters())) == {"terms.attn.weight", "terms.attn.weight_k"}


def test_shared_basis_is_plain_attention():
    plain = ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2)
    assert ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2, interaction=ea.SharedBasis()) == plain
    assert plain.family == "attention" and plain.interaction is None


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("b", [-0.7, 0.125, 3.0])
def test_memory_linear_passes_match_dense_far_from_the_cauchy_schwarz_bound(dtype, tol, b):
    """Scores far below b‖q‖‖k‖ (queries and keys unaligned): L, P K and Pᵀ Q stay exact in float32."""
    g = torch.Generator().manual_seed(0)
    Q = (3 * torch.randn(2, 3, 200, 8, generator=g, dtype=dtype)).requires_grad_(True)
    K = 3 * torch.randn(2, 3, 200, 8, generator=g, dtype=dtype)
    PK, PtQ, L = qk_bisoftmax_sdpa(Q, K, b)
    S = b * Q.double() @ K.double().transpose(-1, -2)
    P = torch.softmax(S, dim=-1)
    for got, want in (
        (PK, P @ K.double()),
        (PtQ, P.transpose(-1, -2) @ Q.double()),
        (L.squeeze(-1), torch.logsumexp(S, -1)),
    ):
        assert (got.double() - want).abs().max() <= tol * want.abs().max()
    (ga,) = torch.autograd.grad((PK.square().sum() + PtQ.square().sum()), Q)
    Qd = Q.detach().double().requires_grad_(True)
    Pd = torch.softmax(b * Qd @ K.double().transpose(-1, -2), dim=-1)
    (gb,) = torch.autograd.grad(((Pd @ K.double()).square().sum() + (Pd.transpose(-1, -2) @ Qd).square().sum()), Qd)
    assert (ga.double() - gb).abs().max() <= 100 * tol * gb.abs().max()


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any torch op produces."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_long_sequences_never_form_an_n_by_n_matrix():
    N = 1024
    step = ea.compile(
        ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2, interaction=ea.QueryKey()), d=8, sdpa_threshold=256
    )
    X = torch.randn(1, N, 8, requires_grad=True)
    with _LargestOutput() as probe:
        out = step(X, 0.1)
        (out.square().sum() + step.energy(X).sum()).backward()
    assert probe.largest < N * N // 4, probe.largest
    dense = ea.compile(step.energy_decl, d=8, sdpa_threshold=4096)
    dense.load_state_dict(step.state_dict())
    with torch.no_grad():
        a, b = step(X, 0.1), dense(X, 0.1)
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()
        assert math.isclose(float(step.energy(X)), float(dense.energy(X)), rel_tol=1e-5)


def test_bad_declarations_are_project_errors():
    with pytest.raises(DeclarationError, match="interaction='query-key'.*ea.QueryKey()"):
        ea.Attention(f="log(x)", K="exp(beta*s)", interaction="query-key")
    with pytest.raises(DeclarationError, match="distance kernel"):
        ea.Attention(f="log(x)", K="exp(-r)", interaction=ea.DiagLowRank(rank=2))


def test_report_and_source_name_the_tying():
    step = ea.compile(ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2, interaction=ea.DiagLowRank(rank=2)), d=8)
    assert "diag-low-rank" in step.report() and "TYING = 'diag-low-rank" in step.source
    assert "qk_bisoftmax_sdpa(Q, K" in step.source and "Phi_q = Q" not in step.source
