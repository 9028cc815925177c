"""Pattern: any distance kernel K = ρ(‖x − y‖²) — the gradient of the energy as declared (docs: Concepts, "Two derivation paths")::

    ∇_{z_k} E = 2 Σ_j C_kj (z_k − z_j) = 2 (diag(C1) Z − C Z),   C_kj = [f'(S_k) + f'(S_j)] ρ'(r_kj)

``r`` is formed from Z itself, never rewritten with the radius: on the sphere r = 2R² − 2s gives the same
*values* but differentiating the rewrite adds a spurious radial self-interaction (issue 8).

Lowering: dense (N×N) below ``sdpa_threshold``; above it tile by tile (:mod:`energyarch.blockwise`).
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
        return update(
            r"2 \mathbf{Z}_h \left(\mathbf{C} - \operatorname{diag}(\mathbf{C}\mathbf{1})\right),\quad "
            r"\mathbf{C} = %s" % C
        )

    def grad_lines(self, dv):
        drho = code(dv.pieces["drho"], R, "r")
        rho = code(dv.pieces["rho"], R, "r")
        if X not in dv.pieces["df"].free_symbols:  # f linear: f'(S) is the constant a
            C = scaled(2 * dv.pieces["df"], "(" + drho + ")")
            tiled = [f"CZ, C1 = distance_couple(lambda r: {C}, Z)   # C Z and C 1, C = 2a ρ'(r), tile by tile"]
            coupling = [f"C = {C}   # 2a ρ'(r)"]
        else:
            df_S = f"df_S = {code(dv.pieces['df'], X, 'S')}"
            tiled = [
                f"S = pair_row_sum(kernel_on_distance(lambda r: {rho}), Z)   # (B, H, N): Σ_j K",
                df_S,
                f"CZ, C1 = distance_couple(lambda r, df_k, df_j: (df_k + df_j) * ({drho}), Z, df_S)",
            ]
            coupling = [
                f"S = ({rho}).sum(dim=-1)   # (B, H, N): Σ_j K",
                df_S,
                f"C = (df_S.unsqueeze(-1) + df_S.unsqueeze(-2)) * ({drho})   # [f'(S_k) + f'(S_j)] ρ'(r)",
            ]
        return [
            "if Z.shape[-2] > self.sdpa_threshold:             # long sequences: tiles of pairs, never N×N",
            *("    " + ln for ln in tiled),
            "else:",
            "    r = sq_distances(Z)                             # (B, H, N, N): ‖z_k − z_j‖²",
            *("    " + ln for ln in coupling),
            "    CZ, C1 = C @ Z, C.sum(dim=-1, keepdim=True)",
            "return 2 * (C1 * Z - CZ)                            # 2 (diag(C1) Z − C Z)",
        ]
