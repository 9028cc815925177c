"""Pattern: separate queries and keys, any f with an inner-product kernel ⇒ C_ij = f'(S_i) κ'(s_ij)::

∂E/∂Q = Φ'(Q) ⊙ (C Φ(K)),   ∂E/∂K = Φ'(K) ⊙ (Cᵀ Φ(Q))        (N×N)
"""

from __future__ import annotations

import sympy as sp

from ...primitives import S, X
from ..causal import qk_phi_lines
from ..codegen import code
from ..core import Candidate, Pattern, register_pattern
from ._qk import roles, update


@register_pattern
class QKInnerProductKernel(Pattern):
    name = "qk inner-product kernel"
    family = "qk attention"
    kinds = ("inner",)
    order = 90
    reason = "general f with an inner-product kernel: C_ij = f'(S_i) κ'(s_ij), ∂E/∂Q = C K, ∂E/∂K = Cᵀ Q, N×N"

    def match(self, c: Candidate):
        return {}

    def latex(self, c, consts):
        C = sp.latex(
            c.pieces["df"].xreplace({X: sp.Symbol("S_i")}) * c.pieces["dkappa"].xreplace({S: sp.Symbol("s_ij")})
        )
        return update(r"\Phi(\mathbf{K}_h)\, \mathbf{C}_h^\top", r"\Phi(\mathbf{Q}_h)\, \mathbf{C}_h", c.term) + (
            r",\quad (\mathbf{C}_h)_{ij} = %s" % C
        )

    def grad_lines(self, dv):
        return [
            *qk_phi_lines(dv, with_derivative=True),
            "G = Phi_q @ Phi_k.transpose(-1, -2)                 # (B, H, N, N): s_ij = Φ(q_i)·Φ(k_j)",
            f"S = ({code(dv.pieces['kappa'], S, 'G')}).sum(dim=-1)   # (B, H, N): S_i",
            f"df_S = torch.zeros_like(S) + ({code(dv.pieces['df'], X, 'S')})   # f'(S_i)",
            f"C = df_S.unsqueeze(-1) * ({code(dv.pieces['dkappa'], S, 'G')})   # C_ij = f'(S_i) κ'(s_ij)",
            *roles(dv, "C @ Phi_k", "C.transpose(-1, -2) @ Phi_q"),
        ]
