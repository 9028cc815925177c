"""Pattern: g linear ⇒ −∇_U E = a h'(U), one elementwise map."""

from __future__ import annotations

from ...primitives import X
from ..codegen import code, scaled
from ..core import Candidate, Pattern, constant, lx, register_pattern
from ..feedforward import ff_operator
from ._ff_latex import of_U, update, with_U


@register_pattern
class ElementwiseFF(Pattern):
    name = "elementwise FF"
    family = "feedforward"
    kinds = ("elementwise",)
    order = 20
    reason = "g linear: −∇_U E = a h'(U), elementwise"

    def match(self, c: Candidate):
        a = constant(c.pieces["dg"], X)
        return None if a is None else {"a": a}

    operator = staticmethod(ff_operator)

    def latex(self, c, consts):
        a = consts["a"]
        return update(with_U(("" if a == 1 else lx(a) + r"\,") + of_U(c.pieces["dh"])))

    def grad_lines(self, dv):
        return [f"return {scaled(-dv.constants['a'], '(' + code(dv.pieces['dh'], X, 'U') + ')')}"]
