"""Embeddings and readouts around a backbone (App. D.2, D.3).

- tokens (Sudoku): ``Embedding(vocab, d)`` + learnable positional encoding (Table 8);
- images: non-overlapping patches → Linear (a strided convolution), a learnable class token, and a fixed
  sinusoidal positional encoding over the sequence [CLS, patch_1, ..., patch_n] (Table 10);
- readouts: RMSNorm then Linear to ``num_outputs``, per token, or on the class token.

>>> import torch
>>> emb = TokenEmbedding(vocab_size=10, seq_len=81, d=16)
>>> emb(torch.zeros(2, 81, dtype=torch.long)).shape
torch.Size([2, 81, 16])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ShapeError


def sinusoidal_positions(n: int, d: int) -> Tensor:
    """Absolute sinusoidal positional encoding (Vaswani et al., 2017), shape ``(n, d)``."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    omega = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, dtype=torch.float64) / d)
    pe = torch.zeros(n, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * omega)
    pe[:, 1::2] = torch.cos(pos * omega[: d // 2])
    return pe.to(torch.get_default_dtype())


class TokenEmbedding(nn.Module):
    """Integer ids ``(B, N)`` → tokens ``(B, N[+1], d)`` with a learnable positional encoding.

    With ``causal`` (language modelling) ``seq_len`` is the longest context and any 1 <= N <= seq_len is
    accepted (positions 0..N-1), so that generation can start from a short prompt.
    """

    def __init__(self, vocab_size: int, seq_len: int, d: int, cls: bool = False, causal: bool = False):
        super().__init__()
        self.seq_len, self.causal = seq_len, causal
        self.embed = nn.Embedding(vocab_size, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02) if cls else None
        self.pos = nn.Parameter(torch.randn(1, seq_len + cls, d) * 0.02)

    def forward(self, ids: Tensor) -> Tensor:
        n = ids.shape[-1] if ids.dim() else 0
        if (
            ids.dim() != 2
            or ids.dtype not in (torch.long, torch.int32)
            or not (1 <= n <= self.seq_len if self.causal else n == self.seq_len)
        ):
            expected = f"(B, N) with 1 <= N <= {self.seq_len}" if self.causal else f"(B, {self.seq_len})"
            raise ShapeError(
                f"token inputs: got {ids.dtype} of shape {tuple(ids.shape)}; expected integer ids of shape {expected}"
            )
        X = self.embed(ids)  # (B, N, d)
        if self.cls is not None:
            X = torch.cat([self.cls.expand(X.shape[0], -1, -1), X], dim=1)
        return X + self.pos[:, : X.shape[1]]


class PatchEmbedding(nn.Module):
    """Images ``(B, C, H, W)`` → tokens ``(B, n[+1], d)``: patches, class token, sinusoidal positions."""

    def __init__(self, image_shape: tuple, patch_size: int, d: int, cls: bool = True):
        super().__init__()
        C, H, W = image_shape
        self.image_shape = tuple(image_shape)
        self.proj = nn.Conv2d(C, d, kernel_size=patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02) if cls else None
        n = (H // patch_size) * (W // patch_size) + cls
        self.register_buffer("pos", sinusoidal_positions(n, d)[None], persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
            expected = ", ".join(map(str, self.image_shape))
            raise ShapeError(f"image inputs: got shape {tuple(images.shape)}; expected (B, {expected})")
        X = self.proj(images).flatten(2).transpose(1, 2)  # (B, n, d)
        if self.cls is not None:
            X = torch.cat([self.cls.expand(X.shape[0], -1, -1), X], dim=1)
        return X + self.pos.to(X.dtype)


class TokenReadout(nn.Module):
    """Per-token logits: RMSNorm → Linear(d, C); ``(B, N, d) → (B, N, C)``."""

    def __init__(self, d: int, num_outputs: int):
        super().__init__()
        self.norm = nn.RMSNorm(d)
        self.linear = nn.Linear(d, num_outputs, bias=False)

    def forward(self, X: Tensor) -> Tensor:
        return self.linear(self.norm(X))


class ClsReadout(nn.Module):
    """Class-token logits: RMSNorm → Linear(d, C) on token 0; ``(B, N, d) → (B, C)``."""

    def __init__(self, d: int, num_outputs: int):
        super().__init__()
        self.norm = nn.RMSNorm(d)
        self.linear = nn.Linear(d, num_outputs, bias=False)

    def forward(self, X: Tensor) -> Tensor:
        return self.linear(self.norm(X[:, 0]))
