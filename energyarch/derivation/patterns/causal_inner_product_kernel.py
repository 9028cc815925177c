"""Pattern: causal, any f with an inner-product kernel ⇒ C_ts = f'(S_t) κ'(s_ts) for s ≤ t (N×N, masked)."""

from __future__ import annotations

import sympy as sp

from ...primitives import S, X
from ..causal import qk_phi_lines
from ..codegen import code
from ..core import Candidate, Pattern, register_pattern
from ._causal import roles, update


@register_pattern
class CausalInnerProductKernel(Pattern):
    name = "causal inner-product kernel"
    family = "causal attention"
    kinds = ("inner",)
    order = 90
    reason = "general f with an inner-product kernel: C_ts = f'(S_t) κ'(s_ts), s ≤ t, N×N masked"

    def match(self, c: Candidate):
        return {}

    def latex(self, c, consts):
        df = sp.latex(c.pieces["df"].xreplace({X: sp.Symbol("S_t")}))
        return update(
            r"%s \sum_{s \le t} \kappa'(s_{ts})\, \Phi(\mathbf{k}_s)" % df,
            r"%s\, \kappa'(s_{tt})\, \Phi(\mathbf{q}_t)" % df,
            c.term,
        )

    def grad_lines(self, dv):
        kappa, dkappa = dv.pieces["kappa"], dv.pieces["dkappa"]
        return [
            *qk_phi_lines(dv, with_derivative=True),
            "mask = causal_mask(Q.shape[-2], Q.device)          # s ≤ t",
            "G = torch.where(mask, causal_gram(Phi_q, Phi_k), 0)   # (B, H, N, N), 0 if s > t",
            f"S = torch.where(mask, {code(kappa, S, 'G')}, 0).sum(dim=-1)   # (B, H, N): S_t",
            f"df_S = torch.zeros_like(S) + ({code(dv.pieces['df'], X, 'S')})   # f'(S_t)",
            f"C = df_S.unsqueeze(-1) * torch.where(mask, {code(dkappa, S, 'G')}, 0)",
            "s_self = (Phi_q * Phi_k).sum(dim=-1)",
            *roles(dv, "causal_apply(C, Phi_k)", f"(df_S * ({code(dkappa, S, 's_self')})).unsqueeze(-1) * Phi_q"),
        ]
