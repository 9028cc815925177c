"""Heavy-ball momentum (Polyak), in two conventions, v and b starting at 0:

    'energyarch'   v ← μ v − α_t g;   x ← x + v          (scale, then accumulate)
    'official'     b ← μ b + g;       x ← x − α_t b      (accumulate raw gradients, scale by the current step:
                                                          the official Hyper-SET code's momentum)

The two agree for a constant step α (then v = −α b); with learned, iteration-dependent steps they differ, so a
model trained with one does not reproduce under the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CompileError
from .base import Solver, _number, register_solver

CONVENTIONS = ("energyarch", "official")


@register_solver("momentum")
@dataclass(frozen=True)
class Momentum(Solver):
    """Heavy ball; the velocity ``v`` (the last increment) is the term's state, and under the official convention
    also the running sum ``b`` of raw directions (the official Sudoku code's 'momentum 0.9').

    >>> import torch
    >>> s = Momentum(momentum=0.5)
    >>> inc, st = s.update(torch.ones(1, 1, 1), 1.0, {})
    >>> float(s.update(torch.ones(1, 1, 1), 1.0, st)[0])      # 0.5 · 1 + 1
    1.5
    >>> o = Momentum(momentum=0.5, convention="official")
    >>> inc, st = o.update(torch.ones(1, 1, 1), 1.0, {})
    >>> float(o.update(torch.ones(1, 1, 1), 2.0, st)[0])      # 2 · (0.5 · 1 + 1); 'energyarch' gives 2.5
    3.0
    """

    momentum: float = 0.9  # μ in [0, 1)
    convention: str = "energyarch"  # 'energyarch' (v ← μ v − α g) | 'official' (b ← μ b + g, x ← x − α b)

    def __post_init__(self):
        super().__post_init__()
        _number(f"solver {self.name!r}", "momentum", self.momentum, 0.0, 1.0)
        if self.convention not in CONVENTIONS:
            raise CompileError(
                f"solver {self.name!r}: convention={self.convention!r}: choose 'energyarch' "
                f"(v ← μ v − α g; x ← x + v) or 'official' (b ← μ b + g; x ← x − α b, the official "
                f"Hyper-SET code's momentum)"
            )

    def update(self, d, alpha, state):
        if self.convention == "official":
            b = state.get("b")
            b = d if b is None else self.momentum * b + d
            v = alpha * b
            return v, {**state, "b": b, "v": v}
        v = state.get("v")
        v = alpha * d if v is None else self.momentum * v + alpha * d
        return v, {**state, "v": v}

    def accept(self, state, scale):
        out = {**state, "v": state["v"] * scale} if "v" in state else dict(state)
        if "b" in out:  # the official running sum: scaled with the increment it produced
            out["b"] = out["b"] * scale
        return out
