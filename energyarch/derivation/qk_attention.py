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
from typing import Callable, Mapping, cast

import torch
from torch import Tensor

from ..energy import Attention, params_of
from ..expr import evaluate
from ..interactions import Interaction
from ..primitives import R, S, X
from . import core
from .attention import QueryKeyFamily, attention_text, candidate, check_opaque, declared_pieces, full, opaque_reason
from .causal import causal_dims, qk_phi_lines
from .checks import TermCheck, module_env, update_check
from .codegen import code
from .core import Derivation, declared_scalar, register_family


@register_family
class QKAttentionFamily(QueryKeyFamily[Attention]):
    name = "qk attention"
    term_type = Attention
    runtime_base = ("energyarch.runtime_qk", "QKTermUpdate")
    runtime_names = {
        "energyarch.runtime_qk": ("qk_bisoftmax_sdpa", "qk_softmax_sdpa"),
        "energyarch.runtime": ("cross_kernel", "sq_distances_qk"),
    }
    grad_doc = "(∂E/∂Q, ∂E/∂K) of E = Σ_h Σ_i f(Σ_j K(q_i, k_j))"
    energy_doc = "f(S_i) of every token and head at queries Q and keys K (B, H, N, p); shape (B, H, N)."
    rule = "X ← X − step ⊙ (∂E/∂Q, ∂E/∂K) mapped back through the interaction's projections (see TYING)"

    def derive(self, term: Attention, d: int) -> Derivation:
        dims = causal_dims(term, d)  # coordinate width and sphere from the interaction
        check_opaque(term, dims)
        declared = declared_pieces(term, dims)
        why = opaque_reason(term)
        if why:
            return _with_tying(
                Derivation(
                    term, dims, "autodiff", "autodiff", f"{why}: torch.func.grad of Σ_i f(Σ_j K(q_i, k_j))", declared
                )
            )

        def build() -> Derivation:
            c = candidate(term, dims, declared)  # derivatives and the domain checks
            if c.kind == "distance":
                return Derivation(
                    term,
                    dims,
                    "autodiff",
                    "autodiff",
                    "a distance kernel with separate queries and "
                    "keys has no registered closed form: torch.func.grad of Σ_i f(Σ_j ρ(‖q_i − k_j‖²))",
                    declared,
                )
            return core.first_match(c)

        return _with_tying(core.symbolic_or_fallback(term, dims, declared, build))

    def energy_lines(self, dv: Derivation) -> list[str]:
        """f(S_i) per head and token, (..., H, N), with S_i = Σ_j K(q_i, k_j) (N×N)."""
        t = cast(Attention, dv.term)
        f_code = "self.f(S)" if not t.f.symbolic else code(dv.pieces["f"], X, "S")
        if t.K.kind == "callable":
            lines = ["S = cross_kernel(self.kernel, Q, K).sum(dim=-1)      # (B, H, N): Σ_j K(q_i, k_j)"]
        elif t.K.kind == "distance":
            lines = [
                "r = sq_distances_qk(Q, K)                           # (B, H, N, N): ‖q_i − k_j‖²",
                f"S = ({code(dv.pieces['rho'], R, 'r')}).sum(dim=-1)",
            ]
        else:
            lines = [
                *qk_phi_lines(dv, with_derivative=False),
                "G = Phi_q @ Phi_k.transpose(-1, -2)                 # (B, H, N, N)",
                f"S = ({code(dv.pieces['kappa'], S, 'G')}).sum(dim=-1)   # (B, H, N): Σ_j K(q_i, k_j)",
            ]
        return [*lines, f"return {f_code}                      # (B, H, N): f(S_i) per head"]

    def energy_text(self, dv: Derivation) -> str:
        t = cast(Attention, dv.term)
        return (
            f"E = sum_h sum_i f(sum_j K(q_i, k_j)), queries and keys from the "
            f"{cast(Interaction, t.interaction).kind} interaction, {attention_text(t)}"
        )

    def check(self, term, module, reference, X, dv, step_size) -> TermCheck:
        """(∂E/∂Q, ∂E/∂K) vs ``torch.func.grad`` of :func:`declared_qk_energy` in both roles; the update vs the
        autodiff module and vs the reference gradients mapped back through the interaction; a small step lowers E."""
        env = module_env(module)
        with torch.no_grad():
            Q, K, Q_raw, K_raw = module.query_key(X)
            G_q, G_k = module.grad_Z(Q, K)
            R_q, R_k = torch.func.grad(lambda Q_, K_: declared_qk_energy(term, Q_, K_, env).sum(), argnums=(0, 1))(Q, K)
            G, G_ref = torch.cat([G_q, G_k], -1), torch.cat([R_q, R_k], -1)
            if module.mode != "paper":
                R_q, R_k = module.constrain(R_q, Q, Q_raw), module.constrain(R_k, K, K_raw)
            dir_ref = -module.interaction.pullback(module, R_q, R_k, None)
        return update_check(term, dv, module, reference, X, G, G_ref, dir_ref, step_size)


def declared_qk_energy(term: Attention, Q: Tensor, K: Tensor, env: Mapping[str, float]) -> Tensor:
    """E = Σ_h Σ_i f(Σ_j K(q_i, k_j)) at queries ``Q`` and keys ``K`` (…, H, N, p), from the declaration alone
    (shape ``(…,)``); a distance kernel sees ``r = ‖q_i − k_j‖²`` formed from differences."""
    env = {**env, **params_of(term)}
    Kd = term.K
    if Kd.kind == "callable":
        rows = torch.vmap(torch.vmap(cast(Callable, Kd.fn), in_dims=(None, 0)), in_dims=(0, None))
        flat_q, flat_k = Q.reshape(-1, *Q.shape[-2:]), K.reshape(-1, *K.shape[-2:])
        Kmat = torch.stack([rows(q, k) for q, k in zip(flat_q, flat_k)]).reshape(*Q.shape[:-1], K.shape[-2])
    elif Kd.kind == "inner":
        Phi_q = declared_scalar(Kd.phi, Q, env) if Kd.phi is not None else Q
        Phi_k = declared_scalar(Kd.phi, K, env) if Kd.phi is not None else K
        Kmat = full(evaluate(Kd.expr, {**env, "s": Phi_q @ Phi_k.transpose(-1, -2)}), Q[..., :1])
    else:
        r = (Q.unsqueeze(-2) - K.unsqueeze(-3)).pow(2).sum(-1)  # (…, N, N) ‖q_i − k_j‖²
        Kmat = full(evaluate(Kd.expr, {**env, "r": r}), r)
    return declared_scalar(term.f, Kmat.sum(-1), env).sum(dim=(-1, -2))


def _with_tying(dv: Derivation) -> Derivation:
    """Say in the reason (and so in report()) which tying the interaction gives."""
    inter = cast(Interaction, cast(Attention, dv.term).interaction)  # a query-key term carries one
    return dataclasses.replace(dv, reason=f"{dv.reason}; interaction {inter.kind}: {inter.tying}")
