"""Diagonal-plus-low-rank interaction: s_ts = x̄_tᵀ (diag(δ_h) + W_Q,h W_K,hᵀ) x̄_s, x̄ = RMSNorm(x).

Written as an inner product of coordinates q_h = [δ_h ⊙ x̄, x̄ W_Q,h] and k_h = [x̄, x̄ W_K,h] (width d + r),
so every kernel κ(q·k) applies; the gradient maps back through the same linear maps, at the normalised x̄.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Interaction, Layer, check_rank, register_interaction


@register_interaction
@dataclass(frozen=True)
class DiagLowRank(Interaction):
    """``delta`` (H, d), ``weight`` = W_Q (d, H·r), ``weight_k`` = W_K (d, H·r); x̄ on the sphere of radius √d."""

    rank: int = 8
    kind = "diag-low-rank"
    tying = "s = x̄ᵀ(diag(δ) + W_Q W_Kᵀ)x̄: value = [x̄, x̄ W_K], output = [diag(δ), W_Q]ᵀ (diagonal plus low rank)"

    def __post_init__(self):
        check_rank(self.rank, "DiagLowRank")

    def coord_dim(self, d: int, heads: int) -> int:
        return d + self.rank

    def make_parameters(self, module: Layer) -> None:
        H, d, r = module.heads, module.d, self.rank
        module.delta = nn.Parameter(torch.ones(H, d) / math.sqrt(d))
        module.weight = nn.Parameter(torch.randn(d, H * r) / math.sqrt(d))
        module.weight_k = nn.Parameter(torch.randn(d, H * r) / math.sqrt(d))

    def _xbar(self, module, X):
        return F.rms_norm(X, (module.d,), eps=module.eps)  # (..., N, d), norm √d

    def coords(self, module, X, weight):
        H, r = module.heads, self.rank
        W_q = module.weight if weight is None else weight
        xbar = self._xbar(module, X).unsqueeze(-3)  # (..., 1, N, d)
        lowq = (self._xbar(module, X) @ W_q).unflatten(-1, (H, r)).transpose(-2, -3)
        lowk = (self._xbar(module, X) @ module.weight_k).unflatten(-1, (H, r)).transpose(-2, -3)
        delta = module.delta.unsqueeze(-2)  # (H, 1, d)
        Q = torch.cat([delta * xbar, lowq], dim=-1)  # (..., H, N, d + r)
        K = torch.cat([xbar.expand_as(delta * xbar), lowk], dim=-1)
        return Q, K, Q, K

    def pullback(self, module, G_q, G_k, weight):
        d = module.d
        W_q = module.weight if weight is None else weight
        diag = (module.delta.unsqueeze(-2) * G_q[..., :d] + G_k[..., :d]).sum(-3)  # (..., N, d)
        low = G_q[..., d:].transpose(-2, -3).flatten(-2) @ W_q.transpose(0, 1) + G_k[..., d:].transpose(-2, -3).flatten(
            -2
        ) @ module.weight_k.transpose(0, 1)
        return diag + low
