"""Vanilla Transformer baseline in the same harness (Sec. 5): pre-norm RMSNorm, no bias, no dropout,
MLP ratio 4, SDPA attention; L distinct blocks, each applied T times with shared weights.

    X ← X + Attn(RMSNorm(X))
    X ← X + W₂ GELU(W₁ RMSNorm(X))

With ``causal=True`` attention is masked (token t attends to tokens ≤ t, ``is_causal=True`` in SDPA): with
T = 1 this is the GPT-style pre-norm decoder, the language-modelling baseline.

>>> import torch
>>> from energyarch.models import ModelConfig
>>> Transformer(ModelConfig(arch="transformer", d=16, heads=2, iters=2))(torch.randn(2, 5, 16)).shape
torch.Size([2, 5, 16])
"""

from __future__ import annotations

from typing import Iterable, Optional, cast

import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .diagnostics import TraceRecorder

MLP_RATIO = 4


class SelfAttention(nn.Module):
    """Multi-head self-attention without bias, via ``F.scaled_dot_product_attention`` (causal mask if asked)."""

    def __init__(self, d: int, heads: int, causal: bool = False):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)

    def split(self, X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.qkv(X).chunk(3, dim=-1)  # (B, N, d) each
        return tuple(z.unflatten(-1, (self.heads, -1)).transpose(-2, -3) for z in (q, k, v))  # (B, H, N, p)

    def forward(self, X: Tensor) -> Tensor:
        q, k, v = self.split(X)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, N, p)
        return self.proj(out.transpose(-2, -3).flatten(-2))


class Block(nn.Module):
    """Pre-norm Transformer block (RMSNorm with learnable gain, no bias anywhere)."""

    def __init__(self, d: int, heads: int, causal: bool = False):
        super().__init__()
        self.norm1 = nn.RMSNorm(d)
        self.attn = SelfAttention(d, heads, causal)
        self.norm2 = nn.RMSNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, MLP_RATIO * d, bias=False), nn.GELU(), nn.Linear(MLP_RATIO * d, d, bias=False)
        )

    def head_coords(self, X: Tensor) -> dict[str, Tensor]:
        """Per-head query coordinates of the normalised tokens, for the diagnostics: (B, H, N, p)."""
        return {"attn": self.attn.split(self.norm1(X))[0]}

    def forward(self, X: Tensor) -> Tensor:
        X = X + self.attn(self.norm1(X))
        return X + self.mlp(self.norm2(X))


class SharedWeightStack(nn.Module):
    """L distinct blocks, each applied ``iters`` times with shared weights (the recurrent depth of Sec. 4.3).

    A block maps X to the next X and offers ``head_coords(X) -> {term: (B, H, N, p)}`` for the diagnostics.
    """

    def __init__(self, blocks, iters: int):
        super().__init__()
        self.iters = iters
        self.layers = nn.ModuleList(blocks)

    def forward(self, X: Tensor, iters: Optional[int] = None, record: bool = False):
        """Returns X, or ``(X, Trace)`` with per-head diagnostics (no energies) when ``record``."""
        iters = self.iters if iters is None else iters
        recorder = TraceRecorder() if record else None
        for index, block in enumerate(cast(Iterable[Block], self.layers)):
            for t in range(iters):
                if recorder is not None:
                    recorder.add(index, t, coords=block.head_coords(X))
                X = block(X)
        return (X, recorder.finish()) if recorder is not None else X


class Transformer(SharedWeightStack):
    """L distinct pre-norm blocks, each applied ``iters`` times with shared weights; ``causal`` masks attention."""

    def __init__(self, cfg: ModelConfig, causal: bool = False):
        super().__init__((Block(cfg.d, cfg.heads, causal) for _ in range(cfg.layers)), cfg.iters)
        self.causal = causal
