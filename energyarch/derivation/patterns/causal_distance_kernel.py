"""Pattern: causal distance kernel K = ρ(‖q − k‖²)::

    ∂E_t/∂q_t = 2 f'(S_t) Σ_{s≤t} ρ'(r_ts)(q_t − k_s),   ∂E_t/∂k_t = −2 f'(S_t) ρ'(r_tt)(q_t − k_t)

(with one basis per head q_t = k_t and the self-term vanishes).
"""

from __future__ import annotations

import sympy as sp

from ...primitives import R, X
from ..codegen import code
from ..core import Candidate, Pattern, register_pattern
from ._causal import roles, update


@register_pattern
class CausalDistanceKernel(Pattern):
    name = "causal distance kernel"
    family = "causal attention"
    kinds = ("distance",)
    order = 90
    reason = "K = ρ(‖q − k‖²): ∂E_t/∂q_t = 2 Σ_(s≤t) C_ts (q_t − k_s), C_ts = f'(S_t) ρ'(r_ts), N×N masked"

    def match(self, c: Candidate):
        return {}

    def latex(self, c, consts):
        df = sp.latex(c.pieces["df"].xreplace({X: sp.Symbol("S_t")}))
        return update(
            r"2 %s \sum_{s \le t} \rho'(r_{ts})(\mathbf{q}_t - \mathbf{k}_s)" % df,
            r"-2 %s\, \rho'(r_{tt})(\mathbf{q}_t - \mathbf{k}_t)" % df,
            c.term,
        )

    def grad_lines(self, dv):
        rho, drho = dv.pieces["rho"], dv.pieces["drho"]
        return [
            "mask = causal_mask(Q.shape[-2], Q.device)          # s ≤ t",
            "r = causal_sq_distances(Q, K, mask)                 # (B, H, N, N): ‖q_t − k_s‖², 0 if s > t",
            f"S = torch.where(mask, {code(rho, R, 'r')}, 0).sum(dim=-1)   # S_t",
            f"df_S = torch.zeros_like(S) + ({code(dv.pieces['df'], X, 'S')})   # f'(S_t)",
            f"C = df_S.unsqueeze(-1) * torch.where(mask, {code(drho, R, 'r')}, 0)",
            "r_self = (Q - K).pow(2).sum(dim=-1)",
            *roles(
                dv,
                "2 * (C.sum(dim=-1, keepdim=True) * Q - causal_apply(C, K))",
                f"-2 * (df_S * ({code(drho, R, 'r_self')})).unsqueeze(-1) * (Q - K)",
            ),
        ]
