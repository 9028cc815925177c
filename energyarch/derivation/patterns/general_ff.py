"""Pattern: any g, h ⇒ −∇_U E = g'(Σ_m h(u_m)) ⊙ h'(U)."""

from __future__ import annotations

import sympy as sp

from ...primitives import X
from ..codegen import code
from ..core import Candidate, Pattern, register_pattern
from ..feedforward import ff_operator
from ._ff_latex import of_U, update, with_U


@register_pattern
class GeneralFF(Pattern):
    name = "general FF"
    family = "feedforward"
    kinds = ("elementwise",)
    order = 90
    reason = "−∇_U E = g'(Σ_m h(u_m)) ⊙ h'(U)"

    def match(self, c: Candidate):
        return {}

    operator = staticmethod(ff_operator)

    def latex(self, c, consts):
        sigma = sp.Symbol(r"\mathbf{1}^\top " + of_U(c.pieces["h"]))
        return update(
            with_U(r"\left[%s\right] \odot %s" % (sp.latex(c.pieces["dg"].xreplace({X: sigma})), of_U(c.pieces["dh"])))
        )

    def grad_lines(self, dv):
        dh = code(dv.pieces["dh"], X, "U")
        return [
            f"Sigma = ({code(dv.pieces['h'], X, 'U')}).sum(dim=-1, keepdim=True)   # Σ_m h(u_m)",
            f"return -({code(dv.pieces['dg'], X, 'Sigma')}) * ({dh})",
        ]
