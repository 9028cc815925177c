"""Runtime of bidirectional attention with an interaction (queries and keys from different projections).

With q = N(x W_Q), k = N(x W_K) per head and ``S_i = Σ_j κ(Φ(q_i)·Φ(k_j))`` (docs: Concepts, "Bidirectional
interactions")::

    ∂E/∂q_m = f'(S_m) Σ_j κ'(q_m·k_j) k_j          ∂E/∂k_m = Σ_i f'(S_i) κ'(q_i·k_m) q_i

and the interaction maps them back (W_Qᵀ and W_Kᵀ in paper mode). For bi-softmax (f = a log, κ = c exp(b s))
this is ``a b P K`` and ``a b Pᵀ Q`` with ``P = row-softmax(b Q Kᵀ)``; :func:`qk_bisoftmax_sdpa` computes both
without forming the N×N matrix (the per-key-bias construction of :func:`energyarch.runtime.bisoftmax_sdpa`).

>>> import torch
>>> Q, K = torch.randn(2, 5, 4, dtype=torch.float64), torch.randn(2, 5, 4, dtype=torch.float64)
>>> PK, PtQ, L = qk_bisoftmax_sdpa(Q, K, 0.5)
>>> P = torch.softmax(0.5 * Q @ K.transpose(-1, -2), dim=-1)
>>> bool(torch.allclose(PK, P @ K) and torch.allclose(PtQ, P.transpose(-1, -2) @ Q))
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .runtime import CausalTermUpdate, flash_lse, flash_lse_ok


class QKTermUpdate(CausalTermUpdate):
    """One gradient step on a bidirectional attention energy whose queries and keys come from an interaction.

    The emitted subclass supplies ``grad_Z(Q, K) → (∂E/∂Q, ∂E/∂K)`` and ``energy_Z(Q, K)`` (per head and
    token, ``f(S_i)``, shape (..., H, N)); the interaction gives the coordinates and maps both gradients back.
    Unlike :class:`~energyarch.runtime.CausalTermUpdate` the energy is one global energy ``Σ_i f(S_i)``.
    """

    def energy(self, X: Tensor, weight=None) -> Tensor:
        """E = Σ_h Σ_i f(S_i), shape ``X.shape[:-2]``."""
        return self.token_energies(X, weight).sum(-1)


def qk_softmax_sdpa(Phi_q: Tensor, Phi_k: Tensor, b: float) -> tuple[Tensor, Tensor]:
    """``(P Φ_k, L)``: P = row-softmax(b Φ_q Φ_kᵀ) and its row log-sum-exp L (..., N, 1), by one SDPA call.

    The value is widened by one channel and a "sink" key of value [0, 1] is added; query i sees it with score
    ``c_i = b Φ_q,i·(P Φ_k)_i``, the mean score under P_i, carried by one extra query coordinate. Since
    ``L_i = E_P[s_i] + H(P_i)`` with the entropy H ∈ [0, log N], ``c_i ∈ [L_i − log N, L_i]``: the sink's share
    ``w_i = e^{c_i} / (e^{L_i} + e^{c_i}) ∈ [1/(N+1), 1/2]`` neither underflows nor rounds to 1, and gives
    ``L_i = c_i + log(1 − w_i) − log w_i`` and the un-normalised P Φ_k. c comes from a plain SDPA call without
    gradient (SDPA shifts by the row maximum itself). An upper-bound sink (Cauchy–Schwarz, as for the shared
    basis, whose diagonal reaches the bound) would lose L to rounding when b‖q‖‖k‖ is large.

    On CPU (:func:`~energyarch.runtime.flash_lse_ok`): one call of :func:`~energyarch.runtime.flash_lse` at width p
    (L from the kernel, no sink and no call for c).
    """
    if flash_lse_ok(Phi_q, Phi_k):
        return flash_lse(Phi_q, Phi_k, Phi_k, b)
    *batch, N, p = Phi_q.shape
    Nk = Phi_k.shape[-2]
    with torch.no_grad():
        c = b * (Phi_q * F.scaled_dot_product_attention(Phi_q, Phi_k, Phi_k, scale=b)).sum(-1, keepdim=True)
    sink = Phi_k.new_zeros(*batch, 1, p + 1)
    sink[..., 0, p] = 1.0
    zeros = Phi_k.new_zeros(*batch, Nk, 1)
    q = torch.cat([Phi_q, c / b], dim=-1)  # (..., N, p+1)
    kv = torch.cat([torch.cat([Phi_k, zeros], dim=-1), sink], dim=-2)  # (..., Nk+1, p+1)
    out = F.scaled_dot_product_attention(q, kv, kv, scale=b)
    w = out[..., p:]  # sink share, ≤ 1/2
    return out[..., :p] / (1 - w), c + torch.log1p(-w) - torch.log(w)


def qk_bisoftmax_sdpa(Phi_q: Tensor, Phi_k: Tensor, b: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(P Φ_k, Pᵀ Φ_q, L)`` with P = row-softmax(b Φ_q Φ_kᵀ), memory O(N p).

    Pass 1 is :func:`qk_softmax_sdpa` (on CPU one kernel call at width p, see
    :func:`~energyarch.runtime.flash_lse`). Pass 2 runs over the keys as queries: ``(Pᵀ Φ_q)_m = Σ_i e^{b q_i·k_m − L_i} Φ_q,i``, the per-query bias −L_i
    carried as one extra coordinate (query ``[Φ_k, 1]``, key ``[Φ_q, −L/b]``); a sink of score 0 ≥ log P_im with
    value [0, 1] recovers the column sum, which SDPA's normalisation over keys divides out.
    """
    *batch, N, p = Phi_q.shape
    PK, L = qk_softmax_sdpa(Phi_q, Phi_k, b)
    sink_v = Phi_q.new_zeros(*batch, 1, p + 1)
    sink_v[..., 0, p] = 1.0
    q2 = torch.cat([Phi_k, Phi_k.new_ones(*batch, Phi_k.shape[-2], 1)], dim=-1)
    k2 = torch.cat([torch.cat([Phi_q, -L / b], dim=-1), Phi_q.new_zeros(*batch, 1, p + 1)], dim=-2)
    v2 = torch.cat([torch.cat([Phi_q, Phi_q.new_zeros(*batch, N, 1)], dim=-1), sink_v], dim=-2)
    out2 = F.scaled_dot_product_attention(q2, k2, v2, scale=b)
    return PK, out2[..., :p] / out2[..., p:], L
