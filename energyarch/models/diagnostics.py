"""Diagnostics of the recurrent dynamics (Sec. 5.4, App. D.5): energies, effective rank, average angle.

Both metrics take a set of vectors in rows, ``Z`` of shape ``(..., N, p)`` (the paper writes the same set as
columns of a ``p × N`` matrix; the singular values and angles are the same).

>>> import torch
>>> float(effective_rank(torch.eye(4)))
4.0
>>> round(float(average_angle(torch.eye(3))), 4)
90.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch
from torch import Tensor


def effective_rank(Z: Tensor) -> Tensor:
    """Eq. 17: ``exp(−Σ_i p_i log p_i)`` with ``p_i = σ_i / Σ_j σ_j`` the normalised singular values.

    Z: ``(..., N, p)``; returns ``(...)``. Computed in float64, without gradient.
    """
    with torch.no_grad():
        s = torch.linalg.svdvals(Z.double())  # (..., min(N, p))
        prob = s / s.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        entropy = -torch.special.xlogy(prob, prob).sum(-1)
        return entropy.exp().to(Z.dtype)


def average_angle(Z: Tensor, degrees: bool = True) -> Tensor:
    """Eq. 18: ``arccos`` of the mean pairwise cosine ``x_iᵀx_j / (‖x_i‖‖x_j‖)`` over pairs ``i < j``.

    Z: ``(..., N, p)`` with N ≥ 2; returns ``(...)`` in degrees (radians with ``degrees=False``).
    """
    N = Z.shape[-2]
    if N < 2:
        raise ValueError(f"average_angle needs at least 2 vectors, got N={N}")
    with torch.no_grad():
        U = Z.double()
        U = U / U.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        cos = U @ U.transpose(-1, -2)  # (..., N, N)
        off = (cos.sum((-1, -2)) - cos.diagonal(dim1=-2, dim2=-1).sum(-1)) / (N * (N - 1))  # mean over i ≠ j
        angle = torch.arccos(off.clamp(-1.0, 1.0))
        return (angle * (180.0 / math.pi) if degrees else angle).to(Z.dtype)


@dataclass
class Trace:
    """What a backbone recorded, one entry per iteration (all layers, in order).

    Attributes:
        layer, t: the layer index and the iteration index within that layer of each entry.
        energies: term → ``(n,)`` energy at the iteration's input state, mean over the batch.
        energies_after: term → ``(n,)`` energy after the iteration's step, same weights (descent check).
        effective_rank: subspace family → ``(n, H)`` Eq. 17 per head, mean over the batch.
        angle: subspace family → ``(n, H)`` Eq. 18 per head in degrees, mean over the batch.
    """

    layer: list = field(default_factory=list)
    t: list = field(default_factory=list)
    energies: dict = field(default_factory=dict)
    energies_after: dict = field(default_factory=dict)
    effective_rank: dict = field(default_factory=dict)
    angle: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.t)

    def to_dict(self) -> dict:
        """Plain lists, e.g. for JSON logs."""
        conv = lambda d: {k: v.tolist() for k, v in d.items()}  # noqa: E731
        return {
            "layer": list(self.layer),
            "t": list(self.t),
            "energies": conv(self.energies),
            "energies_after": conv(self.energies_after),
            "effective_rank": conv(self.effective_rank),
            "angle": conv(self.angle),
        }


class TraceRecorder:
    """Accumulates per-iteration records and stacks them into a :class:`Trace`."""

    def __init__(self):
        self._rows: list[dict] = []

    def add(
        self,
        layer: int,
        t: int,
        energies: Optional[Mapping[str, Tensor]] = None,
        energies_after: Optional[Mapping[str, Tensor]] = None,
        coords: Optional[Mapping[str, Tensor]] = None,
    ) -> None:
        """Record one iteration. ``energies``: name → (B,); ``coords``: name → (B, H, N, p) head coordinates."""
        with torch.no_grad():
            row = {
                "layer": layer,
                "t": t,
                "energies": {k: v.detach().float().mean() for k, v in (energies or {}).items()},
                "energies_after": {k: v.detach().float().mean() for k, v in (energies_after or {}).items()},
                "effective_rank": {k: effective_rank(Z.detach().float()).mean(0) for k, Z in (coords or {}).items()},
                "angle": {k: average_angle(Z.detach().float()).mean(0) for k, Z in (coords or {}).items()},
            }
        self._rows.append(row)

    def finish(self) -> Trace:
        rows = self._rows

        def stack(key: str) -> dict:
            return {k: torch.stack([r[key][k] for r in rows]) for k in (rows[0][key] if rows else {})}

        return Trace(
            layer=[r["layer"] for r in rows],
            t=[r["t"] for r in rows],
            energies=stack("energies"),
            energies_after=stack("energies_after"),
            effective_rank=stack("effective_rank"),
            angle=stack("angle"),
        )
