"""Pattern: causal linear attention. f = a x + f₀, κ = c₀ + c₁ s + c₂ s² ⇒ prefix sums, O(N p²), never N×N::

∂E_t/∂q_t = a [c₁ Σ_{s≤t} Φ(k_s) + 2c₂ (Σ_{s≤t} Φ(k_s)Φ(k_s)ᵀ) Φ(q_t)],   ∂E_t/∂k_t = a κ'(s_tt) Φ(q_t)
"""

from __future__ import annotations

import sympy as sp

from ...primitives import S, X
from ..causal import qk_phi_lines
from ..codegen import code, scaled
from ..core import Candidate, Pattern, lx, register_pattern
from ._match import linear_and_quadratic
from ._causal import roles, update


@register_pattern
class CausalLinearAttention(Pattern):
    name = "causal linear attention"
    family = "causal attention"
    kinds = ("inner",)
    order = 20
    reason = "f linear and κ quadratic in s: prefix sums of Φ(k) and Φ(k)Φ(k)ᵀ, O(N p²), no N×N matrix"

    def match(self, c: Candidate):
        return linear_and_quadratic(c.pieces["df"], c.pieces["kappa"])

    def latex(self, c, consts):
        a, c1, c2 = consts["a"], consts["c1"], consts["c2"]
        parts = []
        if c1 != 0:
            parts.append(lx(a * c1) + r"\sum_{s \le t} \Phi(\mathbf{k}_s)")
        if c2 != 0:
            parts.append(
                lx(2 * a * c2)
                + r"\left(\sum_{s \le t} \Phi(\mathbf{k}_s)\Phi(\mathbf{k}_s)^\top\right)\Phi(\mathbf{q}_t)"
            )
        own = lx(a) + r"\,\kappa'(\Phi(\mathbf{q}_t)^\top\Phi(\mathbf{k}_t))\,\Phi(\mathbf{q}_t)"
        return update(" + ".join(parts) or "0", own, c.term)

    def grad_lines(self, dv):
        a, c1, c2 = dv.constants["a"], dv.constants["c1"], dv.constants["c2"]
        q_terms = []
        if sp.simplify(c1) != 0:
            q_terms.append(scaled(a * c1, "torch.cumsum(Phi_k, dim=-2)"))
        if sp.simplify(c2) != 0:
            q_terms.append(scaled(2 * a * c2, "causal_prefix_outer(Phi_q, Phi_k)"))
        dk = sp.simplify(a * (c1 + 2 * c2 * S))
        return [
            *qk_phi_lines(dv, with_derivative=True),
            "# prefix sums over s ≤ t: O(N p²), no N×N matrix",
            "s_self = (Phi_q * Phi_k).sum(dim=-1, keepdim=True)",
            *roles(dv, " + ".join(q_terms) or "torch.zeros_like(Phi_q)", f"({code(dk, S, 's_self')}) * Phi_q"),
        ]

    def energy_lines(self, dv):
        c0, c1, c2 = dv.constants["c0"], dv.constants["c1"], dv.constants["c2"]
        S_terms = [scaled(c0, "torch.arange(1, Q.shape[-2] + 1, device=Q.device, dtype=Q.dtype)")]
        if sp.simplify(c1) != 0:
            S_terms.append(scaled(c1, "(Phi_q * torch.cumsum(Phi_k, dim=-2)).sum(dim=-1)"))
        if sp.simplify(c2) != 0:
            S_terms.append(scaled(c2, "(Phi_q * causal_prefix_outer(Phi_q, Phi_k)).sum(dim=-1)"))
        return [
            *qk_phi_lines(dv, with_derivative=False),
            f"S = {' + '.join(S_terms)}   # (B, H, N): Σ_(s≤t) κ(s_ts) by prefix sums",
            f"return {code(dv.pieces['f'], X, 'S')} + torch.zeros_like(S)",
        ]
