"""Pattern: any distance kernel K = ρ(‖x − y‖²) — the gradient of the energy as declared (DESIGN)::

    ∇_{z_k} E = 2 Σ_j C_kj (z_k − z_j) = 2 (diag(C1) Z − C Z),   C_kj = [f'(S_k) + f'(S_j)] ρ'(r_kj)

``r`` is formed from Z itself, never rewritten with the radius: on the sphere r = 2R² − 2s gives the same
*values* but differentiating the rewrite adds a spurious radial self-interaction (issue 8).
"""

from __future__ import annotations

import sympy as sp

from ...primitives import R, X
from ..codegen import code, scaled
from ..core import SJ, SK, Candidate, Pattern, register_pattern
from ._distance_latex import update


@register_pattern
class DistanceKernel(Pattern):
    name = "distance kernel"
    family = "attention"
    kinds = ("distance",)
    order = 90
    reason = "K = ρ(‖x − y‖²): ∇_Z E = 2 (diag(C1) Z − C Z), C = (f'(S_k) + f'(S_j)) ρ'(r), N×N"

    def match(self, c: Candidate):
        return {}

    def operator(self, c):
        return (c.pieces["df"].xreplace({X: SK}) + c.pieces["df"].xreplace({X: SJ})) * c.pieces["drho"]

    def latex(self, c, consts):
        rr = sp.Symbol(r"\mathbf{R}_h")
        C = sp.latex(self.operator(c).xreplace({R: rr}))
        return update(r"2 \mathbf{Z}_h \left(\mathbf{C} - \operatorname{diag}(\mathbf{C}\mathbf{1})\right),\quad "
                      r"\mathbf{C} = %s" % C)

    def grad_lines(self, dv):
        drho = code(dv.pieces["drho"], R, "r")
        if X not in dv.pieces["df"].free_symbols:   # f linear: f'(S) is the constant a
            coupling = [f"C = {scaled(2 * dv.pieces['df'], '(' + drho + ')')}   # 2a ρ'(r)"]
        else:
            coupling = [f"S = ({code(dv.pieces['rho'], R, 'r')}).sum(dim=-1)   # (B, H, N): Σ_j K",
                        f"df_S = {code(dv.pieces['df'], X, 'S')}",
                        f"C = (df_S.unsqueeze(-1) + df_S.unsqueeze(-2)) * ({drho})   # [f'(S_k) + f'(S_j)] ρ'(r)"]
        return ["r = sq_distances(Z)                                 # (B, H, N, N): ‖z_k − z_j‖²",
                *coupling,
                "return 2 * (C.sum(dim=-1, keepdim=True) * Z - C @ Z)   # 2 (diag(C1) Z − C Z)"]
