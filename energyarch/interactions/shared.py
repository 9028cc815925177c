"""Hyper-SET's interaction: one basis per head, Q = K = V = W_h; the output projection is W_hᵀ."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import Interaction, Layer, heads_in, heads_out, register_interaction, sphere


@register_interaction
@dataclass(frozen=True)
class SharedBasis(Interaction):
    """z = RMSNorm(x W_h) for both roles; ∇_x = Σ_h (G_q + G_k) W_hᵀ.

    >>> SharedBasis().tying
    'one basis per head: Q = K = V = W_h, output W_hᵀ (Hyper-SET)'
    """

    kind = "shared"
    tying = "one basis per head: Q = K = V = W_h, output W_hᵀ (Hyper-SET)"

    def make_parameters(self, module: Layer) -> None:
        module.weight = nn.Parameter(torch.empty(module.d, module.heads * module.head_dim))
        nn.init.orthogonal_(module.weight)

    def coords(self, module, X, weight):
        W = module.weight if weight is None else weight
        Z_raw = heads_in(X, W, module.heads)
        Z = sphere(Z_raw, module.radius, module.eps)
        return Z, Z, Z_raw, Z_raw

    def pullback(self, module, G_q, G_k, weight):
        W = module.weight if weight is None else weight
        return heads_out(G_q + G_k, W)
