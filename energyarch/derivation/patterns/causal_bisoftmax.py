"""Pattern: causal bi-softmax. f = a·log, κ = c·exp(b s) ⇒ per token t (docs: Concepts, "Causal conditional energies")::

    ∂E_t/∂q_t = a b Σ_{s≤t} P_ts Φ(k_s),   ∂E_t/∂k_t = a b P_tt Φ(q_t),   P = causal row-softmax(b Φ_q Φ_kᵀ)

Lowering: one ``F.scaled_dot_product_attention(..., is_causal=True)`` (memory linear in N; FlashAttention on
GPU) plus the self-term from the row log-sum-exp (:func:`energyarch.runtime.causal_softmax_sdpa`).
"""

from __future__ import annotations

import sympy as sp

from ..causal import qk_phi_lines
from ..codegen import code, log_shift, scaled
from ..core import Candidate, Pattern, lx, register_pattern
from ._match import log_and_exp
from ._causal import roles, update


@register_pattern
class CausalBiSoftmax(Pattern):
    name = "causal bi-softmax"
    family = "causal attention"
    kinds = ("inner",)
    order = 10
    reason = (
        "f = a·log and κ = c·exp(b s): a b (causal softmax attention Σ_(s≤t) P_ts k_s + self-term P_tt q_t), "
        "one SDPA call with is_causal=True"
    )

    def match(self, c: Candidate):
        return log_and_exp(c.pieces["df"], c.pieces["kappa"], c.pieces["dkappa"])

    def latex(self, c, consts):
        ab = sp.simplify(consts["a"] * consts["b"])
        coef = "" if ab == 1 else lx(ab) + r"\,"
        return update(coef + r"\sum_{s \le t} P_{ts}\, \mathbf{k}_s", coef + r"P_{tt}\, \mathbf{q}_t", c.term) + (
            r",\quad P_{ts} = \operatorname{softmax}_{s \le t}\left(%s\, \mathbf{q}_t^\top \mathbf{k}_s\right)"
            % lx(consts["b"])
        )

    def grad_lines(self, dv):
        a, b = dv.constants["a"], dv.constants["b"]
        return [
            *qk_phi_lines(dv, with_derivative=True),
            f"PK, L = causal_softmax_sdpa(Phi_q, Phi_k, {code(b)})   # Σ_(s≤t) P_ts Φ(k_s) and log Σ_(s≤t) e^(b s_ts)",
            f"P_self = torch.exp({scaled(b, '(Phi_q * Phi_k).sum(dim=-1, keepdim=True)')} - L)   # P_tt",
            *roles(dv, scaled(a * b, "PK"), scaled(a * b, "P_self * Phi_q")),
        ]

    def energy_lines(self, dv):
        a, b, c = dv.constants["a"], dv.constants["b"], dv.constants["c"]
        return [
            *qk_phi_lines(dv, with_derivative=False),
            f"PK, L = causal_softmax_sdpa(Phi_q, Phi_k, {code(b)})",
            f"return {scaled(a, '(L.squeeze(-1)' + log_shift(c) + ')')}   # (B, H, N): a log S_t",
        ]
