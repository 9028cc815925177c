"""Pattern: any f with an inner-product kernel ⇒ C = (f'(S_k) + f'(S_j)) κ'(G).

Lowering: dense (N×N) below ``sdpa_threshold``; above it tile by tile (:mod:`energyarch.blockwise`).
"""

from __future__ import annotations

from ...primitives import S, X
from ..codegen import code, phi_lines
from ..core import SJ, SK, Candidate, Pattern, register_pattern
from ._attention_latex import coupling, phi_symbols, update


@register_pattern
class InnerProductKernel(Pattern):
    name = "inner-product kernel"
    family = "attention"
    kinds = ("inner",)
    order = 90
    reason = "general f with an inner-product kernel: C = (f'(S_k) + f'(S_j)) κ'(G), N×N"

    def match(self, c: Candidate):
        return {}

    def operator(self, c):
        return (c.pieces["df"].xreplace({X: SK}) + c.pieces["df"].xreplace({X: SJ})) * c.pieces["dkappa"]

    def latex(self, c, consts):
        Phi, wrap = phi_symbols(c.pieces)
        return update(wrap(coupling(Phi, self.operator(c))))

    def grad_lines(self, dv):
        out = "return dPhi * C_Phi" if dv.term.K.phi is not None else "return C_Phi"
        kappa, dkappa = code(dv.pieces["kappa"], S, "G"), code(dv.pieces["dkappa"], S, "G")
        df_S = f"df_S = {code(dv.pieces['df'], X, 'S')}"
        return [
            *phi_lines(dv, with_derivative=True),
            "if Z.shape[-2] > self.sdpa_threshold:             # long sequences: tiles of pairs, never N×N",
            f"    S = pair_row_sum(kernel_on_gram(lambda G: {kappa}), Phi)   # (B, H, N) Σ_j K",
            f"    {df_S}",
            f"    C_Phi = gram_couple(lambda G, df_k, df_j: (df_k + df_j) * ({dkappa}), Phi, df_S)",
            "else:",
            "    G = Phi @ Phi.transpose(-1, -2)                 # (B, H, N, N) Gram matrix",
            f"    S = ({kappa}).sum(dim=-1)   # (B, H, N) Σ_j K",
            f"    {df_S}",
            f"    C = (df_S.unsqueeze(-1) + df_S.unsqueeze(-2)) * ({dkappa})",
            "    C_Phi = C @ Phi",
            out,
        ]
