"""Family: bidirectional attention with an interaction (docs: Concepts, "Bidirectional interactions").

Queries and keys come from different projections (``Attention(..., interaction=QueryKey())`` or
``DiagLowRank(rank)``)::

    E = Σ_h Σ_i f(S_i),   S_i = Σ_j K(q_i, k_j)         (no longer symmetric in i, j)

    ∂E/∂q_m = f'(S_m) Σ_j ∂₁K(q_m, k_j),   ∂E/∂k_m = Σ_i f'(S_i) ∂₂K(q_i, k_m)

and the interaction maps both back (W_Qᵀ and W_Kᵀ in paper mode): the tying is derived, as for the causal family.
Patterns: ``patterns/qk_bisoftmax.py`` (memory-linear), ``patterns/qk_inner_product_kernel.py``; distance kernels
and opaque callables take ``torch.func.grad`` of the energy.

>>> from energyarch import Attention, QueryKey
>>> from energyarch.derivation import derive
>>> dv = derive(Attention(f="log(x)/beta", K="exp(beta*s)", heads=2, interaction=QueryKey()), d=8)
>>> dv.family, dv.pattern, dv.path
('qk attention', 'qk bi-softmax', 'symbolic')
"""

from __future__ import annotations

import dataclasses
from typing import cast

from ..energy import Attention
from ..interactions import Interaction
from ..primitives import R, S, X
from . import core
from .attention import attention_reference_energy, attention_text, candidate, check_opaque, declared_pieces
from .causal import causal_dims, qk_phi_lines
from .codegen import code
from .core import Derivation, Family, register_family


@register_family
class QKAttentionFamily(Family[Attention]):
    name = "qk attention"
    term_type = Attention

    def derive(self, term: Attention, d: int) -> Derivation:
        dims = causal_dims(term, d)          # coordinate width and sphere from the interaction
        check_opaque(term, dims)
        declared = declared_pieces(term, dims)
        why = ("the kernel is an opaque torch callable" if term.K.kind == "callable" else
               "a primitive is an opaque torch callable" if not (term.f.symbolic and term.K.symbolic) else None)
        if why:
            return _with_tying(Derivation(term, dims, "autodiff", "autodiff",
                                          f"{why}: torch.func.grad of Σ_i f(Σ_j K(q_i, k_j))", declared))

        def build() -> Derivation:
            c = candidate(term, dims, declared)               # derivatives and the domain checks
            if c.kind == "distance":
                return Derivation(term, dims, "autodiff", "autodiff", "a distance kernel with separate queries and "
                                  "keys has no registered closed form: torch.func.grad of Σ_i f(Σ_j ρ(‖q_i − k_j‖²))",
                                  declared)
            return core.first_match(c)

        return _with_tying(core.symbolic_or_fallback(term, dims, declared, build))

    def energy_lines(self, dv: Derivation) -> list[str]:
        """f(S_i) per head and token, (..., H, N), with S_i = Σ_j K(q_i, k_j) (N×N)."""
        t = cast(Attention, dv.term)
        f_code = "self.f(S)" if not t.f.symbolic else code(dv.pieces["f"], X, "S")
        if t.K.kind == "callable":
            lines = ["S = cross_kernel(self.kernel, Q, K).sum(dim=-1)      # (B, H, N): Σ_j K(q_i, k_j)"]
        elif t.K.kind == "distance":
            lines = ["r = sq_distances_qk(Q, K)                           # (B, H, N, N): ‖q_i − k_j‖²",
                     f"S = ({code(dv.pieces['rho'], R, 'r')}).sum(dim=-1)"]
        else:
            lines = [*qk_phi_lines(dv, with_derivative=False),
                     "G = Phi_q @ Phi_k.transpose(-1, -2)                 # (B, H, N, N)",
                     f"S = ({code(dv.pieces['kappa'], S, 'G')}).sum(dim=-1)   # (B, H, N): Σ_j K(q_i, k_j)"]
        return [*lines, f"return {f_code}                      # (B, H, N): f(S_i) per head"]

    def signature(self, dv: Derivation) -> dict:
        return {"base": "QKTermUpdate", "args": "Q, K", "shape": "(B, H, N, p)",
                "grad_doc": "(∂E/∂Q, ∂E/∂K) of E = Σ_h Σ_i f(Σ_j K(q_i, k_j))",
                "energy_doc": "f(S_i) of every token and head at queries Q and keys K (B, H, N, p); shape (B, H, N).",
                "rule": "X ← X − step ⊙ (∂E/∂Q, ∂E/∂K) mapped back through the interaction's projections (see TYING)"}

    def energy_text(self, dv: Derivation) -> str:
        t = cast(Attention, dv.term)
        return (f"E = sum_h sum_i f(sum_j K(q_i, k_j)), queries and keys from the "
                f"{cast(Interaction, t.interaction).kind} interaction, {attention_text(t)}")

    def reference_energy(self, term, Z, env):
        """The energy with queries = keys = ``Z`` (a finiteness probe; verify differentiates both roles with
        :func:`energyarch.verify.declared_qk_energy`)."""
        return attention_reference_energy(term, Z, env)

    def autodiff_lines(self, dv: Derivation) -> list[str]:
        return ["# generic path: differentiate the energy in both roles with torch.func.grad",
                "G_q, G_k = torch.func.grad(lambda Q_, K_: self.energy_Z(Q_, K_).sum(), argnums=(0, 1))(Q, K)",
                "return G_q, G_k"]


def _with_tying(dv: Derivation) -> Derivation:
    """Say in the reason (and so in report()) which tying the interaction gives."""
    inter = cast(Interaction, cast(Attention, dv.term).interaction)  # a query-key term carries one
    return dataclasses.replace(dv, reason=f"{dv.reason}; interaction {inter.kind}: {inter.tying}")
