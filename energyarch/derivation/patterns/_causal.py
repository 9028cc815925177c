"""Shared pieces of the causal patterns: LaTeX, the output of the two roles, the self-term."""

from __future__ import annotations

from ...energy import Attention


def update(query_part: str, self_part: str, term) -> str:
    """−∇_{x_t} E_t: the query role through W_Q, the token's own key role through W_K (W_Q = W_K = W_h when shared)."""
    tie = (
        r"\mathbf{W}_{Q,h} = \mathbf{W}_{K,h} = \mathbf{W}_h"
        if term.interaction.kind == "shared"
        else r"\text{%s interaction}" % term.interaction.kind
    )
    own = (r" + \mathbf{W}_{K,h}\left(%s\right)" % self_part) if term.self_term == "exact" else ""
    return r"-\nabla_{\mathbf{x}_t} E_t = -\sum_{h=1}^{H}\left[\mathbf{W}_{Q,h}\left(%s\right)%s\right],\quad %s" % (
        query_part,
        own,
        tie,
    )


def has_phi(dv) -> bool:
    return isinstance(dv.term, Attention) and dv.term.K.phi is not None


def roles(dv, G_q: str, G_k: str) -> list[str]:
    """``return G_q, G_k`` with Φ' applied (G_k zero when the self-term is stopped)."""
    phi = has_phi(dv)
    q = f"dPhi_q * ({G_q})" if phi else G_q
    if dv.term.self_term != "exact":
        return [f"G_q = {q}", "return G_q, torch.zeros_like(K)             # self-term stopped (declared)"]
    k = f"dPhi_k * ({G_k})" if phi else G_k
    return [
        f"G_q = {q}",
        f"G_k = {k}                                  # x_t's key role in its own term",
        "return G_q, G_k",
    ]
