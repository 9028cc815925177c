"""Pattern: softmax feed-forward. g = a·log, h = c·exp(b u) ⇒ −∇_U E = a b softmax(b U)."""

from __future__ import annotations

import sympy as sp

from ...primitives import X
from ..codegen import log_shift, scaled
from ..core import Candidate, Pattern, constant, lx, register_pattern
from ..feedforward import ff_operator
from ._ff_latex import U_TEX, update


@register_pattern
class SoftmaxFF(Pattern):
    name = "softmax FF"
    family = "feedforward"
    kinds = ("elementwise",)
    order = 30
    reason = "g = a·log, h = c·exp(b u): −∇_U E = a b softmax(b U)"

    def match(self, c: Candidate):
        h, dh = c.pieces["h"], c.pieces["dh"]
        a = constant(X * c.pieces["dg"], X)
        b = constant(dh / h, X) if h != 0 else None
        return None if a is None or b is None or b == 0 else {"a": a, "b": sp.simplify(b)}

    operator = staticmethod(ff_operator)

    def latex(self, c, consts):
        ab, b = sp.simplify(consts["a"] * consts["b"]), consts["b"]
        arg = U_TEX if b == 1 else lx(b) + r"\," + U_TEX
        return update(("" if ab == 1 else lx(ab) + r"\,") + r"\operatorname{softmax}_{\text{col}}(%s)" % arg)

    def grad_lines(self, dv):
        a, b = dv.constants["a"], dv.constants["b"]
        return [f"return {scaled(-a * b, 'torch.softmax(' + scaled(b, 'U') + ', dim=-1)')}"]

    def energy_lines(self, dv):
        a, b = dv.constants["a"], dv.constants["b"]
        c = sp.simplify(dv.pieces["h"] / sp.exp(b * X))
        return [
            f"log_Sigma = torch.logsumexp({scaled(b, 'U')}, dim=-1){log_shift(c)}   # log Σ_m h(u_m), stable",
            f"return -({scaled(a, 'log_Sigma')}).sum(dim=(-1, -2))",
        ]
