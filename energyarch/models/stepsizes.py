"""Adaptive step sizes α_t, γ_t ∈ R^d per token (Sec. 4.3, Eq. 12, App. D.1, Table 6).

    e_t = Linear(d, d) ∘ GELU ∘ Linear(freq, d) (sinusoid(t))      time embedding, (d,)
    c   = e_t + x                                                  conditioning: x = x(0) or x(t), per token
    [α_t, γ_t, ...] = Linear(d, n_terms·d)(GELU(c))                 last layer zero-initialised

The token enters additively before the last GELU (DiT-style "embedding + condition", Fig. 7), so the layer
sequence is exactly Table 6: Linear(512, d) → GELU → Linear(d, d) → GELU → Linear(d, n_terms·d). With the
last layer zero-initialised every step size is exactly 0 at initialisation, so the recurrent layer starts as
the identity (Bachlechner et al., 2021). ``t`` is a real number in the sinusoid, so iterations beyond the
training range are well defined (test-time extrapolation, Fig. 3b).

>>> import torch
>>> net = StepSizeNet(d=8, names=["attn", "ff"], freq=16)
>>> steps = net(3, torch.randn(2, 5, 8))
>>> steps["attn"].shape, bool((steps["ff"] == 0).all())
(torch.Size([2, 5, 8]), True)
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: float, dim: int, max_period: float = 10000.0, device=None, dtype=None) -> Tensor:
    """Sinusoidal embedding of a scalar iteration index: ``[cos(t ω_k), sin(t ω_k)]``, ω_k = P^(−k/(dim/2))."""
    half = dim // 2
    omega = torch.exp(-math.log(max_period) * torch.arange(half, device=device, dtype=torch.float64) / half)
    angle = float(t) * omega
    return torch.cat([torch.cos(angle), torch.sin(angle)]).to(dtype or torch.get_default_dtype())  # (dim,)


def official_timestep_embedding(t: float, dim: int, max_period: float = 10000.0, device=None, dtype=None) -> Tensor:
    """The official Hyper-SET code's embedding of iteration ``t`` (counted from 0 here, from 1 there):
    ``[sin(τ ω_k), cos(τ ω_k)]`` with τ = t + 1 and ω_k = P^(−k/(dim/2 − 1)), k = 0 … dim/2 − 1.

    >>> e = official_timestep_embedding(0, 4, dtype=torch.float64)    # τ = 1, ω = (1, 1e-4)
    >>> bool(torch.allclose(e, torch.tensor([math.sin(1), math.sin(1e-4), math.cos(1), math.cos(1e-4)], dtype=e.dtype)))
    True
    """
    half = dim // 2
    omega = torch.exp(-math.log(max_period) * torch.arange(half, device=device, dtype=torch.float64) / (half - 1))
    angle = (float(t) + 1.0) * omega
    return torch.cat([torch.sin(angle), torch.cos(angle)]).to(dtype or torch.get_default_dtype())  # (dim,)


#: ``ModelConfig.time_embedding`` → the sinusoid of the iteration index
TIME_EMBEDDINGS = {"energyarch": timestep_embedding, "official": official_timestep_embedding}


class StepSizeNet(nn.Module):
    """Per-token, per-channel step sizes for each term of one recurrent layer, from t and the tokens.

    Args:
        d: token width.
        names: term names; one step vector per term (α for attention, γ for feed-forward).
        freq: width of the sinusoidal time embedding (Table 6: 512).
        embedding: ``'energyarch'`` (:func:`timestep_embedding`) or ``'official'``
            (:func:`official_timestep_embedding`, needed to use the official code's step-size weights).
    """

    def __init__(self, d: int, names: Sequence[str], freq: int = 512, embedding: str = "energyarch"):
        super().__init__()
        self.d, self.names, self.freq = d, list(names), freq
        self.embedding = embedding
        self._sinusoid = TIME_EMBEDDINGS[embedding]
        self.time = nn.Sequential(nn.Linear(freq, d), nn.GELU(), nn.Linear(d, d))
        self.out = nn.Linear(d, len(self.names) * d)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def extra_repr(self) -> str:
        return f"names={self.names}, freq={self.freq}, embedding={self.embedding!r}"

    def forward(self, t: float, X: Tensor) -> dict[str, Tensor]:
        """Step sizes at iteration ``t`` conditioned on tokens ``X`` (B, N, d): name → (B, N, d)."""
        w = self.time[0].weight
        e = self.time(self._sinusoid(t, self.freq, device=w.device, dtype=w.dtype))  # (d,)
        steps = self.out(F.gelu(X + e))  # (B, N, n·d)
        return dict(zip(self.names, steps.split(self.d, dim=-1)))


class FixedSteps(nn.Module):
    """The fixed-step ablation (Table 4): every raw step size is the constant ``value`` (one for all terms, or a
    mapping term name → value); no parameters. Under a positive step rule the layer passes each term's
    ``solver.raw_step(α)`` so that the step size used is α itself, whatever the term's rule.

    >>> FixedSteps(["attn", "ff"], {"attn": 0.1, "ff": -2.0})(0, torch.zeros(1, 2, 3))
    {'attn': 0.1, 'ff': -2.0}
    """

    def __init__(self, names: Sequence[str], value: Union[float, Mapping[str, float]] = 0.1):
        super().__init__()
        self.names = list(names)
        self.values = (
            {n: float(value[n]) for n in self.names}
            if isinstance(value, Mapping)
            else {n: float(value) for n in self.names}
        )

    @property
    def value(self) -> float:
        """The common raw value (the first term's when they differ)."""
        return self.values[self.names[0]]

    def forward(self, t: float, X: Tensor) -> dict[str, float]:
        return dict(self.values)

    def extra_repr(self) -> str:
        if len(set(self.values.values())) == 1:
            return f"value={self.value}"
        return "values={" + ", ".join(f"{n}: {v:.6g}" for n, v in self.values.items()) + "}"
