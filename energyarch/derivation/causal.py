"""Family: causal conditional attention (CEM; Hyper-SET App. H.4, direction 1; docs: Concepts, "Causal conditional
energies").

Token t descends its own conditional energy, the other tokens held fixed::

    E_t(x_t | x_{<t}) = Σ_h f(S_t),   S_t = Σ_{s≤t} K(q_t, k_s)

    ∂E_t/∂q_t = f'(S_t) Σ_{s≤t} ∂₁K(q_t, k_s)          (query role)
    ∂E_t/∂k_t = f'(S_t) ∂₂K(q_t, k_t)                  (x_t's key role in its own term: the self-term)

With one basis per head q = k = z and the two add; with other interactions each goes back through its
own projection. ``self_term='stopped'`` drops the second. The generic path differentiates
``Σ_t f(Σ_{s<t} K(q_t, sg(k_s)) + K(q_t, k_t))`` (sg = stop-gradient): its value is Σ_t E_t and its gradient is
exactly the per-token update above.
"""

from __future__ import annotations

import dataclasses
from typing import cast

from ..energy import Attention, CausalAttention
from ..interactions import Interaction
from ..primitives import R, S, X
from . import core
from .attention import (attention_dims, attention_reference_energy, attention_text, candidate, check_opaque,
                        declared_pieces)
from .codegen import code, phi_lines
from .core import Derivation, Dims, Family, register_family


def causal_dims(term: Attention, d: int) -> Dims:
    """The coordinates' width comes from the interaction (d + r for diagonal plus low rank, whose x̄ lies on the
    sphere of radius √d)."""
    inter = cast(Interaction, term.interaction)  # causal and query-key terms always carry one
    low_rank = inter.kind == "diag-low-rank"
    return attention_dims(term, d, coord_dim=inter.coord_dim(d, term.heads) if isinstance(d, int) and d > 0
                          and d % term.heads == 0 else None, radius_dim=d if low_rank else None)


def qk_phi_lines(dv: Derivation, with_derivative: bool) -> list[str]:
    """``Phi_q = Φ(Q)``, ``Phi_k = Φ(K)`` (and their derivatives ``dPhi_q``, ``dPhi_k``)."""
    return [*phi_lines(dv, with_derivative, var="Q", out="Phi_q"), *phi_lines(dv, with_derivative, var="K", out="Phi_k")]


def self_key(dv: Derivation, name: str = "Phi_k") -> str:
    """The key of a token's own term: differentiated (exact self-term) or held fixed (stopped)."""
    return name if cast(CausalAttention, dv.term).self_term == "exact" else f"{name}.detach()"


@register_family
class CausalFamily(Family[CausalAttention]):
    name = "causal attention"
    term_type = CausalAttention

    def derive(self, term: CausalAttention, d: int) -> Derivation:
        dims = causal_dims(term, d)
        check_opaque(term, dims)
        declared = declared_pieces(term, dims)
        why = None
        if term.K.kind == "callable":
            why = "the kernel is an opaque torch callable"
        elif not (term.f.symbolic and term.K.symbolic):
            why = "a primitive is an opaque torch callable"
        if why:
            return _with_roles(Derivation(term, dims, "autodiff", "autodiff",
                                          f"{why}: torch.func.grad of Σ_t f(Σ_(s<t) K(q_t, sg(k_s)) + K(q_t, k_t))",
                                          declared))
        return _with_roles(core.symbolic_or_fallback(term, dims, declared,
                                                     lambda: core.first_match(candidate(term, dims, declared))))

    def energy_lines(self, dv: Derivation) -> list[str]:
        """Σ_h f(S_t) per head and token, (..., H, N); keys of earlier tokens held fixed (stop-gradient)."""
        t = cast(CausalAttention, dv.term)
        f_code = "self.f(S)" if not t.f.symbolic else code(dv.pieces["f"], X, "S")
        strict = "mask = causal_mask(Q.shape[-2], Q.device, strict=True)   # s < t"
        if t.K.kind == "callable":
            kself = "K" if t.self_term == "exact" else "K.detach()"
            lines = [strict,
                     "S = cross_kernel(self.kernel, Q, K.detach(), mask).sum(dim=-1)   # hidden pairs never evaluated",
                     f"S = S + diag_kernel(self.kernel, Q, {kself})           # s = t: the token's own term"]
        elif t.K.kind == "distance":
            rho = dv.pieces["rho"]
            kself = "K" if t.self_term == "exact" else "K.detach()"
            lines = [strict,
                     "r = causal_sq_distances(Q, K.detach(), mask)        # ‖q_t − k_s‖² (s < t), earlier keys fixed",
                     f"S = torch.where(mask, {code(rho, R, 'r')}, 0).sum(dim=-1)",
                     f"r_self = (Q - {kself}).pow(2).sum(dim=-1)",
                     f"S = S + {code(rho, R, 'r_self')}"]
        else:
            kappa = dv.pieces["kappa"]
            lines = [*qk_phi_lines(dv, with_derivative=False), strict,
                     "G = torch.where(mask, causal_gram(Phi_q, Phi_k.detach()), 0)   # earlier keys fixed",
                     f"S = torch.where(mask, {code(kappa, S, 'G')}, 0).sum(dim=-1)",
                     f"s_self = (Phi_q * {self_key(dv)}).sum(dim=-1)",
                     f"S = S + {code(kappa, S, 's_self')}"]
        return [*lines, f"return {f_code}                      # (B, H, N): E_t per head"]

    def signature(self, dv: Derivation) -> dict:
        return {"base": "CausalTermUpdate", "args": "Q, K", "shape": "(B, H, N, p)",
                "grad_doc": "(∂/∂Q, ∂/∂K) of Σ_t E_t(x_t | x_<t), each token's own energy, earlier tokens fixed",
                "energy_doc": "E_t of every token and head at queries Q and keys K (B, H, N, p); shape (B, H, N).",
                "rule": "x_t ← x_t − step ⊙ ∇_(x_t) E_t, through the interaction's projections (see TYING)"}

    def energy_text(self, dv: Derivation) -> str:
        t = cast(CausalAttention, dv.term)
        return (f"E_t = sum_h f(sum_(s<=t) K(q_t, k_s)) for each token t (conditional), {attention_text(t)}, "
                f"self-term {t.self_term}")

    def reference_energy(self, term, Z, env):
        """The bidirectional energy at one set of coordinates (a finiteness probe; verify checks causal terms
        token by token)."""
        return attention_reference_energy(term, Z, env)

    def autodiff_lines(self, dv: Derivation) -> list[str]:
        return ["# generic path: each token's conditional energy, earlier tokens held fixed (stop-gradient)",
                "G_q, G_k = torch.func.grad(lambda Q_, K_: self.energy_Z(Q_, K_).sum(), argnums=(0, 1))(Q, K)",
                "return G_q, G_k"]


def _with_roles(dv: Derivation) -> Derivation:
    """Say in the reason (and so in report()) how the self-term is treated and which tying the interaction gives."""
    t = cast(CausalAttention, dv.term)
    own = ("self-term exact: x_t's key role in K(q_t, k_t) is differentiated" if t.self_term == "exact"
           else "self-term stopped (declared): x_t's own key is held fixed")
    return dataclasses.replace(dv, reason=f"{dv.reason}; {own}; interaction {t.interaction.kind}: {t.interaction.tying}")
