"""Interactions: how a term's query and key coordinates come from the tokens, and how their gradients go back.

An interaction is a small registered piece (one file each). With queries q = proj_Q(x) and keys k = proj_K(x)
on their constraint sets, an energy's paper-semantics gradient gives coordinate gradients G_q, G_k; the
interaction's ``pullback`` maps them to token space — which fixes the value and output projections: a layer's
"tying" is derived, not chosen (docs: Concepts, "Interactions").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

from torch import Tensor, nn

from ..errors import DeclarationError
from ..sphere import sphere_norm

INTERACTIONS: dict[str, type["Interaction"]] = {}


class Layer(Protocol):
    """What an interaction reads and sets on the layer that owns it (a :class:`energyarch.runtime.TermUpdate`):
    its sizes and sphere, and the parameters the interaction makes (``delta`` and ``weight_k`` where it has them).
    A protocol because nn.Module types its attributes only as ``Tensor | Module``."""

    d: int
    heads: int
    head_dim: int
    radius: float
    eps: float
    weight: nn.Parameter
    weight_k: nn.Parameter
    delta: nn.Parameter


def register_interaction(cls: type[Interaction]) -> type[Interaction]:
    """Class decorator: register an :class:`Interaction` subclass by its ``kind``."""
    INTERACTIONS[cls.kind] = cls
    return cls


@dataclass(frozen=True)
class Interaction:
    """Base class. Subclasses set ``kind`` and ``tying`` (one line shown in the emitted source and report)."""

    kind = "base"
    tying = ""

    def coord_dim(self, d: int, heads: int) -> int:
        """Width of each head's query/key coordinates."""
        return d // heads

    def make_parameters(self, module: Layer) -> None:
        raise NotImplementedError

    def coords(self, module: Layer, X: Tensor, weight: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(Q, K, Q_raw, K_raw), each (..., H, N, p): constrained coordinates and the raw ones before RMSNorm."""
        raise NotImplementedError

    def pullback(self, module: Layer, G_q: Tensor, G_k: Tensor, weight: Optional[Tensor]) -> Tensor:
        """Token-space gradient Σ_h (G_q,h ∂q_h/∂x + G_k,h ∂k_h/∂x), shape (..., N, d)."""
        raise NotImplementedError


def heads_out(G: Tensor, W: Tensor) -> Tensor:
    """Σ_h G_h W_hᵀ: (..., H, N, p) with W (d, H·p) → (..., N, d)."""
    return G.transpose(-2, -3).flatten(-2) @ W.transpose(0, 1)


def heads_in(X: Tensor, W: Tensor, heads: int) -> Tensor:
    """X W split into heads: (..., N, d) @ (d, H·p) → (..., H, N, p)."""
    Z = X @ W
    return Z.unflatten(-1, (heads, Z.shape[-1] // heads)).transpose(-2, -3)


def sphere(Z_raw: Tensor, radius: float, eps: float) -> Tensor:
    """RMSNorm without gain, scaled to the sphere of radius R (Eq. 8): :func:`energyarch.sphere.sphere_norm`."""
    return sphere_norm(Z_raw, radius, eps)


def check_rank(rank, where: str) -> int:
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise DeclarationError(f"{where}: rank={rank!r} must be a positive integer (the low-rank width per head)")
    return rank
