"""Nesterov's accelerated gradient: ``v ← μ v − α g(x + μ v);  x ← x + v``."""

from __future__ import annotations

from dataclasses import dataclass

from .base import register_solver
from .momentum import Momentum


@register_solver("nesterov")
@dataclass(frozen=True)
class Nesterov(Momentum):
    """Heavy ball whose direction is evaluated at the look-ahead point ``x + μ v`` (:meth:`shift`).

    >>> import torch
    >>> Nesterov(momentum=0.5).shift({"v": torch.ones(1)}).tolist()
    [0.5]
    """

    def shift(self, state):
        v = state.get("v")
        return None if v is None else self.momentum * v
