"""CRATE baseline (Yu et al., 2023), built here, in the same harness; weights shared across iterations.

One iteration (row-token convention, Z ∈ R^{N×d}, heads U_k ∈ R^{d×p} shared for query, key and value)::

    W_k    = LN₁(Z) U_k                                                        (B, H, N, p)
    Z½     = Z + κ Σ_k softmax(W_k W_kᵀ / √p) W_k U_kᵀ                          MSSA step (compression)
    X      = LN₂(Z½)
    Z'     = ReLU(X + η (X D − X Dᵀ D) − η λ)                                  one ISTA step (sparsification)

the row form of the column-convention ISTA step ``ReLU(z + η Dᵀ(z − D z) − η λ)`` (D as in CRATE's code).
κ = 1, η = 0.1, λ = 0.1
(the values of CRATE's released code).

>>> import torch
>>> from energyarch.models import ModelConfig
>>> CRATE(ModelConfig(arch="crate", d=16, heads=2, iters=2))(torch.randn(2, 5, 16)).shape
torch.Size([2, 5, 16])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .transformer import SharedWeightStack

KAPPA, ETA, LAMBDA = 1.0, 0.1, 0.1


class CRATEBlock(nn.Module):
    """MSSA (shared U for q, k, v and the output) followed by one ISTA step with dictionary D."""

    def __init__(self, d: int, heads: int, kappa: float = KAPPA, eta: float = ETA, lam: float = LAMBDA):
        super().__init__()
        self.heads, self.kappa, self.eta, self.lam = heads, kappa, eta, lam
        self.norm1 = nn.LayerNorm(d)
        self.U = nn.Parameter(torch.empty(d, d))  # [U_1, ..., U_H], each d × p
        self.norm2 = nn.LayerNorm(d)
        self.D = nn.Parameter(torch.empty(d, d))
        nn.init.orthogonal_(self.U)
        nn.init.kaiming_uniform_(self.D, a=math.sqrt(5))

    def subspace_coords(self, Z: Tensor) -> Tensor:
        """``LN₁(Z) U_k`` per head, (B, H, N, p)."""
        return (self.norm1(Z) @ self.U).unflatten(-1, (self.heads, -1)).transpose(-2, -3)

    def head_coords(self, Z: Tensor) -> dict[str, Tensor]:
        """The diagnostics' per-head coordinates: ``{"attn": LN₁(Z) U_k}``."""
        return {"attn": self.subspace_coords(Z)}

    def mssa(self, Z: Tensor) -> Tensor:
        W = self.subspace_coords(Z)
        out = F.scaled_dot_product_attention(W, W, W)  # (B, H, N, p), scale 1/√p
        return out.transpose(-2, -3).flatten(-2) @ self.U.T  # (B, N, d)

    def ista(self, X: Tensor) -> Tensor:
        return torch.relu(X + self.eta * (X @ self.D - (X @ self.D.T) @ self.D) - self.eta * self.lam)

    def forward(self, Z: Tensor) -> Tensor:
        Z = Z + self.kappa * self.mssa(Z)
        return self.ista(self.norm2(Z))


class CRATE(SharedWeightStack):
    """L distinct CRATE blocks, each applied ``iters`` times; diagnostics on ``LN(Z) U_k``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__((CRATEBlock(cfg.d, cfg.heads) for _ in range(cfg.layers)), cfg.iters)
