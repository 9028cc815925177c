"""Separate query and key projections, with the tying the gradient implies (CEM's weight-tied attention).

With q = RMSNorm(x W_Q,h), k = RMSNorm(x W_K,h) and K(x_t, x_s) = κ(q_t·k_s), the paper-semantics gradient of
token t's conditional energy is ``W_Q,h Σ_s f'(S_t) κ'(q_t·k_s) k_s + W_K,h f'(S_t) κ'(q_t·k_t) q_t``: the
value is the key projection and the output is the query projection's transpose (docs: Concepts, "Interactions").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import Interaction, Layer, heads_in, heads_out, register_interaction, sphere


@register_interaction
@dataclass(frozen=True)
class QueryKey(Interaction):
    """Two bases per head: ``weight`` = W_Q, ``weight_k`` = W_K; ∇_x = Σ_h (G_q W_Q,hᵀ + G_k W_K,hᵀ)."""

    kind = "query-key"
    tying = "query W_Q, key W_K; value = key projection (k_s), output = W_Qᵀ; self-term output W_Kᵀ (CEM tying)"

    def make_parameters(self, module: Layer) -> None:
        module.weight = nn.Parameter(torch.empty(module.d, module.heads * module.head_dim))
        module.weight_k = nn.Parameter(torch.empty(module.d, module.heads * module.head_dim))
        nn.init.orthogonal_(module.weight)
        nn.init.orthogonal_(module.weight_k)

    def coords(self, module, X, weight):
        W_q = module.weight if weight is None else weight
        Q_raw, K_raw = heads_in(X, W_q, module.heads), heads_in(X, module.weight_k, module.heads)
        return sphere(Q_raw, module.radius, module.eps), sphere(K_raw, module.radius, module.eps), Q_raw, K_raw

    def pullback(self, module, G_q, G_k, weight):
        W_q = module.weight if weight is None else weight
        return heads_out(G_q, W_q) + heads_out(G_k, module.weight_k)
