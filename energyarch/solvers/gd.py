"""Gradient descent: ``x ← x + α d`` with ``d = −g`` (the paper's step, Eqs. 9 and 11; the default)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Solver, register_solver


@register_solver("gd")
@dataclass(frozen=True)
class GradientDescent(Solver):
    """``x ← x − α g``; no state.

    >>> import torch
    >>> GradientDescent().update(torch.ones(1, 1, 2), 0.5, {})[0].tolist()
    [[[0.5, 0.5]]]
    """

    def update(self, d, alpha, state):
        return alpha * d, state
