"""Pattern: bi-softmax (Eq. 7). f = a·log, κ = c·exp(b s) ⇒ C = ab (P + Pᵀ), P = row-softmax(b ΦΦᵀ).

Lowering: dense below ``sdpa_threshold``; above it two SDPA passes that never form N×N
(:func:`energyarch.runtime.bisoftmax_sdpa`).
"""

from __future__ import annotations

import sympy as sp

from ...primitives import X
from ..codegen import code, log_shift, phi_lines, scaled
from ..core import SJ, SK, Candidate, Pattern, lx, register_pattern
from ._match import log_and_exp
from ._attention_latex import phi_symbols, update


@register_pattern
class BiSoftmax(Pattern):
    name = "bi-softmax"
    family = "attention"
    kinds = ("inner",)
    order = 10
    reason = "f = a·log and κ = c·exp(b s): C = a b (P + Pᵀ), P = softmax(b G) (stable, SDPA when long)"

    def match(self, c: Candidate):
        return log_and_exp(c.pieces["df"], c.pieces["kappa"], c.pieces["dkappa"])

    def operator(self, c):
        return (c.pieces["df"].xreplace({X: SK}) + c.pieces["df"].xreplace({X: SJ})) * c.pieces["dkappa"]

    def latex(self, c, consts):
        Phi, wrap = phi_symbols(c.pieces)
        ab, b = sp.simplify(consts["a"] * consts["b"]), consts["b"]
        coef = "" if ab == 1 else lx(ab) + r"\,"
        gram = r"%s\, %s^\top %s" % (lx(b), Phi, Phi)
        return update(
            wrap(
                r"%s%s\left(\operatorname{softmax}_{\text{col}}(%s) + \operatorname{softmax}_{\text{row}}(%s)\right)"
                % (coef, Phi, gram, gram)
            )
        )

    def grad_lines(self, dv):
        c = dv.constants
        out = (lambda body: f"return dPhi * ({body})") if dv.term.K.phi is not None else (lambda body: f"return {body}")
        return [
            *phi_lines(dv, with_derivative=True),
            "if Z.shape[-2] > self.sdpa_threshold:             # long sequences: never form N×N",
            f"    PPt_Phi = bisoftmax_sdpa(Phi, {code(c['b'])})",
            "else:",
            f"    P = torch.softmax({scaled(c['b'], 'Phi @ Phi.transpose(-1, -2)')}, dim=-1)  # (B, H, N, N) row-softmax",
            "    PPt_Phi = (P + P.transpose(-1, -2)) @ Phi      # (P + Pᵀ) Φ",
            out(scaled(c["a"] * c["b"], "PPt_Phi")),
        ]

    def energy_lines(self, dv):
        a, b, c = dv.constants["a"], dv.constants["b"], dv.constants["c"]
        return [
            *phi_lines(dv, with_derivative=False),
            f"log_S = row_logsumexp(Phi, {code(b)}, self.sdpa_threshold){log_shift(c)}   # log Σ_j K: stable, SDPA when long",
            f"return {scaled(a, 'log_S')}.sum(dim=(-1, -2))",
        ]
