"""An interaction is one file: an interaction defined here alone (queries q = RMSNorm(x W_h), keys
k = RMSNorm(x W_h + b_h) with a learned per-head key offset b) compiles for bidirectional and causal attention,
verifies against ``torch.func.grad`` of the declared energy, and trains from a ``[[model.terms]]`` table that names
it, because every name is looked up in the registry."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import energyarch as ea
from energyarch.interactions import INTERACTIONS, Interaction, register_interaction
from energyarch.interactions.base import heads_in, heads_out, sphere
from energyarch.train import TrainConfig, train
from energyarch.verify import declared_qk_energy

from conftest import TINY_TOML


@register_interaction
@dataclass(frozen=True)
class OffsetKey(Interaction):
    """One basis per head; the keys carry a learned offset b_h before the sphere: ∇_x = Σ_h (G_q + G_k) W_hᵀ."""

    kind = "offset-key"
    tying = "query and key share W; key offset b (per head); value = key, output = Wᵀ"

    def make_parameters(self, module) -> None:
        module.weight = nn.Parameter(torch.empty(module.d, module.heads * module.head_dim))
        nn.init.orthogonal_(module.weight)
        module.key_offset = nn.Parameter(0.1 * torch.randn(module.heads, 1, module.head_dim))

    def coords(self, module, X, weight):
        W = module.weight if weight is None else weight
        Q_raw = heads_in(X, W, module.heads)
        K_raw = Q_raw + module.key_offset
        return sphere(Q_raw, module.radius, module.eps), sphere(K_raw, module.radius, module.eps), Q_raw, K_raw

    def pullback(self, module, G_q, G_k, weight):
        W = module.weight if weight is None else weight
        return heads_out(G_q + G_k, W)


def _attention(**kw):
    return ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2, interaction=OffsetKey(), **kw)


def test_the_registry_lists_it():
    assert INTERACTIONS["offset-key"] is OffsetKey


@pytest.mark.parametrize(
    "term",
    [_attention(), ea.CausalAttention(f="log(x)/beta", K="exp(beta*s)", heads=2, interaction=OffsetKey())],
    ids=["bidirectional", "causal"],
)
def test_it_compiles_and_verifies(term):
    step = ea.compile(term, d=8)
    assert "offset-key" in step.report()
    report = ea.verify(step)
    assert report.ok and report.terms[0].grad_rel_diff <= 1e-12, str(report)


def test_exact_mode_step_is_minus_the_gradient_of_the_declared_energy_through_its_coordinates():
    """Independent of the interaction's pullback: ``direction`` in exact mode equals −∇_X of the declared energy
    evaluated at the interaction's coordinates (torch.func.grad through ``coords``), float64."""
    step = ea.compile(_attention(), d=8, mode="exact").to(torch.float64)
    module = step.terms["attn"]
    X = torch.randn(2, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    env = {"beta": float(module.beta), "p": module.head_dim, "M": module.head_dim, "d": module.d}

    def energy(X_):
        Q, K, _, _ = module.query_key(X_)
        return declared_qk_energy(step.energy_decl["attn"], Q, K, env).sum()

    expected = -torch.func.grad(energy)(X).detach()
    got = module.direction(X).detach()
    assert float((got - expected).abs().max()) <= 1e-12 * float(expected.abs().max())


def test_a_config_names_it_and_trains(tmp_path):
    text = (
        TINY_TOML.replace("progress = false", f"progress = false\nout_dir = '{tmp_path / 'run'}'")
        + """
[[model.terms]]
family = "attention"
f = "log(x)/beta"
K = "exp(beta*s)"
interaction = "offset-key"

[[model.terms]]
family = "feedforward"
g = "x"
h = "relu(x)**2/2"
"""
    )
    cfg = TrainConfig.from_toml_string(text)
    summary = train(cfg)
    assert summary["finished"] and math.isfinite(summary["final"]["test_loss"])
    assert 'interaction = "offset-key"' in (tmp_path / "run" / "config.toml").read_text()
