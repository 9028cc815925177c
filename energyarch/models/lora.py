"""Depth-wise LoRA (App. G.2): one low-rank adaptation of every term's basis per iteration.

    W_t = W + s · A_t B_t,     A_t ∈ R^{d×r},  B_t ∈ R^{r×(H·p or M)},  A, B ~ N(0, 0.02²),  s = 4

trained together with the shared base W. Iterations beyond the trained range (test-time extrapolation)
reuse the last adapter A_{T−1} B_{T−1}.

>>> lora = DepthLoRA({"attn": (8, 8), "ff": (8, 32)}, iters=4, rank=2)
>>> sum(p.numel() for p in lora.parameters()) == 4 * 2 * ((8 + 8) + (8 + 32))
True
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn


class DepthLoRA(nn.Module):
    """Per-iteration low-rank deltas for a set of bases.

    Args:
        shapes: term name → basis shape ``(d, cols)``.
        iters: number of adapters T (one per training iteration).
        rank: r.
        scale: s.
        std: initial standard deviation of A and B.
    """

    def __init__(self, shapes: Mapping[str, tuple], iters: int, rank: int, scale: float = 4.0, std: float = 0.02):
        super().__init__()
        self.iters, self.rank, self.scale = iters, rank, float(scale)
        self.A = nn.ParameterDict({n: nn.Parameter(torch.randn(iters, d, rank) * std) for n, (d, _) in shapes.items()})
        self.B = nn.ParameterDict({n: nn.Parameter(torch.randn(iters, rank, c) * std) for n, (_, c) in shapes.items()})

    def weights(self, t: int, base: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``W_t`` for every term at iteration ``t`` (clamped to the last adapter beyond the trained range)."""
        k = min(int(t), self.iters - 1)
        return {n: W + self.scale * (self.A[n][k] @ self.B[n][k]) for n, W in base.items()}

    def extra_repr(self) -> str:
        return f"iters={self.iters}, rank={self.rank}, scale={self.scale}"
