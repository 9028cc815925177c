"""Heavy-ball momentum (Polyak): ``v ← μ v − α g;  x ← x + v``, v starting at 0."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Solver, _number, register_solver


@register_solver("momentum")
@dataclass(frozen=True)
class Momentum(Solver):
    """Heavy ball; the velocity ``v`` is the term's state (the official Sudoku code's 'momentum 0.9').

    >>> import torch
    >>> s = Momentum(momentum=0.5)
    >>> inc, st = s.update(torch.ones(1, 1, 1), 1.0, {})
    >>> float(s.update(torch.ones(1, 1, 1), 1.0, st)[0])      # 0.5 · 1 + 1
    1.5
    """

    momentum: float = 0.9  # μ in [0, 1)

    def __post_init__(self):
        super().__post_init__()
        _number(f"solver {self.name!r}", "momentum", self.momentum, 0.0, 1.0)

    def update(self, d, alpha, state):
        v = state.get("v")
        v = alpha * d if v is None else self.momentum * v + alpha * d
        return v, {**state, "v": v}

    def accept(self, state, scale):
        return {**state, "v": state["v"] * scale} if "v" in state else state
