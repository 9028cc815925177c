"""Adam with bias correction: ``m ← β₁ m + (1−β₁) g;  s ← β₂ s + (1−β₂) g²;  x ← x − α m̂ / (√ŝ + ε)``,
``m̂ = m / (1 − β₁ᵏ)``, ``ŝ = s / (1 − β₂ᵏ)`` at the k-th update (Kingma & Ba, 2015)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Solver, _number, register_solver


@register_solver("adam")
@dataclass(frozen=True)
class Adam(Solver):
    """First and second moments and the update count ``k`` are the term's state; (β₁, β₂) = (0.9, 0.96) follow
    the official Hyper-SET Sudoku code's Adam.

    >>> import torch
    >>> inc, st = Adam(eps=1e-12).update(torch.full((1, 1, 1), -3.0), 0.1, {})
    >>> round(float(inc), 6), st["k"]                       # first step: α · sign(d)
    (-0.1, 1)
    """

    beta1: float = 0.9  # decay β₁ of the first moment, in [0, 1)
    beta2: float = 0.96  # decay β₂ of the second moment, in [0, 1)
    eps: float = 1e-8  # ε added to √ŝ

    def __post_init__(self):
        super().__post_init__()
        owner = f"solver {self.name!r}"
        _number(owner, "beta1", self.beta1, 0.0, 1.0)
        _number(owner, "beta2", self.beta2, 0.0, 1.0)
        _number(owner, "eps", self.eps, 0.0, float("inf"), lo_open=True)  # ε = 0: 0/0 on a zero gradient

    def update(self, d, alpha, state):
        m, s, k = state.get("m"), state.get("s"), state.get("k", 0) + 1
        m = (1 - self.beta1) * d if m is None else self.beta1 * m + (1 - self.beta1) * d
        s = (1 - self.beta2) * d * d if s is None else self.beta2 * s + (1 - self.beta2) * d * d
        m_hat = m / (1 - self.beta1**k)
        s_hat = s / (1 - self.beta2**k)
        return alpha * m_hat / (s_hat.sqrt() + self.eps), {**state, "m": m, "s": s, "k": k}
