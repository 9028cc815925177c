"""RMSProp: ``s ← ρ s + (1 − ρ) g²;  x ← x − α g / (√s + ε)``, s starting at 0 (no bias correction)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Solver, _number, register_solver


@register_solver("rmsprop")
@dataclass(frozen=True)
class RMSProp(Solver):
    """Diagonally preconditioned steps; the second moment ``s`` is the term's state. ρ = 0.8 follows the
    official Hyper-SET Sudoku code's RMSProp (η = 0.8).

    >>> import torch
    >>> inc, st = RMSProp(rho=0.75, eps=1e-300).update(torch.full((1, 1, 1), 2.0), 1.0, {})
    >>> float(inc), float(st["s"])                           # s = 0.25 · 4; Δ = 2 / √1
    (2.0, 1.0)
    """

    rho: float = 0.8  # decay ρ of the second moment, in [0, 1)
    eps: float = 1e-8  # ε added to √s

    def __post_init__(self):
        super().__post_init__()
        _number(f"solver {self.name!r}", "rho", self.rho, 0.0, 1.0)
        _number(f"solver {self.name!r}", "eps", self.eps, 0.0, float("inf"), lo_open=True)  # ε = 0: 0/0 at d = 0

    def update(self, d, alpha, state):
        s = state.get("s")
        sq = d * d
        s = (1 - self.rho) * sq if s is None else self.rho * s + (1 - self.rho) * sq
        return alpha * d / (s.sqrt() + self.eps), {**state, "s": s}
