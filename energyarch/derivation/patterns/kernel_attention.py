"""Pattern: kernel attention. f linear ⇒ C = 2a κ'(G), one elementwise map of the Gram matrix.

Lowering: dense below ``sdpa_threshold``; above it tile by tile (:func:`energyarch.blockwise.gram_couple`).
"""

from __future__ import annotations

from typing import cast

import sympy as sp

from ...primitives import S, X
from ..codegen import code, phi_lines
from ..core import Candidate, Pattern, constant, register_pattern
from ._attention_latex import coupling, phi_symbols, update


@register_pattern
class KernelAttention(Pattern):
    name = "kernel attention"
    family = "attention"
    kinds = ("inner",)
    order = 30
    reason = "f linear: C = 2a κ'(G), one elementwise map of the Gram matrix"

    def match(self, c: Candidate):
        a = constant(c.pieces["df"], X)
        return None if a is None else {"a": a}

    def operator(self, c):
        return 2 * cast(sp.Expr, constant(c.pieces["df"], X)) * c.pieces["dkappa"]  # matched: f' is a constant

    def latex(self, c, consts):
        Phi, wrap = phi_symbols(c.pieces)
        return update(wrap(coupling(Phi, 2 * consts["a"] * c.pieces["dkappa"])))

    def grad_lines(self, dv):
        C = code(sp.simplify(2 * dv.constants["a"] * dv.pieces["dkappa"]), S, "G")
        out = "return dPhi * C_Phi" if dv.term.K.phi is not None else "return C_Phi"
        return [
            *phi_lines(dv, with_derivative=True),
            "if Z.shape[-2] > self.sdpa_threshold:             # long sequences: tiles of pairs, never N×N",
            f"    C_Phi = gram_couple(lambda G: {C}, Phi)   # C Φ, C = 2a κ'(G) one tile at a time",
            "else:",
            "    G = Phi @ Phi.transpose(-1, -2)                 # (B, H, N, N) Gram matrix",
            f"    C = {C}   # coupling 2a κ'(G)",
            "    C_Phi = C @ Phi",
            out,
        ]
