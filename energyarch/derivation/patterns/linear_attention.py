"""Pattern: linear attention. f linear, κ quadratic in s ⇒ C Φ = 2a(2c₂ Φ(ΦᵀΦ) + c₁ 1(1ᵀΦ)), O(N p²)."""

from __future__ import annotations

import sympy as sp

from ...primitives import X
from ..codegen import phi_lines, scaled
from ..core import SJ, SK, Candidate, Pattern, lx, register_pattern
from ._match import linear_and_quadratic
from ._attention_latex import phi_symbols, update


@register_pattern
class LinearAttention(Pattern):
    name = "linear attention"
    family = "attention"
    kinds = ("inner",)
    order = 20
    reason = "f linear and κ quadratic in s: C Φ = 2a(2c₂ Φ(ΦᵀΦ) + c₁ 1(1ᵀΦ)) in O(N p²)"

    def match(self, c: Candidate):
        return linear_and_quadratic(c.pieces["df"], c.pieces["kappa"])

    def operator(self, c):
        return (c.pieces["df"].xreplace({X: SK}) + c.pieces["df"].xreplace({X: SJ})) * c.pieces["dkappa"]

    def latex(self, c, consts):
        Phi, wrap = phi_symbols(c.pieces)
        a, c1, c2 = consts["a"], consts["c1"], consts["c2"]
        parts = []
        if c2 != 0:
            coef = sp.simplify(4 * a * c2)
            parts.append(("" if coef == 1 else lx(coef) + r"\, ") + r"%s %s^\top %s" % (Phi, Phi, Phi))
        if c1 != 0:
            coef = sp.simplify(2 * a * c1)
            parts.append(("" if coef == 1 else lx(coef) + r"\, ") + r"%s \mathbf{1}\mathbf{1}^\top" % Phi)
        return update(wrap(" + ".join(parts) or "0"))

    def grad_lines(self, dv):
        a, c1, c2 = dv.constants["a"], dv.constants["c1"], dv.constants["c2"]
        terms = []
        if sp.simplify(c2) != 0:
            terms.append(scaled(4 * a * c2, "Phi @ (Phi.transpose(-1, -2) @ Phi)"))
        if sp.simplify(c1) != 0:
            terms.append(scaled(2 * a * c1, "Phi.sum(dim=-2, keepdim=True)"))
        body = " + ".join(terms) or "torch.zeros_like(Phi)"
        out = f"return dPhi * ({body})" if dv.term.K.phi is not None else f"return {body}"
        return [*phi_lines(dv, with_derivative=True), "# C Φ by associativity: O(N p²), no N×N matrix", out]
