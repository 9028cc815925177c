"""Pattern: gated feed-forward with shared up/down projections (CEM) ⇒ −∇_X E = D (h'(DᵀX) ⊙ Vᵀx̄)."""

from __future__ import annotations

import sympy as sp

from ...primitives import X
from ..codegen import code
from ..core import Candidate, Pattern, register_pattern


@register_pattern
class GatedElementwiseFF(Pattern):
    name = "gated elementwise FF"
    family = "gated feedforward"
    kinds = ("gated",)
    order = 10
    reason = "E = −Σ h(u) v with the gate v held fixed: −∇_U E = h'(U) ⊙ V (up projection D is the down projection)"

    def match(self, c: Candidate):
        return {}

    def operator(self, c):
        return c.pieces["dh"]

    def latex(self, c, consts):
        dh = sp.latex(c.pieces["dh"].xreplace({X: sp.Symbol(r"\mathbf{U}")}))
        return (
            r"-\nabla_{\mathbf{X}} E = \mathbf{D}\left(%s \odot \mathbf{V}\right),\quad \mathbf{U} = "
            r"\mathbf{D}^\top \mathbf{X},\ \mathbf{V} = \mathbf{W}_v^\top \bar{\mathbf{X}}\ \text{(held fixed)}" % dh
        )

    def grad_lines(self, dv):
        return [f"return -({code(dv.pieces['dh'], X, 'U')}) * V      # ∇_U E = −h'(U) ⊙ V"]
