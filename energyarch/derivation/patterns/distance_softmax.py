"""Pattern: distance softmax. K = c·exp(b ‖x − y‖²), f = a·log (e.g. RBF with log).

The gradient of the declared energy (docs: Concepts, pattern "distance kernel")::

    ∇_Z E = 2ab [(1 + Pᵀ1) ⊙ Z − (P + Pᵀ) Z],   P = row-softmax(b R),  R_kj = ‖z_k − z_j‖²

On the sphere this is bi-softmax at β = −2b plus a term along each z_k (the two agree after the tangent
projection). Lowering: dense below ``sdpa_threshold``, else two SDPA passes with a per-key bias (no N×N).
"""

from __future__ import annotations

import sympy as sp

from ...primitives import R, X
from ..codegen import code, log_shift, scaled
from ..core import SJ, SK, Candidate, Pattern, lx, register_pattern
from ._match import log_and_exp
from ._distance_latex import update


@register_pattern
class DistanceSoftmax(Pattern):
    name = "distance softmax"
    family = "attention"
    kinds = ("distance",)
    order = 10
    reason = (
        "f = a·log and ρ = c·exp(b r): ∇_Z E = 2ab[(1 + Pᵀ1) ⊙ Z − (P + Pᵀ) Z], P = softmax(b r) "
        "(bi-softmax at β = −2b plus a radial term; SDPA when long)"
    )

    def match(self, c: Candidate):
        return log_and_exp(c.pieces["df"], c.pieces["rho"], c.pieces["drho"], R)

    def operator(self, c):
        return (c.pieces["df"].xreplace({X: SK}) + c.pieces["df"].xreplace({X: SJ})) * c.pieces["drho"]

    def latex(self, c, consts):
        Z = r"\mathbf{Z}_h"
        coef = sp.simplify(-2 * consts["a"] * consts["b"])
        return update(
            r"%s\left[\left(\mathbf{P} + \mathbf{P}^\top\right) %s - %s \operatorname{diag}\left(\mathbf{1} + "
            r"\mathbf{P}^\top \mathbf{1}\right)\right],\quad \mathbf{P} = \operatorname{softmax}_{\text{row}}(%s\, "
            r"\mathbf{R}_h)" % ("" if coef == 1 else lx(coef) + r"\,", Z, Z, lx(consts["b"]))
        )

    def grad_lines(self, dv):
        a, b = dv.constants["a"], dv.constants["b"]
        return [
            "if Z.shape[-2] > self.sdpa_threshold:             # long sequences: never form N×N",
            f"    PPt_Z, col = distance_softmax_sdpa(Z, {code(b)})",
            "else:",
            f"    PPt_Z, col = distance_softmax_dense(Z, {code(b)})   # (P + Pᵀ) Z and Pᵀ1, P = softmax(b r)",
            f"return {scaled(2 * a * b, '((1 + col) * Z - PPt_Z)')}",
        ]

    def energy_lines(self, dv):
        a, b, c = dv.constants["a"], dv.constants["b"], dv.constants["c"]
        return [
            f"log_S = distance_row_logsumexp(Z, {code(b)}, self.sdpa_threshold){log_shift(c)}   # log Σ_j K (SDPA when long)",
            f"return {scaled(a, 'log_S')}.sum(dim=(-1, -2))",
        ]
