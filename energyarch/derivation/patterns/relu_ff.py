"""Pattern: ReLU feed-forward (Eq. 11). g linear, h' = c·ReLU ⇒ −∇_U E = a c ReLU(U)."""

from __future__ import annotations

import sympy as sp

from ...expr import relu
from ...primitives import X
from ..codegen import scaled
from ..core import Candidate, Pattern, constant, lx, register_pattern
from ..feedforward import ff_operator
from ._ff_latex import U_TEX, update


@register_pattern
class ReluFF(Pattern):
    name = "ReLU FF"
    family = "feedforward"
    kinds = ("elementwise",)
    order = 10
    reason = "g linear, h' = c·ReLU: −∇_U E = a c ReLU(U)"

    def match(self, c: Candidate):
        a = constant(c.pieces["dg"], X)
        if a is None:
            return None
        k = constant(c.pieces["dh"] / relu(X), X)
        return None if k is None or k == 0 else {"a": a, "c": k}

    operator = staticmethod(ff_operator)

    def latex(self, c, consts):
        ac = sp.simplify(consts["a"] * consts["c"])
        return update(("" if ac == 1 else lx(ac) + r"\,") + r"\operatorname{ReLU}(%s)" % U_TEX)

    def grad_lines(self, dv):
        return [f"return {scaled(-dv.constants['a'] * dv.constants['c'], 'torch.relu(U)')}"]
