"""Pattern: gated feed-forward (Table 20). g = a x²/2 ⇒ −∇_U E = a (Σ_m h(u_m)) ⊙ h'(U)."""

from __future__ import annotations

from ...primitives import X
from ..codegen import code, scaled
from ..core import Candidate, Pattern, constant, lx, register_pattern
from ..feedforward import ff_operator
from ._ff_latex import of_U, update, with_U


@register_pattern
class GatedFF(Pattern):
    name = "gated FF"
    family = "feedforward"
    kinds = ("elementwise",)
    order = 40
    reason = "g = a x²/2: −∇_U E = a (Σ_m h(u_m)) ⊙ h'(U)"

    def match(self, c: Candidate):
        dg = c.pieces["dg"]
        a = constant(dg / X, X) if dg != 0 else None
        return None if a is None else {"a": a}

    operator = staticmethod(ff_operator)

    def latex(self, c, consts):
        a = consts["a"]
        hsum = r"\mathbf{1}\mathbf{1}^\top %s" % of_U(c.pieces["h"])
        return update(
            with_U(("" if a == 1 else lx(a) + r"\,") + r"\left(%s\right) \odot %s" % (hsum, of_U(c.pieces["dh"])))
        )

    def grad_lines(self, dv):
        dh = code(dv.pieces["dh"], X, "U")
        return [
            f"Sigma = ({code(dv.pieces['h'], X, 'U')}).sum(dim=-1, keepdim=True)   # Σ_m h(u_m)",
            f"return {scaled(-dv.constants['a'], 'Sigma * (' + dh + ')')}",
        ]
