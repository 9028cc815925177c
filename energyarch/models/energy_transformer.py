"""Energy Transformer baseline (Hoover et al., 2023), built here from its energy, in the same harness.

The energy is a function of the layer-normalised tokens ``g = LN(x)`` (per layer, weights shared across t)::

    E_ATT(g) = −(1/β) Σ_h Σ_C log Σ_B exp(β k_hBᵀ q_hC),   k_hB = W^K_h g_B,  q_hC = W^Q_h g_C   (separate K, Q)
    E_HN(g)  = −½ Σ_A Σ_μ ReLU(ξ_μᵀ g_A)²                                                          (Hopfield)

and the tokens descend it with a fixed step: ``x ← x − α ∇_g E(g)`` (ET's dynamics: the update uses the
gradient with respect to g, the LayerNorm being the Lagrangian's activation). The gradient is derived by
``torch.func.grad`` — never written by hand — so training backpropagates through it. β = 1/√p. The sum over B
includes B = C (the brief's and this harness's convention; ET's code optionally masks the diagonal).

>>> import torch
>>> from energyarch.models import ModelConfig
>>> et = EnergyTransformer(ModelConfig(arch="energy_transformer", d=16, heads=2, iters=2))
>>> et(torch.randn(2, 5, 16)).shape
torch.Size([2, 5, 16])
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, cast

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .diagnostics import TraceRecorder


class EnergyTransformerLayer(nn.Module):
    """One ET block: LayerNorm, attention energy with K/Q projections, Hopfield energy with memories ξ."""

    def __init__(self, d: int, heads: int, memories: int, step: float, std: float = 0.02):
        super().__init__()
        self.heads, self.head_dim, self.step = heads, d // heads, float(step)
        self.beta = 1.0 / math.sqrt(self.head_dim)
        self.norm = nn.LayerNorm(d)
        self.Wq = nn.Parameter(torch.randn(heads, self.head_dim, d) * std)
        self.Wk = nn.Parameter(torch.randn(heads, self.head_dim, d) * std)
        self.xi = nn.Parameter(torch.randn(memories, d) * std)

    def queries(self, g: Tensor) -> Tensor:
        return torch.einsum("bnd,hpd->bhnp", g, self.Wq)  # (B, H, N, p)

    def energies_g(self, g: Tensor) -> dict[str, Tensor]:
        """Each term's energy as a function of g (B, N, d): name → (B,)."""
        q = self.queries(g)
        k = torch.einsum("bnd,hpd->bhnp", g, self.Wk)  # (B, H, N, p)
        scores = self.beta * (k @ q.transpose(-1, -2))  # (B, H, N_B, N_C)
        e_att = -torch.logsumexp(scores, dim=-2).sum((-1, -2)) / self.beta
        e_hn = -0.5 * torch.relu(g @ self.xi.T).pow(2).sum((-1, -2))  # (B,)
        return {"attn": e_att, "hopfield": e_hn}

    def energy_g(self, g: Tensor) -> Tensor:
        """Total energy summed over the batch (the scalar that ``torch.func.grad`` differentiates)."""
        return cast(Tensor, sum(self.energies_g(g).values())).sum()

    def energies(self, X: Tensor) -> dict[str, Tensor]:
        return self.energies_g(self.norm(X))

    def forward(self, X: Tensor) -> Tensor:
        g = self.norm(X)  # (B, N, d)
        return X - self.step * torch.func.grad(self.energy_g)(g)


class EnergyTransformer(nn.Module):
    """L distinct ET layers, each applied ``iters`` times. Memories: M = ff_ratio · d; step: ``fixed_step``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.iters = cfg.iters
        M = max(1, int(round(cfg.ff_ratio * cfg.d)))
        self.layers = nn.ModuleList(
            EnergyTransformerLayer(cfg.d, cfg.heads, M, cfg.fixed_step) for _ in range(cfg.layers)
        )

    def forward(self, X: Tensor, iters: Optional[int] = None, record: bool = False):
        """Returns X, or ``(X, Trace)`` with energies and per-head query diagnostics when ``record``."""
        iters = self.iters if iters is None else iters
        recorder = TraceRecorder() if record else None
        for index, layer in enumerate(cast(Iterable[EnergyTransformerLayer], self.layers)):
            for t in range(iters):
                if recorder is None:
                    X = layer(X)
                    continue
                before, coords = layer.energies(X), {"attn": layer.queries(layer.norm(X))}
                X = layer(X)
                recorder.add(index, t, before, layer.energies(X), coords)
        return (X, recorder.finish()) if recorder is not None else X
