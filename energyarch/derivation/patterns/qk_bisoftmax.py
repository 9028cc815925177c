"""Pattern: bi-softmax with separate queries and keys. f = a·log, κ = c·exp(b s) ⇒ (docs: Concepts,
"Bidirectional interactions")::

    ∂E/∂Q = a b P Φ(K),   ∂E/∂K = a b Pᵀ Φ(Q),   P = row-softmax(b Φ(Q) Φ(K)ᵀ)

Energy Transformer's attention update (with ET's sign). Lowering: dense below ``sdpa_threshold``; above it
SDPA passes that never form N×N (:func:`energyarch.runtime_qk.qk_bisoftmax_sdpa`: P Φ(K) and the row
log-sum-exp L, then Pᵀ Φ(Q) with the per-key bias −L_i).
"""

from __future__ import annotations

import sympy as sp

from ..causal import qk_phi_lines
from ..codegen import code, log_shift, scaled
from ..core import Candidate, Pattern, lx, register_pattern
from ._match import log_and_exp
from ._qk import roles, update


@register_pattern
class QKBiSoftmax(Pattern):
    name = "qk bi-softmax"
    family = "qk attention"
    kinds = ("inner",)
    order = 10
    reason = (
        "f = a·log and κ = c·exp(b s): ∂E/∂Q = a b P K, ∂E/∂K = a b Pᵀ Q, P = softmax(b Q Kᵀ) "
        "(SDPA passes with a per-key bias when long)"
    )

    def match(self, c: Candidate):
        return log_and_exp(c.pieces["df"], c.pieces["kappa"], c.pieces["dkappa"])

    def latex(self, c, consts):
        ab = sp.simplify(consts["a"] * consts["b"])
        coef = "" if ab == 1 else lx(ab) + r"\,"
        return update(
            coef + r"\Phi(\mathbf{K}_h)\, \mathbf{P}_h^\top", coef + r"\Phi(\mathbf{Q}_h)\, \mathbf{P}_h", c.term
        ) + (
            r",\quad \mathbf{P}_h = \operatorname{softmax}_{\text{row}}\left(%s\, "
            r"\Phi(\mathbf{Q}_h)^\top \Phi(\mathbf{K}_h)\right)" % lx(consts["b"])
        )

    def grad_lines(self, dv):
        a, b = dv.constants["a"], dv.constants["b"]
        return [
            *qk_phi_lines(dv, with_derivative=True),
            "if Q.shape[-2] > self.sdpa_threshold:             # long sequences: never form N×N",
            f"    PK, PtQ, L = qk_bisoftmax_sdpa(Phi_q, Phi_k, {code(b)})",
            "else:",
            f"    P = torch.softmax({scaled(b, 'Phi_q @ Phi_k.transpose(-1, -2)')}, dim=-1)   # (B, H, N, N)",
            "    PK = P @ Phi_k                                  # P Φ(K)",
            "    PtQ = P.transpose(-1, -2) @ Phi_q               # Pᵀ Φ(Q)",
            *roles(dv, scaled(a * b, "PK"), scaled(a * b, "PtQ")),
        ]

    def energy_lines(self, dv):
        a, b, c = dv.constants["a"], dv.constants["b"], dv.constants["c"]
        return [
            *qk_phi_lines(dv, with_derivative=False),
            "if Q.shape[-2] > self.sdpa_threshold:",
            f"    L = qk_softmax_sdpa(Phi_q, Phi_k, {code(b)})[1].squeeze(-1)   # row log-sum-exp, O(N p)",
            "else:",
            f"    L = torch.logsumexp({scaled(b, 'Phi_q @ Phi_k.transpose(-1, -2)')}, dim=-1)",
            f"return {scaled(a, '(L' + log_shift(c) + ')')}   # (B, H, N): a log S_i",
        ]
