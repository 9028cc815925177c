"""Shared pieces of the query-key attention patterns: LaTeX and the output of the two roles."""

from __future__ import annotations


def update(query_part: str, key_part: str, term) -> str:
    """−∇_X E: the query role through W_Q, the key role through W_K (column-token convention)."""
    return (
        r"-\nabla_{\mathbf{X}} E = -\sum_{h=1}^{H}\left[\mathbf{W}_{Q,h}\left(%s\right) + \mathbf{W}_{K,h}"
        r"\left(%s\right)\right],\quad \text{%s interaction}" % (query_part, key_part, term.interaction.kind)
    )


def roles(dv, G_q: str, G_k: str) -> list[str]:
    """``return G_q, G_k`` with Φ' applied when the kernel has a feature map."""
    phi = dv.term.K.phi is not None
    return [
        f"G_q = {f'dPhi_q * ({G_q})' if phi else G_q}                 # ∂E/∂Q",
        f"G_k = {f'dPhi_k * ({G_k})' if phi else G_k}                 # ∂E/∂K",
        "return G_q, G_k",
    ]
