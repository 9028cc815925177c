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
import itertools
from typing import Callable, Mapping, cast

import torch
from torch import Tensor

from ..energy import Attention, CausalAttention, params_of
from ..expr import evaluate
from ..interactions import Interaction
from ..primitives import R, S, X
from . import core
from .attention import (
    QueryKeyFamily,
    attention_dims,
    attention_text,
    candidate,
    check_opaque,
    declared_pieces,
    full,
    opaque_reason,
)
from .checks import TermCheck, module_env
from .codegen import code, phi_lines
from .core import Derivation, Dims, declared_scalar, register_family


def causal_dims(term: Attention, d: int) -> Dims:
    """The coordinates' width comes from the interaction (d + r for diagonal plus low rank, whose x̄ lies on the
    sphere of radius √d)."""
    inter = cast(Interaction, term.interaction)  # causal and query-key terms always carry one
    low_rank = inter.kind == "diag-low-rank"
    return attention_dims(
        term,
        d,
        coord_dim=inter.coord_dim(d, term.heads) if isinstance(d, int) and d > 0 and d % term.heads == 0 else None,
        radius_dim=d if low_rank else None,
    )


def qk_phi_lines(dv: Derivation, with_derivative: bool) -> list[str]:
    """``Phi_q = Φ(Q)``, ``Phi_k = Φ(K)`` (and their derivatives ``dPhi_q``, ``dPhi_k``)."""
    return [
        *phi_lines(dv, with_derivative, var="Q", out="Phi_q"),
        *phi_lines(dv, with_derivative, var="K", out="Phi_k"),
    ]


def self_key(dv: Derivation, name: str = "Phi_k") -> str:
    """The key of a token's own term: differentiated (exact self-term) or held fixed (stopped)."""
    return name if cast(CausalAttention, dv.term).self_term == "exact" else f"{name}.detach()"


@register_family
class CausalFamily(QueryKeyFamily[CausalAttention]):
    name = "causal attention"
    term_type = CausalAttention
    runtime_base = ("energyarch.runtime", "CausalTermUpdate")
    runtime_names = {
        "energyarch.runtime": (
            "causal_mask",
            "causal_gram",
            "causal_sq_distances",
            "causal_apply",
            "causal_prefix_outer",
            "causal_softmax_sdpa",
            "cross_kernel",
            "diag_kernel",
        )
    }
    grad_doc = "(∂/∂Q, ∂/∂K) of Σ_t E_t(x_t | x_<t), each token's own energy, earlier tokens fixed"
    energy_doc = "E_t of every token and head at queries Q and keys K (B, H, N, p); shape (B, H, N)."
    rule = "x_t ← x_t − step ⊙ ∇_(x_t) E_t, through the interaction's projections (see TYING)"
    autodiff_comment = "each token's conditional energy, earlier tokens held fixed (stop-gradient)"

    def derive(self, term: CausalAttention, d: int) -> Derivation:
        dims = causal_dims(term, d)
        check_opaque(term, dims)
        declared = declared_pieces(term, dims)
        why = opaque_reason(term)
        if why:
            return _with_roles(
                Derivation(
                    term,
                    dims,
                    "autodiff",
                    "autodiff",
                    f"{why}: torch.func.grad of Σ_t f(Σ_(s<t) K(q_t, sg(k_s)) + K(q_t, k_t))",
                    declared,
                )
            )
        return _with_roles(
            core.symbolic_or_fallback(term, dims, declared, lambda: core.first_match(candidate(term, dims, declared)))
        )

    def energy_lines(self, dv: Derivation) -> list[str]:
        """Σ_h f(S_t) per head and token, (..., H, N); keys of earlier tokens held fixed (stop-gradient)."""
        t = cast(CausalAttention, dv.term)
        f_code = "self.f(S)" if not t.f.symbolic else code(dv.pieces["f"], X, "S")
        strict = "mask = causal_mask(Q.shape[-2], Q.device, strict=True)   # s < t"
        if t.K.kind == "callable":
            kself = "K" if t.self_term == "exact" else "K.detach()"
            lines = [
                strict,
                "S = cross_kernel(self.kernel, Q, K.detach(), mask).sum(dim=-1)   # hidden pairs never evaluated",
                f"S = S + diag_kernel(self.kernel, Q, {kself})           # s = t: the token's own term",
            ]
        elif t.K.kind == "distance":
            rho = dv.pieces["rho"]
            kself = "K" if t.self_term == "exact" else "K.detach()"
            lines = [
                strict,
                "r = causal_sq_distances(Q, K.detach(), mask)        # ‖q_t − k_s‖² (s < t), earlier keys fixed",
                f"S = torch.where(mask, {code(rho, R, 'r')}, 0).sum(dim=-1)",
                f"r_self = (Q - {kself}).pow(2).sum(dim=-1)",
                f"S = S + {code(rho, R, 'r_self')}",
            ]
        else:
            kappa = dv.pieces["kappa"]
            lines = [
                *qk_phi_lines(dv, with_derivative=False),
                strict,
                "G = torch.where(mask, causal_gram(Phi_q, Phi_k.detach()), 0)   # earlier keys fixed",
                f"S = torch.where(mask, {code(kappa, S, 'G')}, 0).sum(dim=-1)",
                f"s_self = (Phi_q * {self_key(dv)}).sum(dim=-1)",
                f"S = S + {code(kappa, S, 's_self')}",
            ]
        return [*lines, f"return {f_code}                      # (B, H, N): E_t per head"]

    def energy_text(self, dv: Derivation) -> str:
        t = cast(CausalAttention, dv.term)
        return (
            f"E_t = sum_h f(sum_(s<=t) K(q_t, k_s)) for each token t (conditional), {attention_text(t)}, "
            f"self-term {t.self_term}"
        )

    def check(self, term, module, reference, X, dv, step_size) -> TermCheck:
        """Gradients of each token's conditional energy vs a per-token torch.func.grad; the update vs the autodiff
        module; and token by token, a small step on x_t alone lowers E_t(x_t | x_<t)."""
        with torch.no_grad():
            Q, K, _, _ = module.query_key(X)
            G_q, G_k = module.grad_Z(Q, K)
            R_q, R_k = causal_reference_grads(term, module, Q, K)
            G, G_ref = torch.cat([G_q, G_k], -1), torch.cat([R_q, R_k], -1)
            direction = module.direction(X)
            X1 = module(X, 0.1)
            X1_ref = (X1 - reference(X, 0.1)).abs()
            e_tokens = module.token_energies(X)  # (B, N)
            t_step = step_size / max(1.0, float(direction.abs().max()))
            e_after, slope = token_steps(term, module, X, direction, t_step)
            # every token: the step does not raise E_t beyond rounding, it is a descent direction (slope ≤ 0), and
            # E_t falls strictly wherever the first-order decrease t·|slope| is larger than rounding
            tol = 1e-13 * e_tokens.abs().clamp_min(1)
            resolvable = t_step * slope.abs() > 10 * tol
            descends = bool(
                ((e_after <= e_tokens + tol) & (slope <= tol / t_step) & (~resolvable | (e_after < e_tokens))).all()
            )
        # energy_after reports the summed per-token energies after each token's own small step
        return TermCheck.measured(
            term,
            dv,
            G=G,
            G_ref=G_ref,
            X1=X1,
            X1_diff=X1_ref,
            e0=e_tokens,
            e1=e_after,
            step=t_step,
            update_scale=X1 - X,
            per_token_descent=descends,
        )


def token_steps(term: CausalAttention, module, X: Tensor, direction: Tensor, t_step: float) -> tuple[Tensor, Tensor]:
    """Each token's own step, others held fixed: ``(E_t after the step, dE_t/ds at s = 0)``, both (B, N).

    In ``exact`` mode the step is ``x_t + s d_t`` in token space, where a small positive step lowers E_t for any basis.
    In ``paper`` and ``riemannian`` modes only the coordinate step carries that guarantee (their token-space
    direction maps the coordinate gradient back through the bases without the normalisation's Jacobian, so for a
    general basis, and for separate query and key bases, its sign in token space is not guaranteed): the step moves
    the token's query (and its key, under an exact self-term) by ``−s`` times its mode-constrained gradient.
    """
    stopped = term.self_term != "exact"  # a stopped self-term holds k_t fixed
    Q, K, Q_raw, K_raw = module.query_key(X)
    e_after, slope = X.new_zeros(X.shape[:-1]), X.new_zeros(X.shape[:-1])
    exact = module.mode == "exact"
    G_q, G_k = module.grad_Z(Q, K)
    D_q, D_k = -module.constrain(G_q, Q, Q_raw), -module.constrain(G_k, K, K_raw)  # used when not exact
    for t in range(X.shape[-2]):
        at_t = torch.zeros(X.shape[-2], 1, dtype=X.dtype)
        at_t[t] = 1  # (N, 1): token t alone moves

        def E_t(s: Tensor, at_t: Tensor = at_t, t: int = t) -> Tensor:
            """E_t after token t's step of length s_b (one per sample), shape (B,)."""
            if exact:  # x_t + s d_t in token space
                Q_t, K_t, _, _ = module.query_key(X + s[:, None, None] * at_t * direction)
            else:  # (q_t, k_t) + s (d_q, d_k) in coordinates
                shift = s[:, None, None, None] * at_t
                Q_t, K_t = Q + shift * D_q, K + shift * D_k
            return module.energy_Z(Q_t, K if stopped else K_t).sum(-2)[..., t]

        s0 = X.new_zeros(X.shape[0])
        e_after[..., t] = E_t(s0 + t_step)
        slope[..., t] = torch.func.grad(lambda s: E_t(s).sum())(s0)  # d/ds E_t at s = 0, per sample
    return e_after, slope


def declared_conditional_energy(
    term: CausalAttention, q: Tensor, keys: Tensor, k_self: Tensor, env: Mapping[str, float]
) -> Tensor:
    """E_t = f(Σ_{s<t} K(q_t, k_s) + K(q_t, k_t)) for one token and head, from the declaration alone.

    ``q`` (p,), ``keys`` (t, p) the earlier tokens' keys, ``k_self`` (p,) the token's own key.
    """
    env = {**env, **params_of(term)}
    K = term.K
    all_keys = torch.cat([keys, k_self.unsqueeze(0)], dim=0)  # (t + 1, p)
    if K.kind == "callable":
        values = torch.stack([cast(Callable, K.fn)(q, k) for k in all_keys.unbind(0)])
    elif K.kind == "inner":
        Phi_q = declared_scalar(K.phi, q, env) if K.phi is not None else q
        Phi_k = declared_scalar(K.phi, all_keys, env) if K.phi is not None else all_keys
        s = (Phi_k * Phi_q).sum(-1)
        values = full(evaluate(K.expr, {**env, "s": s}), s)
    else:
        r = (all_keys - q).pow(2).sum(-1)
        values = full(evaluate(K.expr, {**env, "r": r}), r)
    return declared_scalar(term.f, values.sum(), env)


def causal_reference_grads(term: CausalAttention, module, Q: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """(∂E_t/∂q_t, ∂E_t/∂k_t) for every token and head by ``torch.func.grad`` of each token's own conditional
    energy in a loop (independent of the emitted module and of the stop-gradient construction)."""
    env = module_env(module)
    G_q, G_k = torch.zeros_like(Q), torch.zeros_like(K)
    for idx in itertools.product(*[range(n) for n in Q.shape[:-2]]):  # every batch element and head
        for t in range(Q.shape[-2]):

            def E(q, k_self):
                return declared_conditional_energy(term, q, K[idx][:t], k_self, env)

            gq, gk = torch.func.grad(E, argnums=(0, 1))(Q[idx][t], K[idx][t])
            G_q[idx + (t,)] = gq
            if term.self_term == "exact":
                G_k[idx + (t,)] = gk
    return G_q, G_k


def _with_roles(dv: Derivation) -> Derivation:
    """Say in the reason (and so in report()) how the self-term is treated and which tying the interaction gives."""
    t = cast(CausalAttention, dv.term)
    own = (
        "self-term exact: x_t's key role in K(q_t, k_t) is differentiated"
        if t.self_term == "exact"
        else "self-term stopped (declared): x_t's own key is held fixed"
    )
    return dataclasses.replace(
        dv, reason=f"{dv.reason}; {own}; interaction {t.interaction.kind}: {t.interaction.tying}"
    )
