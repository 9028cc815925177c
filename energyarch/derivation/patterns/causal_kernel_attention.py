"""Pattern: causal kernel attention. f linear ⇒ ∂E_t/∂q_t = a Σ_{s≤t} κ'(s_ts) Φ(k_s): a masked elementwise map."""

from __future__ import annotations

import sympy as sp

from ...primitives import S, X
from ..causal import qk_phi_lines
from ..codegen import code
from ..core import Candidate, Pattern, constant, register_pattern
from ._causal import roles, update


@register_pattern
class CausalKernelAttention(Pattern):
    name = "causal kernel attention"
    family = "causal attention"
    kinds = ("inner",)
    order = 30
    reason = "f linear: C = a κ'(G) under the causal mask, one masked elementwise map of the Gram matrix"

    def match(self, c: Candidate):
        a = constant(c.pieces["df"], X)
        return None if a is None else {"a": a}

    def latex(self, c, consts):
        dk = sp.simplify(consts["a"] * c.pieces["dkappa"])
        return update(
            r"\sum_{s \le t} \left[%s\right]_{s = \Phi(\mathbf{q}_t)^\top\Phi(\mathbf{k}_s)} \Phi(\mathbf{k}_s)"
            % sp.latex(dk),
            r"\left[%s\right]_{s = s_{tt}} \Phi(\mathbf{q}_t)" % sp.latex(dk),
            c.term,
        )

    def grad_lines(self, dv):
        dk = sp.simplify(dv.constants["a"] * dv.pieces["dkappa"])
        return [
            *qk_phi_lines(dv, with_derivative=True),
            "mask = causal_mask(Q.shape[-2], Q.device)          # s ≤ t",
            "G = torch.where(mask, causal_gram(Phi_q, Phi_k), 0)   # (B, H, N, N), 0 if s > t",
            f"C = torch.where(mask, {code(dk, S, 'G')}, 0)   # a κ'(G), causal",
            "s_self = (Phi_q * Phi_k).sum(dim=-1, keepdim=True)",
            *roles(dv, "causal_apply(C, Phi_k)", f"({code(dk, S, 's_self')}) * Phi_q"),
        ]
